"""Deprecated: moved to ``scripts/make_trace_data.py`` (works for one more release)."""

from blockexp._compat import load_script

_script = load_script("make_trace_data", deprecated_from=__name__)
globals().update({k: v for k, v in vars(_script).items() if not k.startswith("__")})
__all__ = list(getattr(_script, "__all__", []))

if __name__ == "__main__":
    _script.main()
