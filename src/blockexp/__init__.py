"""blockexp: block expansion for injecting knowledge into pretrained LLMs without forgetting.

Packages, from the top (each may import only those below it; ``docs/architecture.md``):
``cli`` -> ``trace`` -> ``evaluation`` -> ``training`` -> ``data`` -> ``errors`` ->
``expanders`` -> ``io`` -> ``layers``. Import what you use from its package
(``from blockexp.expanders import LlamaPro``); this module only names the version and quiets
the dependencies' known console noise (:mod:`blockexp.console`).
"""

from blockexp.console import quiet_known_noise

__version__ = "0.1.0"

quiet_known_noise()
