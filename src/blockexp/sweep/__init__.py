"""Sweeps: a grid of ordinary ``fit`` runs (cells) over a base recipe, launched, resumed, tracked.

``python -m blockexp sweep --config SWEEP.yaml`` (:func:`blockexp.sweep.command.sweep`) reads a
sweep file (:mod:`~blockexp.sweep.spec`), expands its grid into cells (:mod:`~blockexp.sweep.grid`),
writes each cell's fit config (:mod:`~blockexp.sweep.cellconfig`), runs the cells with a launcher
(:mod:`~blockexp.sweep.launch`: in-process, local worker processes, or submitit/SLURM) that calls
:mod:`~blockexp.sweep.cell` for each, shows progress (:mod:`~blockexp.sweep.progress`) and ends
with ``compare`` over the cells.

May import: compare, trace, evaluation, training, data, errors, expanders, io, layers.
"""
