"""lm-evaluation-harness: in-process evaluation (:mod:`.harness`), the ``eval`` command, tasks.

:mod:`.command` is ``python -m blockexp eval``; :mod:`.build` writes the shipped offline tasks in
:mod:`.tasks` (``scripts/make_eval_tasks.py``).
"""
