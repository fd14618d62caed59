"""Figures of the noise schedule and the step count."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_forward_noising(pictures, timesteps, signal, *, title: str | None = None) -> Figure:
    """One row: the picture noised to each timestep (-1: no noise), titled with t and √ᾱ_t."""
    titles = [("no noise" if int(t) < 0 else f"t = {int(t)}") + f"\n√ᾱ = {float(s):.2f}"
              for t, s in zip(timesteps, signal)]
    return plot_picture_grid({"amount →": list(pictures)}, titles, title=title)


def plot_schedule(curves: dict, picked: dict, *, title: str | None = None) -> Figure:
    """Left: √ᾱ_t and log10 SNR over the training timesteps. Right: the timesteps each (label) visits."""
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    t = np.arange(len(curves["signal"]))
    left.plot(t, np.asarray(curves["signal"]), label="√ᾱ_t: share of the image left")
    snr_axis = left.twinx()
    with np.errstate(divide="ignore"):
        snr_axis.plot(t, np.log10(np.asarray(curves["snr"], dtype=np.float64)), color="C1", label="log10 SNR")
    snr_axis.set_ylabel("log10 SNR", color="C1")
    left.set_xlabel("training timestep t")
    left.set_ylabel("√ᾱ_t")
    left.legend(fontsize=8, loc="lower left")
    for row, (label, timesteps) in enumerate(picked.items()):
        values = np.asarray(timesteps, dtype=np.float64)
        right.scatter(values, np.full(len(values), row), s=6 if len(values) > 100 else 14)
    right.set_yticks(range(len(picked)), list(picked), fontsize=8)
    right.set_xlabel("training timestep visited")
    right.set_xlim(-20, len(t) + 20)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_steps_curves(steps, distances: dict, *, title: str | None = None) -> Figure:
    """distances: {scheduler: [distance to the reference per step count]}, log-spaced step axis."""
    figure = plot_lines(steps, distances, xlabel="steps", ylabel="mean |Δpixel| / 255 to the reference", title=title)
    ax = figure.axes[0]
    ax.set_xscale("log")
    ax.set_xticks([int(s) for s in steps], [str(int(s)) for s in steps])
    return figure


def plot_x0_to_final(curves: dict, *, title: str | None = None) -> Figure:
    """curves: {scheduler: [N] distance of x0 to the final latents}, against the step."""
    length = max(len(c) for c in curves.values())
    return plot_lines(range(length), curves, xlabel="step", ylabel="distance of x0 to the final latents\n"
                      "(relative RMS)", title=title or "why not jump to the end?")


def plot_steps_grid(rows: dict, steps, *, reference=None, title: str | None = None) -> Figure:
    """rows: {scheduler: [picture per step count]}; the reference picture last in every row."""
    titles = [f"{int(s)} steps" for s in steps]
    if reference is not None:
        rows = {label: list(pictures) + [reference] for label, pictures in rows.items()}
        titles = titles + ["reference"]
    return plot_picture_grid(rows, titles, title=title)
