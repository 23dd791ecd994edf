"""Deprecated: moved to :mod:`blockexp.layers.arch` (this path works for one more release)."""

from ._compat import moved

__getattr__ = moved(__name__, "blockexp.layers.arch")
