"""img2img strength sweeps: what strength does to the start, to the picture, and how much the seed matters.

The study group swept strength from 0.6 to 0.99 with a new seed for every picture and regretted it: the
seed's effect and the strength's effect were mixed. ``strength_sweep`` runs the grid both ways (one row per
seed), so the two can be told apart.
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture.inputs import steps_run  # noqa: F401  (re-exported: how many steps img2img runs)


def strength_sweep(pipe, image, prompt: str, strengths, seeds, **pipeline_kwargs) -> list[list]:
    """runs[i][j]: the Trace of seed ``seeds[i]`` at strength ``strengths[j]`` (img2img from ``image``).

    A seed given twice is run once (its row repeats: the same seed gives the same pictures)."""
    result, rows, columns = _strength_grid(pipe, image, prompt, strengths, seeds, None, pipeline_kwargs)
    runs = result.grid("trace", "seed", "strength")
    return [[runs[i][j] for j in columns] for i in rows]


def strength_grid(pipe, image, prompt: str, strengths, seeds, **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """The sweep of ``strength_sweep`` kept small (only what the figures need), for sdexplore.cache.

    Returns {"pictures": uint8 [S, K, H, W, 3], "first_timestep": [S, K] the timestep each run starts from,
    "steps_run": [S, K] how many steps it ran}.
    """
    result, rows, columns = _strength_grid(pipe, image, prompt, strengths, seeds, _picture_and_start,
                                           pipeline_kwargs)
    return {name: result.grid(name, "seed", "strength")[rows][:, columns]
            for name in ("pictures", "first_timestep", "steps_run")}


def _picture_and_start(run) -> dict[str, torch.Tensor]:
    return {"pictures": torch.from_numpy(np.array(run.images[0].convert("RGB"))),
            "first_timestep": run.timesteps[0], "steps_run": torch.tensor(run.num_steps)}


def _strength_grid(pipe, image, prompt, strengths, seeds, keep, pipeline_kwargs):
    """The sdexplore.sweep result over the distinct seeds x distinct strengths, and where each asked-for row and
    column is in it."""
    from ..sweep import Grid, run_sweep

    seeds, strengths = list(seeds), [float(s) for s in strengths]
    distinct_seeds, distinct_strengths = list(dict.fromkeys(seeds)), list(dict.fromkeys(strengths))
    grid = Grid(seed=distinct_seeds, strength=distinct_strengths, prompt=prompt, image=image, **pipeline_kwargs)
    result = run_sweep(pipe, grid, keep=keep, progress=False)
    return (result, [distinct_seeds.index(seed) for seed in seeds],
            [distinct_strengths.index(strength) for strength in strengths])


def pictures(runs: list[list]) -> np.ndarray:
    """float [S, K, H, W, 3] in 0..255: the final picture of every run of a sweep."""
    return np.stack([np.stack([np.asarray(run.images[0], dtype=np.float32) for run in row]) for row in runs])


def distance_to(images: np.ndarray, source, where: np.ndarray | None = None) -> np.ndarray:
    """[..., H, W, 3] -> [...]: mean |pixel difference| / 255 from the source picture.

    where: optional bool [H, W], the pixels to compare (e.g. the background only); default all.
    """
    difference = np.abs(images - np.asarray(source, dtype=np.float32)).mean(axis=-1) / 255
    if where is None:
        return difference.mean(axis=(-2, -1))
    if not where.any():
        raise ValueError("`where` selects no pixel: give a bool [H, W] mask with at least one True")
    return difference[..., where].mean(axis=-1)


def seed_spread(images: np.ndarray) -> np.ndarray:
    """[S, K, H, W, 3] -> [K]: how much the picture depends on the seed (pixel std across seeds / 255, averaged)."""
    return images.std(axis=0).mean(axis=(-3, -2, -1)) / 255


def signal_left(scheduler, timestep) -> float:
    """sqrt(alphas_cumprod[t]): the share of the input image still in the latent img2img starts from.

    The start is sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise, so strength 0.99 means "start at the 99%-point of the
    step list", not "99% noise": how much noise that is depends on the noise schedule.
    """
    alphas_cumprod = scheduler.alphas_cumprod
    return float(torch.as_tensor(alphas_cumprod)[int(timestep)].sqrt())


def neighbour_changes(images: np.ndarray) -> np.ndarray:
    """[S, K, H, W, 3] -> [S, K-1]: mean |pixel difference| / 255 between neighbouring strengths of each seed."""
    return distance_to(images[:, 1:], images[:, :-1])
