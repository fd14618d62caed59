"""The noise schedule and the step count (compute only).

- ``forward_noising``: The Illustrated Stable Diffusion's "amount 0 … 4": an image's latent noised to chosen
  timesteps, x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, decoded.
- ``schedule_curves`` / ``picked_timesteps``: ᾱ_t, the signal-to-noise ratio ᾱ/(1 − ᾱ), and which of the 1000
  training timesteps a scheduler visits for a given step count ("leading" as SD 1.5 ships, "trailing" as the
  toy model, and Lin et al. 2023, use).
- ``steps_sweep``: the notes' "1,000 steps done in 50 steps of 20": the same prompt and seed with each scheduler
  at several step counts, each picture's distance to a long reference run.
- ``x0_to_final``: "why not jump to the end?": per step, how far the clean guess x0 still is from the final
  latents, for several schedulers.

Shapes: T training timesteps; N steps; pictures uint8 [H, W, 3].
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import scheduler_class
from .denoising import settling
from .img2img import distance_to

SPACINGS = ("leading", "trailing", "linspace")


def schedule_curves(scheduler) -> dict[str, torch.Tensor]:
    """{"alphas_cumprod": [T] ᾱ_t, "signal": [T] √ᾱ_t (share of the image left), "snr": [T] ᾱ/(1 − ᾱ)}."""
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    with np.errstate(divide="ignore"):
        snr = alphas_cumprod / (1 - alphas_cumprod)
    return {"alphas_cumprod": alphas_cumprod.float(), "signal": alphas_cumprod.sqrt().float(), "snr": snr.float()}


def picked_timesteps(scheduler, name: str, num_inference_steps: int, spacing: str | None = None) -> torch.Tensor:
    """[N] the training timesteps scheduler ``name`` (built from ``scheduler``'s config) visits for
    ``num_inference_steps`` steps, with ``spacing`` ("leading", "trailing", "linspace"; default the config's)."""
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    overrides = {} if spacing is None else {"timestep_spacing": spacing}
    chosen = scheduler_class(name).from_config(scheduler.config, **overrides)
    chosen.set_timesteps(num_inference_steps)
    return torch.as_tensor(chosen.timesteps).float()


@torch.no_grad()
def forward_noising(pipe, picture, timesteps, *, seed: int) -> dict[str, torch.Tensor]:
    """The picture's latent noised to each timestep with one fixed noise, then decoded.

    Returns {"timesteps": [A], "signal": [A] √ᾱ_t, "latents": [A, C, h, w], "pictures": uint8 [A, H, W, 3]}.
    Timestep -1 stands for "no noise at all" (amount 0).
    """
    from .vae import decode, encode

    limit = pipe.scheduler.config.num_train_timesteps
    timesteps = [int(t) for t in timesteps]
    if any(not -1 <= t < limit for t in timesteps):
        raise ValueError(f"timesteps must be in -1..{limit - 1} (-1: no noise), got {timesteps}")
    clean = encode(pipe, np.asarray(picture)[None])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    curves = schedule_curves(pipe.scheduler)
    latents, signal = [], []
    for t in timesteps:
        a = 1.0 if t < 0 else float(curves["alphas_cumprod"][t])
        latents.append(a**0.5 * clean[0] + (1 - a) ** 0.5 * noise[0])
        signal.append(a**0.5)
    latents = torch.stack(latents)
    return {"timesteps": torch.tensor(timesteps), "signal": torch.tensor(signal), "latents": latents,
            "pictures": torch.from_numpy(decode(pipe, latents))}


def steps_sweep(pipe, prompt: str, schedulers, step_counts, *, seed: int, reference: tuple[str, int] = ("ddim", 200),
                **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """Each scheduler at each step count, same prompt and seed, against one long reference run.

    schedulers: names from sdexplore.SCHEDULERS; reference: (scheduler name, steps) of the run to compare with.
    Returns {"steps": [K], "pictures": uint8 [S, K, H, W, 3], "distance": [S, K] mean |Δpixel| / 255 to the
    reference, "reference": uint8 [H, W, 3], "x0_to_final": [S, n] (``x0_to_final`` of each scheduler's run with
    the most steps not above 50), "x0_steps": [S] n, how many steps those runs had}.
    Scheduler order follows ``schedulers``.
    """
    from ..sweep import Grid, run_sweep

    schedulers = list(schedulers)
    for name in [*schedulers, reference[0]]:
        scheduler_class(name)  # unknown names fail before any run
    step_counts = [int(k) for k in step_counts]
    if any(k < 1 for k in step_counts):
        raise ValueError(f"step_counts must be positive, got {step_counts}")
    reference_run = run_sweep(pipe, Grid(seed=seed, scheduler=reference[0], num_inference_steps=int(reference[1]),
                                         prompt=prompt, **pipeline_kwargs), keep=_picture_and_x0, progress=False)
    reference_picture = reference_run.column("picture")[0].numpy()
    grid = Grid(seed=seed, scheduler=schedulers, num_inference_steps=step_counts, prompt=prompt, **pipeline_kwargs)
    result = run_sweep(pipe, grid, keep=_picture_and_x0, progress=False)
    x0_count = max([k for k in step_counts if k <= 50] or [min(step_counts)])
    pictures = result.grid("picture", "scheduler", "num_inference_steps").numpy()
    curves = result.filter(num_inference_steps=x0_count).column("x0_to_final")
    return {"steps": torch.tensor(step_counts), "pictures": torch.from_numpy(pictures),
            "distance": torch.from_numpy(distance_to(pictures.astype(np.float32), reference_picture)).float(),
            "reference": torch.from_numpy(reference_picture.copy()), "x0_to_final": torch.stack(curves),
            "x0_steps": torch.full((len(schedulers),), x0_count)}


def _picture_and_x0(run) -> dict[str, torch.Tensor]:
    """What the steps sweep keeps of a run: its picture uint8 [H, W, 3] and ``x0_to_final`` [N]."""
    return {"picture": torch.from_numpy(np.array(run.images[0].convert("RGB"))), "x0_to_final": x0_to_final(run)}


def x0_to_final(run) -> torch.Tensor:
    """[N] relative RMS distance of each step's clean guess x0 to the final latents (1 image of the batch).
    Comparable across schedulers: x0 and the final latents are clean latents for all of them."""
    return settling(run)["x0"]


def practical_steps(step_counts, distances, tolerance: float) -> int | None:
    """The smallest step count from which every larger count is within ``tolerance`` of the reference
    (distances [K] for one scheduler); None if none is."""
    answer = None
    for steps, distance in reversed(list(zip(step_counts, np.asarray(distances, dtype=np.float64)))):
        if distance > tolerance:
            break
        answer = int(steps)
    return answer
