"""How a TRACE run trains and decodes: the ``trace`` and ``reset`` protocols.

``trace`` follows TRACE's own scripts (``training/main.py``, ``model/base_model.py``,
``scripts/train_*.sh``, ``inference/infer_single.py`` at BeyonderXX/TRACE):

* one optimizer for the whole task sequence (its moments carry over from task to task);
* one learning-rate schedule for the whole run: ``get_constant_schedule_with_warmup`` (linear
  warmup over ``warmup_steps`` optimizer steps, 0 in TRACE's scripts, then constant);
* weight decay 0;
* per-task epochs 5, 3, 7, 5, 3, 5, 5, 7 (:data:`TRACE_EPOCHS`);
* decoding by sampling at temperature 0.1 (top-k / top-p as the model's generation config
  says, else 50 / 1.0, the defaults of the transformers release TRACE pins) with
  ``max_ans_len`` (512) new tokens.

``reset`` is blockexp's earlier behaviour: at every task boundary the optimizer is rebuilt and
the module's warmup + cosine schedule restarts over that task's steps, the module's weight decay
applies, and decoding is greedy with a budget of the longest gold answer + 8 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROTOCOLS", "TRACE_EPOCHS", "Protocol", "get_protocol"]

#: TRACE's epochs per task (``--num_train_epochs 5,3,7,5,3,5,5,7`` over its default order).
TRACE_EPOCHS: dict[str, int] = {
    "C-STANCE": 5,
    "FOMC": 3,
    "MeetingBank": 7,
    "Py150": 5,
    "ScienceQA": 3,
    "NumGLUE-cm": 5,
    "NumGLUE-ds": 5,
    "20Minuten": 7,
}


@dataclass(frozen=True)
class Protocol:
    """One protocol's settings (see the module docstring).

    Attributes:
        name: ``trace`` or ``reset``.
        one_optimizer: keep one optimizer and one LR schedule for the whole sequence (``trace``),
            or rebuild the optimizer and restart the module's schedule per task (``reset``).
        weight_decay: forced on every optimizer parameter group, or ``None`` to keep the
            module's.
        do_sample: sample (``trace``) or decode greedily (``reset``).
        temperature: sampling temperature.
        budget: ``max_ans_len`` (``trace``) or ``longest_gold_plus_8`` (``reset``).
    """

    name: str
    one_optimizer: bool
    weight_decay: float | None
    do_sample: bool
    temperature: float | None
    budget: str


PROTOCOLS: dict[str, Protocol] = {
    "trace": Protocol("trace", True, 0.0, True, 0.1, "max_ans_len"),
    "reset": Protocol("reset", False, None, False, None, "longest_gold_plus_8"),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a clear error for anything else."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]
