"""Figures of the VAE: round trip, the latent's channels ("four cards"), and bits per latent value."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import plot_lines, plot_picture_grid


def plot_latent_channels(picture, latent, *, title: str | None = None) -> Figure:
    """The picture and each of its latent's channels [C, h, w] as a grey picture (own colour range each)."""
    latent = np.asarray(latent, dtype=np.float32)
    figure = Figure(figsize=(1.6 * (latent.shape[0] + 1), 2.0), layout="constrained")
    axes = figure.subplots(1, latent.shape[0] + 1)
    axes[0].imshow(picture)
    axes[0].set_title("picture", fontsize=8)
    for channel, ax in enumerate(axes[1:]):
        ax.imshow(latent[channel], cmap="gray")
        ax.set_title(f"channel {channel}\n[{latent[channel].min():.1f}, {latent[channel].max():.1f}]", fontsize=8)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_round_trip(rows: dict, column_titles, *, title: str | None = None) -> Figure:
    """rows: {label: [picture per column]}, e.g. original / round trip / |difference| ×4."""
    return plot_picture_grid(rows, list(column_titles), title=title)


def plot_bits(bits, psnr_curves: dict, *, invisible_from: int | None = None, threshold: float | None = None,
              title: str | None = None) -> Figure:
    """psnr_curves: {label: [PSNR per k]} (inf drawn at the top); a marker at the k past which nothing changes."""
    finite = {label: np.minimum(np.asarray(v, dtype=np.float64), 99.0) for label, v in psnr_curves.items()}
    figure = plot_lines(bits, finite, xlabel="bits per latent value k", ylabel="PSNR (dB), 99 = identical",
                        title=title)
    ax = figure.axes[0]
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    if invisible_from is not None:
        ax.axvline(invisible_from, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks([int(k) for k in bits])
    return figure


def plot_bits_grid(pictures, bits, *, title: str | None = None) -> Figure:
    """One row of decoded pictures, one per k."""
    return plot_picture_grid({"decoded": list(pictures)}, [f"{int(k)} bits" for k in bits], title=title)
