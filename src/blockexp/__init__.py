"""blockexp: block expansion for injecting knowledge into pretrained LLMs without forgetting.

Packages, from the top (each may import only those below it; ``docs/architecture.md``):
``cli`` -> ``trace`` -> ``evaluation`` -> ``training`` -> ``data`` -> ``errors`` ->
``expanders`` -> ``io`` -> ``layers``.
"""

__version__ = "0.1.0"

from blockexp.expanders import Expander, Expansion  # noqa: E402 (after __version__, which io reads)
from blockexp.expanders.llama_pro import LlamaPro  # noqa: E402
from blockexp.layers.plan import LayerSpec, Plan  # noqa: E402

__all__ = ["Expander", "Expansion", "LayerSpec", "LlamaPro", "Plan", "__version__"]
