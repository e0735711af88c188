"""Touchline metrics."""
