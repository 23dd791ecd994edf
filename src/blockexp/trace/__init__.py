"""The TRACE continual-learning benchmark: DataModule, protocols, generation, metrics, callback.

Also the score matrix with OP and BWT and the reports. May import :mod:`blockexp.evaluation` and
every package below it.
"""
