"""Figures of an embedding slide (cat -> kitten): the pictures along it, and where two runs branch."""

from __future__ import annotations

from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_slide_row(images, alphas, labels=None, *, title: str | None = None) -> Figure:
    """One picture per alpha, each titled with alpha (and a label, e.g. what a judge sees)."""
    figure = Figure(figsize=(1.3 * len(images), 1.9), layout="constrained")
    axes = figure.subplots(1, len(images))
    for index, (ax, image, alpha) in enumerate(zip(axes, images, alphas)):
        ax.imshow(image)
        ax.set_title(f"α={alpha:.2f}" + (f"\n{labels[index]}" if labels else ""), fontsize=8)
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_divergence(curves: dict, *, title: str | None = None) -> Figure:
    """curves: {label: [N] relative distance per step}, one line each."""
    steps = range(len(next(iter(curves.values()))))
    return plot_lines(steps, curves, xlabel="step", ylabel="|x0_a − x0_b| / |x0_b|", title=title)


def plot_branching(rows: dict, steps: list[int], *, title: str | None = None) -> Figure:
    """rows: {label: [picture per step]} — e.g. the x0 guesses of two runs, one row each."""
    return plot_picture_grid(rows, [f"step {step}" for step in steps], title=title)
