"""Figures of an embedding slide (cat -> kitten): the pictures along it, and where two runs branch."""

from __future__ import annotations

from matplotlib.figure import Figure


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
    figure = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = figure.subplots()
    for label, values in curves.items():
        ax.plot(range(len(values)), [float(v) for v in values], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("|x0_a − x0_b| / |x0_b|")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return figure


def plot_branching(rows: dict, steps: list[int], *, title: str | None = None) -> Figure:
    """rows: {label: [picture per step]} — e.g. the x0 guesses of two runs, one row each."""
    figure = Figure(figsize=(1.4 * len(steps) + 0.6, 1.6 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), len(steps), squeeze=False)
    for row, (label, pictures) in enumerate(rows.items()):
        for column, (step, picture) in enumerate(zip(steps, pictures)):
            ax = axes[row, column]
            ax.imshow(picture)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"step {step}", fontsize=8)
            if column == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
