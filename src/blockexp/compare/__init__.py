"""Comparing runs: read run and sweep directories, statistics over seeds, tables and plots.

``python -m blockexp compare`` (:func:`blockexp.compare.command.compare`) reads the files that
``fit`` and ``sweep`` runs write (docs/compare.md), groups the runs by every parameter but the
seed and writes means with Student's t intervals, paired comparisons against a reference group,
tables and plots. May import :mod:`blockexp.errors` and :mod:`blockexp.io` (nothing that imports
torch or Lightning).
"""
