"""Touchline decisions."""
