"""Figures of inpainting: the per-step blend, and the kept region's change next to the VAE's."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_picture_grid


def plot_blend_steps(rows: dict, steps, *, title: str | None = None) -> Figure:
    """rows: {label, e.g. "blended latent": [picture per chosen step]}; steps: the step indices shown."""
    return plot_picture_grid(rows, [f"step {s}" for s in steps], title=title)


def plot_inpaint_result(pictures: dict, *, title: str | None = None) -> Figure:
    """pictures: {label: picture}, one row, e.g. original, mask, inpainted, re-composite, VAE round trip."""
    return plot_picture_grid({"": list(pictures.values())}, list(pictures), title=title)


def plot_kept_error(labels, values: dict, *, title: str | None = None) -> Figure:
    """Grouped bars: values {series: [value per label]}, e.g. seeds × {"inpainted", "VAE floor"}."""
    figure = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(values)
    for i, (series, numbers) in enumerate(values.items()):
        ax.bar(np.arange(len(labels)) + i * width, [float(v) for v in numbers], width, label=series)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_ylabel("mean |Δpixel| / 255 in the kept region")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return figure
