"""Deprecated: moved to ``scripts/make_trace_data.py`` (works for one more release)."""

import warnings

from blockexp._compat import load_script

warnings.warn(
    "blockexp.data.trace_synthetic has moved to scripts/make_trace_data.py (python scripts/make_trace_data.py); the old path will be "
    "removed in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
_script = load_script("make_trace_data")
globals().update({k: v for k, v in vars(_script).items() if not k.startswith("__")})
__all__ = list(getattr(_script, "__all__", []))

if __name__ == "__main__":
    _script.main()
