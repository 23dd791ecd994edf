"""Layer importance: which decoder layers matter for the user's data (SLayer, Sec. 3.1-3.2).

Three measurements per base layer ``i``: (a) the angular distance between the block's input and
output hidden states (:mod:`~blockexp.evaluation.importance.measure`); (b) the drop when the layer
is removed; (c) the drop when a block is inserted after it, initialised by identity copy of layer
``i`` (not zeroed) and by the mean of layers ``i`` and ``i+1`` (undefined for the last layer;
:mod:`~blockexp.evaluation.importance.surgery`, which restores the model exactly afterwards).
Scores: validation loss (and perplexity) on a text file, and accuracy on a local multiple-choice
file (:mod:`~blockexp.evaluation.importance.inputs`). The command
(:mod:`~blockexp.evaluation.importance.command`) writes the CSV and the plot
(:mod:`~blockexp.evaluation.importance.report`).
"""
