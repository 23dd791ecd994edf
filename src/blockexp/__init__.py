"""blockexp: block expansion for injecting knowledge into pretrained LLMs without forgetting."""

__version__ = "0.1.0"

from .expanders import Expander, Expansion, LlamaPro  # noqa: E402
from .layers.plan import LayerSpec, Plan  # noqa: E402

__all__ = ["Expander", "Expansion", "LayerSpec", "LlamaPro", "Plan", "__version__"]
