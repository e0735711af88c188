"""Touchline touchline."""
