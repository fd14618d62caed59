"""Figures of the denoising process: from pure noise to a picture, step by step."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..decode import preview


def evenly_spaced_steps(num_steps: int, count: int) -> list[int]:
    """``count`` step indices from first to last, evenly spaced (all steps if there are fewer)."""
    if count >= num_steps:
        return list(range(num_steps))
    return sorted({int(round(i)) for i in np.linspace(0, num_steps - 1, count)})


def denoising_previews(run, steps: list[int] | None = None, *, method: str = "approx", prompt_index: int = 0,
                       **decoder) -> dict:
    """Pictures for the denoising strip: x_t (what the sampler holds) and x0 (its clean guess).

    Returns {"steps": [...], "timesteps": [...], "x_t": [PIL], "x0": [PIL], "image": PIL | None}.
    """
    steps = evenly_spaced_steps(run.num_steps, 8) if steps is None else [run.step_index(s) for s in steps]
    pictures = {"x_t": [], "x0": []}
    for step in steps:
        for which in pictures:
            pictures[which].append(preview(run, step, which, method, **decoder)[prompt_index])
    image = run.images[prompt_index] if run.images else None
    return {"steps": steps, "timesteps": [float(run.timesteps[s]) for s in steps], **pictures, "image": image}


def plot_denoising(previews: dict, *, title: str | None = None) -> Figure:
    """Two rows (x_t above, predicted x0 below) across the chosen steps, the final image at the right."""
    columns = len(previews["steps"]) + (previews["image"] is not None)
    figure = Figure(figsize=(1.6 * columns, 3.6), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    for col, (step, t) in enumerate(zip(previews["steps"], previews["timesteps"])):
        axes[0, col].imshow(previews["x_t"][col])
        axes[0, col].set_title(f"step {step}\nt={t:.0f}", fontsize=8)
        axes[1, col].imshow(previews["x0"][col])
    if previews["image"] is not None:
        axes[0, -1].imshow(previews["image"])
        axes[0, -1].set_title("final image", fontsize=8)
        axes[1, -1].set_visible(False)
    axes[0, 0].set_ylabel("x_t (noisy)", fontsize=8)
    axes[1, 0].set_ylabel("predicted x0", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def denoising_frames(run, steps: list[int] | None = None, *, method: str = "approx", prompt_index: int = 0,
                     min_height: int = 160, **decoder) -> list[np.ndarray]:
    """Frames of a denoising animation: at each step, x_t (left) and its predicted x0 (right), both decoded.

    Each frame is uint8 [H, W, 3]: a caption bar ("step i/N · t=...") over the two pictures, enlarged
    (nearest) to at least ``min_height`` pixels. ``steps`` defaults to every step; ``method`` and
    ``decoder`` as in ``run.preview`` ("approx", "vae" with pipe=, "taesd" with taesd=).
    """
    from PIL import Image, ImageDraw

    steps = list(range(run.num_steps)) if steps is None else [run.step_index(s) for s in steps]
    frames = []
    for step in steps:
        x_t, x0 = (preview(run, step, which, method, **decoder)[prompt_index].convert("RGB") for which in ("x_t", "x0"))
        zoom = max(1, -(-min_height // x_t.height))  # ceiling division
        size = (x_t.width * zoom, x_t.height * zoom)
        gap, bar = max(2, zoom), 14
        frame = Image.new("RGB", (2 * size[0] + gap, size[1] + bar), "white")
        frame.paste(x_t.resize(size, Image.NEAREST), (0, bar))
        frame.paste(x0.resize(size, Image.NEAREST), (size[0] + gap, bar))
        caption = f"step {step + 1}/{run.num_steps}  t={float(run.timesteps[step]):.0f}   x_t | x0"
        ImageDraw.Draw(frame).text((2, 1), caption, fill="black")
        frames.append(np.asarray(frame))
    return frames


def plot_settling(curves: dict, *, tolerance: float | None = None, title: str | None = None) -> Figure:
    """The two distance curves of ``studies.denoising.settling`` ([N] each) against the step."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    ax = figure.subplots()
    ax.plot(_array(curves["x_t"]), marker=".", label="x_t: what the sampler holds")
    ax.plot(_array(curves["x0"]), marker=".", label="x0: its guess of the final latent")
    if tolerance is not None:
        ax.axhline(tolerance, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("distance to the final latent\n(relative RMS)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title or "the guess settles long before the noise is gone", fontsize=10)
    return figure


def _array(values) -> np.ndarray:
    return values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
