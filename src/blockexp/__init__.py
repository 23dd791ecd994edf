"""blockexp: block expansion for injecting knowledge into pretrained LLMs without forgetting."""

__version__ = "0.1.0"

__all__ = ["Expander", "Expansion", "LayerSpec", "LlamaPro", "Plan", "__version__"]

# Imported on first use, so that ``python -m blockexp --help`` and the offline commands load only
# what they need.
_LAZY = {
    "Expander": "blockexp.expanders",
    "Expansion": "blockexp.expanders",
    "LlamaPro": "blockexp.expanders",
    "LayerSpec": "blockexp.layers.plan",
    "Plan": "blockexp.layers.plan",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
