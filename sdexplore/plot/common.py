"""Figure shapes the study figures share: a labelled grid of pictures, and lines against a setting."""

from __future__ import annotations

from matplotlib.figure import Figure


def plot_picture_grid(rows: dict, column_titles: list[str], *, title: str | None = None) -> Figure:
    """rows: {row label: [picture per column]}; column_titles: one per column, shown above the first row."""
    figure = Figure(figsize=(1.4 * len(column_titles) + 0.6, 1.6 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), len(column_titles), squeeze=False)
    for row, (label, pictures) in enumerate(rows.items()):
        for column, (column_title, picture) in enumerate(zip(column_titles, pictures)):
            ax = axes[row, column]
            ax.imshow(picture)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(column_title, fontsize=8)
            if column == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_lines(x, curves: dict, *, xlabel: str, ylabel: str = "", title: str | None = None) -> Figure:
    """curves: {label: [value per x]}, one line each, y from 0."""
    figure = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = figure.subplots()
    for label, values in curves.items():
        ax.plot([float(v) for v in x], [float(v) for v in values], marker=".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return figure
