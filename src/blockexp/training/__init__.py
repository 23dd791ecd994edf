"""Training an expanded model: the LightningModule, its settings, loss, optimizers, export, CLI.

Also precision and quantisation, attention choice, distributed set-up and atomic Lightning
checkpoints. May import :mod:`blockexp.data`, :mod:`blockexp.errors`, :mod:`blockexp.expanders`,
:mod:`blockexp.io` and :mod:`blockexp.layers`.
"""
