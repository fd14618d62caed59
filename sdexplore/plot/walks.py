"""Figures of walks: a strip of pictures along a path, lines along alpha, and the split-step heat map."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_walk_strip(rows: dict, labels: list[str], *, title: str | None = None) -> Figure:
    """rows: {row label: [picture per point]} (one row per path); labels: one per point, e.g. "α=0.25"."""
    return plot_picture_grid(rows, labels, title=title)


def plot_along_path(alphas, curves: dict, *, ylabel: str, title: str | None = None) -> Figure:
    """curves: {label: [value per alpha]}, e.g. the noise's RMS or a picture's contrast for lerp and slerp."""
    return plot_lines(alphas, curves, xlabel="α (0 = a, 1 = b)", ylabel=ylabel, title=title)


def plot_split_map(steps, alphas, seeds, num_steps: int, *, title: str | None = None) -> Figure:
    """steps: [A-1, S] split step of each neighbouring pair (row: α_i → α_i+1, column: seed); num_steps = never.

    Early splits are dark; pairs that never split are left white and marked "–".
    """
    steps = np.asarray(steps, dtype=float)
    never = steps >= num_steps
    shown = np.ma.masked_where(never, steps)
    figure = Figure(figsize=(0.55 * steps.shape[1] + 2.4, 0.32 * steps.shape[0] + 1.4), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shown, cmap="magma", vmin=0, vmax=num_steps - 1, aspect="auto")
    for (row, column), value in np.ndenumerate(steps):
        ax.text(column, row, "–" if never[row, column] else f"{int(value)}", ha="center", va="center", fontsize=6,
                color="black" if never[row, column] or value > num_steps / 2 else "white")
    ax.set_xticks(range(len(seeds)), [str(seed) for seed in seeds], fontsize=7)
    ax.set_yticks(range(len(steps)), [f"{alphas[i]:.2f}→{alphas[i + 1]:.2f}" for i in range(len(steps))], fontsize=7)
    ax.set_xlabel("seed")
    ax.set_ylabel("neighbouring α pair")
    figure.colorbar(image, ax=ax, label="step at which the pair splits")
    if title:
        ax.set_title(title, fontsize=10)
    return figure
