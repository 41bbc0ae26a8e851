"""Faust tables: the worker's private state (tumbling windows)."""
