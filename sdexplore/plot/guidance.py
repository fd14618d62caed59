"""Figures of classifier-free guidance: the parts of the prediction per step, the sweep over w, rescaling."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_decomposition(parts: dict, *, title: str | None = None) -> Figure:
    """The RMS per step of what ``studies.guidance.decompose`` returned: uncond, text, their difference, guided."""
    curves = {"unconditional (or negative) prediction": parts["uncond"], "text prediction": parts["text"],
              "difference text − uncond": parts["difference"], "guided: uncond + w·difference": parts["guided"]}
    return plot_lines(range(len(parts["uncond"])), curves, xlabel="step", ylabel="RMS of the prediction",
                      title=title or "the guided prediction, part by part")


def plot_guidance_grid(rows: dict, scales, *, title: str | None = None) -> Figure:
    """rows: {label: [picture per guidance scale]}."""
    return plot_picture_grid(rows, [f"w = {w:g}" for w in scales], title=title)


def plot_guidance_curves(scales, curves: dict, *, title: str | None = None) -> Figure:
    """curves: {label: [value per guidance scale]}, on a log-spaced axis of w."""
    figure = plot_lines(scales, curves, xlabel="guidance scale w", title=title)
    ax = figure.axes[0]
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks([float(w) for w in scales], [f"{float(w):g}" for w in scales])
    ax.set_xlim(left=min(float(w) for w in scales) - 0.1)
    return figure


def plot_std_ratio(rescales, ratios, *, title: str | None = None) -> Figure:
    """ratios [R, N]: std(guided) / std(text) per step, one line per guidance_rescale value."""
    ratios = np.asarray(ratios)
    curves = {f"guidance_rescale = {float(r):g}": ratios[i] for i, r in enumerate(rescales)}
    figure = plot_lines(range(ratios.shape[1]), curves, xlabel="step", ylabel="std(guided) / std(text)", title=title)
    figure.axes[0].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    return figure
