"""Matplotlib figures of traces. Every function returns its Figure (never only shows it)."""
