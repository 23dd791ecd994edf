"""A quiet console: known third-party noise filtered by message and origin, never wholesale.

Every entry below is a message that a dependency prints on a correct set-up, that says nothing
the user can act on, and that we cannot fix at its cause. Each is filtered where it comes from
(the logger that emits it, or the module a warning is attributed to) and by its text, so the same
library's other messages, and any new one, still reach the console. ``import blockexp`` installs
the filters (:func:`quiet_known_noise`, idempotent); nothing here imports a dependency.

=======================================  ======================================================
message                                  why it is noise
=======================================  ======================================================
torchao ``Failed to load .../torchao/     transformers imports torchao when it is installed
_C_*.so``                                (its quantizer registry); the kernels that fail are
                                         CUDA-only builds (mxfp8, cutlass sm90a) that a CPU
                                         torch cannot load. blockexp's torchao opt-ins use none.
torch ``<enum ...> is an Enum subclass   emitted by torch's pytree logger when torchao registers
and is now natively supported``          its enums at import; a deprecation notice for torchao.
Lightning ``isinstance(treespec,         a FutureWarning Lightning 2.6 triggers inside its own
LeafSpec)`` is deprecated                ``utilities/_pytree.py`` under torch >= 2.10.
Lightning ``Tip: ... litlogger``         an advertisement printed whenever a trainer is built.
jsonargparse ``... was deprecated in      Lightning 2.6's LightningCLI calls jsonargparse APIs that
v4.49.0`` (from ``lightning.pytorch.     jsonargparse 4.49 deprecates (``add_instantiator``,
cli``)                                   ``instantiate_classes``, ``skip_none``).
tqdm ``IProgress not found``             tqdm's notebook bar without ipywidgets; lm-eval then
                                         falls back to the text bar, which works.
=======================================  ======================================================

Our own code's warnings are not filtered: the default test run turns any warning attributed to
``blockexp`` into an error (``pyproject.toml``), so a new one fails the test that triggers it.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["NOISE", "filter_known_warnings", "quiet_known_noise"]

#: (logger name, message pattern) of log records that are dropped
NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("torchao", re.compile(r"Failed to load .*torchao[/\\]_C\w*\.[\w.-]*so\b")),
    ("torch.utils._pytree", re.compile(r"is an Enum subclass and is now natively supported")),
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"Tip: .*litlogger")),
)


class _Drop(logging.Filter):
    """Drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not self.pattern.search(message)


_installed = False


def quiet_known_noise() -> None:
    """Install the filters of :data:`NOISE` and the warning filters (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, pattern in NOISE:
        logging.getLogger(name).addFilter(_Drop(pattern))
    filter_known_warnings()


def filter_known_warnings() -> None:
    """Add the warning filters of the table above to the current filter list (a test runner that
    resets the filters per test calls this again inside each test)."""
    for message in (
        r"(?s).* was deprecated in v4\.\d+\.\d+",
        r"\s*By default only one Jsonargparse",
    ):
        warnings.filterwarnings(
            "ignore",
            message=message,
            category=DeprecationWarning,
            module=r"lightning\.pytorch\.cli",
        )
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings("ignore", message=r"IProgress not found\. Please update jupyter")
