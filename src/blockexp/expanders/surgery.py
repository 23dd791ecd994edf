"""Deprecated: moved to :mod:`blockexp.layers.surgery` (this path works for one more release)."""

from .._compat import moved

__getattr__ = moved(__name__, "blockexp.layers.surgery")
