"""Touchline: a real-time next-best-action engine."""

__version__ = "0.1.0"
