"""Experiments from the study notes, one module per family: each computes data a plot function can draw."""
