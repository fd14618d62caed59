"""Walks through prompt space and noise space, and where neighbouring runs split.

Shapes: A points on a path, S seeds, N steps, C latent channels, h x w latent, T = 77 tokens, D hidden width.

- ``lerp`` / ``slerp``: straight line or great circle between two tensors (noise [1, C, h, w] or encoder
  output embeddings [1, T, D]).
- ``seed_noise``: the starting noise the pipeline draws for a seed (unscaled; diffusers multiplies what it is
  given as ``latents=`` by ``scheduler.init_noise_sigma``, exactly as it does with the noise it draws itself).
- ``seed_variation``: AUTOMATIC1111's "variation seed" + "variation strength" (its own slerp, over its axis).
- ``circle_noise``: a closed loop a·cos(t) + b·sin(t) through noise space (every point a unit Gaussian again).
- ``prompt_path`` / ``noise_path``: the points of a walk; ``walk`` runs the pipeline at each point.
- ``split_step`` / ``split_steps``: the step from which on two runs' x0 guesses stay a threshold apart.
"""

from __future__ import annotations

import math

import numpy as np
import torch

METHODS = ("lerp", "slerp")


# --- interpolation --------------------------------------------------------------------------------


def _check_alpha(alpha, extrapolate: bool) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    if not extrapolate and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = a, 1 = b), got {alpha}; pass extrapolate=True to go beyond")
    return alpha


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError(f"a and b must be torch tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape to interpolate, got {tuple(a.shape)} and {tuple(b.shape)}")


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float, *, extrapolate: bool = False) -> torch.Tensor:
    """(1 - alpha)·a + alpha·b, same shape as a. Between two independent Gaussians the norm sags to ~1/√2."""
    _check_pair(a, b)
    return torch.lerp(a, b, _check_alpha(alpha, extrapolate))


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float, *, extrapolate: bool = False,
          parallel: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of the whole tensor (flattened), same shape as a.

    sin((1-α)Ω)/sin(Ω)·a + sin(αΩ)/sin(Ω)·b with cos Ω = <a, b> / (|a||b|); falls back to lerp when a and b
    are nearly parallel (cos Ω > ``parallel``). Keeps the norm of two equal-norm tensors along the path.
    """
    _check_pair(a, b)
    alpha = _check_alpha(alpha, extrapolate)
    flat_a, flat_b = a.double().flatten(), b.double().flatten()
    cosine = (flat_a @ flat_b) / (flat_a.norm() * flat_b.norm()).clamp_min(1e-12)
    if cosine.abs() > parallel:
        return torch.lerp(a, b, alpha)
    omega = torch.arccos(cosine.clamp(-1, 1))
    mixed = (torch.sin((1 - alpha) * omega) * flat_a + torch.sin(alpha * omega) * flat_b) / torch.sin(omega)
    return mixed.reshape(a.shape).to(a.dtype)


def interpolate(a: torch.Tensor, b: torch.Tensor, alpha: float, method: str = "slerp", *,
                extrapolate: bool = False) -> torch.Tensor:
    """``lerp`` or ``slerp`` by name."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return (lerp if method == "lerp" else slerp)(a, b, alpha, extrapolate=extrapolate)


# --- noise ----------------------------------------------------------------------------------------


def noise_shape(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int, int, int]:
    """[1, C, h, w] of the pipeline's starting noise for one picture."""
    scale = getattr(pipe, "vae_scale_factor", 8)
    size = pipe.unet.config.sample_size * scale
    return (1, pipe.unet.config.in_channels, (height or size) // scale, (width or size) // scale)


def seed_noise(pipe, seed: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """[1, C, h, w]: the unit Gaussian the pipeline draws for ``seed`` (what ``trace(seed=seed)`` starts from)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    device = "cpu" if pipe.device.type == "mps" else pipe.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(noise_shape(pipe, height, width), generator=generator, device=device, dtype=pipe.unet.dtype)


def _two_seeds(seed_a: int, seed_b: int, names=("seed_a", "seed_b")) -> None:
    if seed_a == seed_b:
        raise ValueError(f"{names[0]} and {names[1]} must differ (a path between a seed and itself stands still), "
                         f"got {seed_a} twice")


def a1111_slerp(strength: float, noise: torch.Tensor, variation: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's ``slerp(val, low, high)`` as its ``create_random_tensors`` applies it.

    noise, variation: [C, h, w] (A1111's per-picture noise). A1111 normalises along dim 1, so it slerps each
    (channel, column) vector of h values on its own great circle, not the tensor as a whole.
    Near-parallel vectors fall back to a lerp (A1111 swaps the two weights there; we do not).
    """
    _check_pair(noise, variation)
    strength = _check_alpha(strength, False)
    low = noise / noise.norm(dim=1, keepdim=True)
    high = variation / variation.norm(dim=1, keepdim=True)
    dot = (low * high).sum(1)
    if dot.mean() > 0.9995:
        return torch.lerp(noise, variation, strength)
    omega = torch.acos(dot.clamp(-1, 1))
    so = torch.sin(omega)
    return ((torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * noise
            + (torch.sin(strength * omega) / so).unsqueeze(1) * variation)


def seed_variation(pipe, seed: int, variation_seed: int, strength: float, **size) -> torch.Tensor:
    """[1, C, h, w]: A1111's "Variation seed" at "Variation strength" (0 = seed's noise, 1 = variation seed's)."""
    _two_seeds(seed, variation_seed, ("seed", "variation_seed"))
    noise, variation = seed_noise(pipe, seed, **size), seed_noise(pipe, variation_seed, **size)
    return a1111_slerp(strength, noise[0], variation[0])[None]


def circle_noise(a: torch.Tensor, b: torch.Tensor, angles) -> torch.Tensor:
    """[A, *a.shape]: a·cos(t) + b·sin(t) for each angle t (radians); a loop when the angles cover 2π.

    For independent unit Gaussians a, b every point is a unit Gaussian again (cos² + sin² = 1).
    """
    _check_pair(a, b)
    angles = torch.as_tensor(list(angles), dtype=torch.float64)
    if angles.numel() < 2:
        raise ValueError(f"a walk needs at least 2 points, got {angles.numel()} angles")
    cos, sin = angles.cos().to(a.dtype), angles.sin().to(a.dtype)
    shape = (-1,) + (1,) * a.dim()
    return cos.view(shape) * a[None] + sin.view(shape) * b[None]


def noise_norms(path: torch.Tensor) -> torch.Tensor:
    """[A]: RMS of each point of a noise path [A, ...] (1.0 for a unit Gaussian)."""
    return path.flatten(1).double().pow(2).mean(1).sqrt().float()


# --- paths ----------------------------------------------------------------------------------------


def _check_alphas(alphas, extrapolate: bool = False) -> list[float]:
    alphas = [_check_alpha(alpha, extrapolate) for alpha in alphas]
    if len(alphas) < 2:
        raise ValueError(f"a walk needs at least 2 points, got {len(alphas)}")
    return alphas


@torch.no_grad()
def encode(pipe, prompt: str) -> torch.Tensor:
    """[1, T, D]: the text encoder's output for ``prompt`` (what the UNet's cross-attention reads)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return pipe.encode_prompt(prompt, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


def prompt_path(pipe, prompt_a: str, prompt_b: str, alphas, method: str = "slerp", *,
                extrapolate: bool = False) -> torch.Tensor:
    """[A, 1, T, D]: the encoder outputs of two whole prompts, interpolated at each alpha."""
    if prompt_a == prompt_b:
        raise ValueError(f"prompt_a and prompt_b must differ to walk between them, got {prompt_a!r} twice")
    alphas = _check_alphas(alphas, extrapolate)
    a, b = encode(pipe, prompt_a), encode(pipe, prompt_b)
    return torch.stack([interpolate(a, b, alpha, method, extrapolate=extrapolate) for alpha in alphas])


def noise_path(pipe, seed_a: int, seed_b: int, alphas, method: str = "slerp", *,
               extrapolate: bool = False) -> torch.Tensor:
    """[A, 1, C, h, w]: the starting noises of two seeds, interpolated at each alpha."""
    _two_seeds(seed_a, seed_b)
    alphas = _check_alphas(alphas, extrapolate)
    a, b = seed_noise(pipe, seed_a), seed_noise(pipe, seed_b)
    return torch.stack([interpolate(a, b, alpha, method, extrapolate=extrapolate) for alpha in alphas])


# --- the walk runner ------------------------------------------------------------------------------


def walk(pipe, *, seed: int, prompts=None, noises: torch.Tensor | None = None, keep: str = "trace",
         negative_prompt: str = "", **pipeline_kwargs) -> list:
    """Run the pipeline at every point of a path; one Trace (keep="trace") or one PIL picture per point.

    prompts: a str (the same prompt everywhere), a list of A strs, or encoder outputs [A, 1, T, D]
    (e.g. ``prompt_path``). noises: [A, 1, C, h, w] starting noises (e.g. ``noise_path``); None = the
    noise of ``seed`` everywhere. A path in both must have the same length. ``seed`` also seeds the
    sampler's own randomness (DDPM, Euler a), so the path is the only thing that changes.
    """
    from ..capture.run import trace

    if keep not in ("trace", "picture"):
        raise ValueError(f"keep must be 'trace' or 'picture', got {keep!r}")
    if prompts is None:
        raise ValueError("prompts is required: a str, a list of strs, or encoder outputs [A, 1, T, D]")
    for name in ("prompt", "prompt_embeds", "latents", "generator"):
        if name in pipeline_kwargs:
            raise TypeError(f"walk() sets {name}= itself from prompts=/noises=/seed=; do not pass it")
    points = _walk_points(prompts, noises)
    negative = encode(pipe, negative_prompt)
    frames = []
    for index, (prompt, latents) in enumerate(points):
        kwargs = dict(pipeline_kwargs, latents=latents)
        if isinstance(prompt, torch.Tensor):
            kwargs.update(prompt_embeds=prompt.to(pipe.device), negative_prompt_embeds=negative)
            prompt = None
        else:
            kwargs.update(negative_prompt=negative_prompt or None)
        if keep == "trace":
            run = trace(pipe, prompt, seed=seed, **kwargs)
            run.params["walk"] = {"point": index, "points": len(points)}
            frames.append(run)
        else:
            generator = torch.Generator(device="cpu" if pipe.device.type == "mps" else pipe.device).manual_seed(seed)
            frames.append(pipe(prompt, generator=generator, **kwargs).images[0])
    return frames


def _walk_points(prompts, noises) -> list[tuple]:
    """[(prompt str or [1, T, D], noise [1, C, h, w] or None)] for each point."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 4 or prompts.shape[1] != 1:
            raise ValueError(f"prompt embeddings must be [A, 1, T, D], got {tuple(prompts.shape)}")
        prompt_points = list(prompts)
    elif isinstance(prompts, str):
        prompt_points = None
    elif isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts):
        prompt_points = list(prompts)
    else:
        raise TypeError(f"prompts must be a str, a list of strs or a tensor [A, 1, T, D], got {type(prompts).__name__}")
    if noises is not None and (not isinstance(noises, torch.Tensor) or noises.dim() != 5 or noises.shape[1] != 1):
        shape = tuple(noises.shape) if isinstance(noises, torch.Tensor) else type(noises).__name__
        raise ValueError(f"noises must be a tensor [A, 1, C, h, w], got {shape}")
    lengths = {name: len(path) for name, path in (("prompts", prompt_points), ("noises", noises)) if path is not None}
    if not lengths:
        raise ValueError("nothing to walk: give a path in prompts= (list or [A, 1, T, D]) or noises= ([A, 1, C, h, w])")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the prompt and noise paths must have the same number of points, got {lengths}")
    count = next(iter(lengths.values()))
    if count < 2:
        raise ValueError(f"a walk needs at least 2 points, got {count}")
    prompt_points = prompt_points if prompt_points is not None else [prompts] * count
    noise_points = list(noises) if noises is not None else [None] * count
    return list(zip(prompt_points, noise_points))


# --- pictures: how washed out ---------------------------------------------------------------------


def picture_contrast(pictures) -> torch.Tensor:
    """[A]: standard deviation of the grey level (0..1) of each picture (uint8 [A, H, W, 3] or PIL list)."""
    grey = _as_float(pictures).mean(-1)
    return torch.from_numpy(grey.reshape(len(grey), -1).std(1))


def picture_saturation(pictures) -> torch.Tensor:
    """[A]: mean HSV saturation (max - min) / max of each picture's pixels, 0 (grey) .. 1 (pure colour)."""
    rgb = _as_float(pictures)
    high, low = rgb.max(-1), rgb.min(-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return torch.from_numpy(saturation.reshape(len(saturation), -1).mean(1))


def as_pictures(pictures) -> torch.Tensor:
    """uint8 [A, H, W, 3] from PIL pictures (or arrays), to keep or cache."""
    return torch.from_numpy(np.stack([np.asarray(p.convert("RGB") if hasattr(p, "convert") else p, dtype=np.uint8)
                                      for p in pictures]))


def picture_gap(pictures_a, pictures_b) -> torch.Tensor:
    """[A]: mean |pixel difference| / 255 between two equally long lists of pictures, point by point."""
    from .img2img import distance_to

    a, b = _as_float(pictures_a) * 255, _as_float(pictures_b) * 255
    if a.shape != b.shape:
        raise ValueError(f"the two picture lists must have the same shape, got {a.shape} and {b.shape}")
    return torch.from_numpy(np.asarray(distance_to(a, b), dtype=np.float32))


def _as_float(pictures) -> np.ndarray:
    return np.stack([np.asarray(p.convert("RGB") if hasattr(p, "convert") else p, dtype=np.float32)
                     for p in pictures]) / 255.0


# --- where paths split ----------------------------------------------------------------------------


def x0_distance(x0_a: torch.Tensor, x0_b: torch.Tensor) -> torch.Tensor:
    """[N]: |x0_a - x0_b| / |x0_b| per step, for two runs' clean guesses [N, C, h, w] (or [N, 1, C, h, w])."""
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"the two runs' x0 must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}")
    return ((x0_a - x0_b).flatten(1).double().norm(dim=1)
            / x0_b.flatten(1).double().norm(dim=1).clamp_min(1e-12)).float()


def split_step(x0_a: torch.Tensor, x0_b: torch.Tensor, threshold: float) -> int:
    """The step from which on two runs' x0 guesses stay at least ``threshold`` apart (relative); N if they end closer.

    Two runs can drift apart for a few steps and come back together (same basin); they have split when
    they part and never come back within ``threshold`` up to the last step.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (a relative x0 distance), got {threshold}")
    close = (x0_distance(x0_a, x0_b) < threshold).nonzero()
    return 0 if len(close) == 0 else int(close[-1]) + 1


def split_steps(x0: torch.Tensor, threshold: float) -> torch.Tensor:
    """[A-1, S] int: split step of each neighbouring pair (alpha_i, alpha_i+1) at each seed; N = they end closer.

    x0: [A, S, N, C, h, w], the clean guesses of a grid of runs (alpha x seed).
    """
    if x0.dim() != 6 or x0.shape[0] < 2:
        raise ValueError(f"x0 must be [A, S, N, C, h, w] with A >= 2, got {tuple(x0.shape)}")
    return torch.tensor([[split_step(x0[i, s], x0[i + 1, s], threshold) for s in range(x0.shape[1])]
                         for i in range(x0.shape[0] - 1)])


def grid_x0(pipe, prompt_a: str, prompt_b: str, alphas, seeds, method: str = "slerp",
            **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """Runs of a whole-prompt walk at every seed: {"x0": [A, S, N, C, h, w], "pictures": uint8 [A, S, H, W, 3]}."""
    from ..sweep import Grid, run_sweep

    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    for name in ("prompt", "prompt_embeds", "latents", "generator"):
        if name in pipeline_kwargs:
            raise TypeError(f"grid_x0() sets {name}= itself; do not pass it")
    path = prompt_path(pipe, prompt_a, prompt_b, alphas, method)
    negative = encode(pipe, pipeline_kwargs.pop("negative_prompt", "") or "")  # as walk() encodes it
    grid = Grid(prompt_embeds=[point.to(pipe.device) for point in path], seed=seeds, negative_prompt_embeds=negative,
                **pipeline_kwargs)
    result = run_sweep(pipe, grid, keep=_x0_and_picture, progress=False)
    return {name: result.grid(name, "prompt_embeds", "seed") for name in ("x0", "pictures")}  # [A, S, ...]


def _x0_and_picture(run) -> dict[str, torch.Tensor]:
    """x0 [N, C, h, w] of the run's one picture, and the picture uint8 [H, W, 3]."""
    return {"x0": run.x0[:, 0], "pictures": torch.from_numpy(np.array(run.images[0].convert("RGB")))}
