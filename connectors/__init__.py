"""Touchline connectors."""
