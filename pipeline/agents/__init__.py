"""Faust agents, one family per module (index, metadata, conversion)."""
