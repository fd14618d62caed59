"""Figures of an img2img strength sweep: the picture grid, and what strength does, measured."""

from __future__ import annotations

from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_strength_grid(rows: dict, strengths, *, source=None, title: str | None = None) -> Figure:
    """rows: {label, e.g. "seed 3": [picture per strength]}; source: the input, shown first in every row."""
    titles = [f"{s:.2f}" for s in strengths]
    if source is not None:
        rows = {label: [source] + list(pictures) for label, pictures in rows.items()}
        titles = ["input"] + titles
    return plot_picture_grid(rows, titles, title=title)


def plot_strength_curves(strengths, curves: dict, *, title: str | None = None) -> Figure:
    """curves: {label: [value per strength]}, one line each, against strength."""
    return plot_lines(strengths, curves, xlabel="strength", title=title)
