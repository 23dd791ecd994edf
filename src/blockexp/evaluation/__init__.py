"""Measuring a model: lm-eval general-ability tasks, the GeneralEval callback, layer importance.

May import :mod:`blockexp.training` and every package below it.
"""
