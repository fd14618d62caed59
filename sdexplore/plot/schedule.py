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


def plot_schedule(schedules: dict, picked: dict, *, title: str | None = None) -> Figure:
    """Left: √ᾱ_t over the training timesteps, one line per schedule ({label: ``schedule_curves`` result}),
    with log10 SNR dashed on the right axis. Right: the timesteps each run (label) visits, one row each."""
    figure = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    snr_axis = left.twinx()
    for i, (label, curves) in enumerate(schedules.items()):
        t = np.arange(len(curves["signal"]))
        left.plot(t, np.asarray(curves["signal"]), color=f"C{i}", label=f"√ᾱ_t, {label}")
        with np.errstate(divide="ignore"):
            snr_axis.plot(t, np.log10(np.asarray(curves["snr"], dtype=np.float64)), color=f"C{i}", linestyle="--",
                          linewidth=1, label=f"log10 SNR, {label}")
    snr_axis.set_ylabel("log10 SNR (dashed)")
    left.set_xlabel("training timestep t")
    left.set_ylabel("√ᾱ_t: share of the image left")
    left.legend(fontsize=7, loc="center left")
    for row, timesteps in enumerate(picked.values()):
        values = np.asarray(timesteps, dtype=np.float64)
        right.scatter(values, np.full(len(values), row), s=4 if len(values) > 100 else 12)
    right.set_yticks(range(len(picked)), list(picked), fontsize=8)
    right.set_xlabel("training timestep visited")
    right.set_xlim(-20, 1020)
    right.invert_yaxis()
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
