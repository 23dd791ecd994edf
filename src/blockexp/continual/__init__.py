"""Continual learning on TRACE: protocols, schedules, generation, evaluation and reports."""

from .protocol import PROTOCOLS, TRACE_EPOCHS, Protocol, get_protocol

__all__ = ["PROTOCOLS", "TRACE_EPOCHS", "Protocol", "get_protocol"]
