"""Capturing what happens inside a pipeline run: steps, attention, and the Trace that holds them."""
