"""Figures of prompt space: the 77 x D picture and its parts, the layer sweep, scheduled conditioning."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_picture_grid


def plot_prompt_parts(parts: dict, *, title: str | None = None) -> Figure:
    """Side by side: token embeddings + position embeddings = input, then the encoder output ([77, D] each,
    rows = positions, columns = hidden dimensions), each with its column means (the stripes) below."""
    names = [("token", "token embeddings"), ("position", "+ position embeddings"), ("input", "= input"),
             ("output", "output (what the UNet gets)")]
    figure = Figure(figsize=(13, 4.6), layout="constrained")
    axes = figure.subplots(2, len(names), height_ratios=[4, 1], squeeze=False)
    for column, (key, label) in enumerate(names):
        picture = parts[key].numpy()
        limit = float(np.abs(picture).max()) or 1.0
        axes[0, column].imshow(picture, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        axes[0, column].set_title(label, fontsize=9)
        axes[0, column].set_xlabel("hidden dimension", fontsize=8)
        axes[0, column].set_ylabel("position (0 = start)" if column == 0 else "", fontsize=8)
        means = picture.mean(axis=0)
        axes[1, column].bar(np.arange(len(means)), means, width=1.0, color="0.3")
        axes[1, column].set_xlim(-0.5, len(means) - 0.5)
        axes[1, column].set_ylabel("column mean" if column == 0 else "", fontsize=8)
        axes[1, column].tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_layer_sweep(pictures: np.ndarray, scores: dict, prompts: list[str], *, columns: int = 6) -> Figure:
    """pictures uint8 [L + 1, P, H, W, 3]: a row per layer (first ``columns`` prompts), row labels with the
    judge's accuracies."""
    layers = pictures.shape[0]
    rows = {}
    for layer in range(layers):
        label = (f"layer {layer}" + (" (embeddings)" if layer == 0 else "") + "\n"
                 + "\n".join(f"{k} {scores[k][layer]:.2f}" for k in ("kind", "color", "position")))
        rows[label] = list(pictures[layer, :columns])
    titles = [_short(p) for p in prompts[:columns]]
    return plot_picture_grid(rows, titles, title="generating from each encoder layer (final layer norm applied)")


def plot_schedule(steps: int, per_step: list[int], labels: list[str], distances: dict | None = None) -> Figure:
    """Which conditioning each step used (a coloured band), and optionally curves per step below it."""
    figure = Figure(figsize=(8, 2.8 if distances else 1.4), layout="constrained")
    axes = figure.subplots(2 if distances else 1, 1, squeeze=False, sharex=True)[:, 0]
    axes[0].imshow(np.asarray(per_step)[None], aspect="auto", cmap="tab10", vmin=0, vmax=9,
                   extent=(-0.5, steps - 0.5, 0, 1))
    axes[0].set_yticks([])
    for index, label in enumerate(labels):
        used = [s for s, i in enumerate(per_step) if i == index]
        if used:
            axes[0].text(np.mean(used), 0.5, label, ha="center", va="center", fontsize=8, color="white")
    axes[0].set_title("conditioning used at each step", fontsize=9)
    if distances:
        for label, values in distances.items():
            axes[1].plot(range(len(values)), values, marker=".", label=label)
        axes[1].legend(fontsize=7)
        axes[1].set_ylim(bottom=0)
    axes[-1].set_xlabel("step")
    return figure


def _short(prompt: str, width: int = 22) -> str:
    text = prompt.removeprefix("a photo of ").removeprefix("a ")
    return text if len(text) <= width else text[:width - 1] + "…"
