"""Continual learning on TRACE: protocols, generation and reports (the callback in
:mod:`blockexp.callbacks.trace` only orchestrates them)."""

from .protocol import PROTOCOLS, TRACE_EPOCHS, Protocol, constant_with_warmup, get_protocol

__all__ = ["PROTOCOLS", "TRACE_EPOCHS", "Protocol", "constant_with_warmup", "get_protocol"]
