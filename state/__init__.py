"""Touchline state."""
