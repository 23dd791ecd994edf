"""lm-evaluation-harness: in-process evaluation (:mod:`.harness`), the ``eval`` command, tasks.

:mod:`.command` is ``python -m blockexp eval``; :mod:`.preset` reads ``configs/eval/*.yaml``;
:mod:`.scores` picks each task's headline metric and aggregates groups; :mod:`.build` writes
the shipped offline tasks in :mod:`.tasks` (``scripts/make_eval_tasks.py``).
"""
