"""Touchline flows."""
