"""Classifier-free guidance and negative prompts, measured on traced runs (compute only).

The study notes: guidance_scale w "is defined analog to the guidance weight w of the Imagen paper", the guided
prediction is uncond + w·(text − uncond), and "I thought it was supposed to be 0 to 1 … but the default value is
7.5". A Trace keeps both halves of the CFG batch, so the formula can be checked step by step, and a sweep over w
shows what large values do to the picture. With a negative prompt the "uncond" half is the negative prompt's
prediction (NovelAI's change, in the notes), so the same decomposition applies.

Shapes: N steps, B images, C latent channels, h×w latent; pictures uint8 [H, W, 3].
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    """``guidance_scale`` as a float; ValueError for a negative value or a non-number."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number >= 0, got {guidance_scale!r}")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0: unconditional, 1: the prompt's prediction alone, "
                         f"> 1: pushed past it; diffusers' default is 7.5), got {guidance_scale}")
    return float(guidance_scale)


def guided(uncond: torch.Tensor, text: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """uncond + w·(text − uncond), any shape. w = 0 gives ``uncond``, w = 1 gives ``text``."""
    w = check_guidance_scale(guidance_scale)
    return uncond + w * (text - uncond)


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N]: root mean square over everything but the first axis."""
    return tensor.pow(2).mean(dim=tuple(range(1, tensor.ndim))).sqrt()


def _parts(run) -> tuple[torch.Tensor, torch.Tensor]:
    if run.noise_pred_uncond is None:
        raise ValueError("this run had no classifier-free guidance (diffusers skips it for guidance_scale <= 1), so "
                         "there is no unconditional/negative prediction to decompose; trace with guidance_scale > 1")
    return run.noise_pred_uncond, run.noise_pred_text


def decompose(run, guidance_scale: float | None = None) -> dict[str, torch.Tensor]:
    """Per step, the parts of the guided prediction and their sizes (RMS over the batch).

    Returns {"uncond", "text", "difference", "guided", "recorded": [N] RMS of each part, where "guided" is the
    formula's uncond + w·(text − uncond) and "recorded" what the scheduler was given; "formula_error": [N] RMS of
    their difference (0 unless guidance_rescale was on); "timesteps": [N]}. ``guidance_scale`` defaults to the run's.
    """
    uncond, text = _parts(run)
    w = check_guidance_scale(run.params.get("guidance_scale", 7.5) if guidance_scale is None else guidance_scale)
    formula = guided(uncond, text, w)
    return {"uncond": _rms(uncond), "text": _rms(text), "difference": _rms(text - uncond),
            "guided": _rms(formula), "recorded": _rms(run.noise_pred),
            "formula_error": _rms(run.noise_pred - formula), "timesteps": run.timesteps.clone()}


def rescaled(run, guidance_rescale: float) -> torch.Tensor:
    """[N, B, C, h, w]: the guided prediction after diffusers' ``rescale_noise_cfg`` (Lin et al. 2023, §3.4),
    recomputed from the run's parts: the std of the guided prediction pulled back toward the text prediction's."""
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must be in [0, 1] (0: off, 1: fully rescaled), got {guidance_rescale}")
    uncond, text = _parts(run)
    formula = guided(uncond, text, run.params.get("guidance_scale", 7.5))
    return torch.stack([rescale_noise_cfg(formula[i], text[i], guidance_rescale) for i in range(len(formula))])


def std_ratio(run) -> torch.Tensor:
    """[N]: std of the prediction the scheduler used / std of the text prediction, per step (batch pooled).
    Guidance makes it > 1; guidance_rescale = 1 brings it back to 1."""
    return run.noise_pred.flatten(1).std(dim=1) / run.noise_pred_text.flatten(1).std(dim=1)


@torch.no_grad()
def raw_decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] final latents -> [B, 3, H, W] the VAE's output before the pipeline clamps it to [-1, 1]."""
    param = next(pipe.vae.parameters())
    return pipe.vae.decode(latents.to(param.device, param.dtype) / pipe.vae.config.scaling_factor).sample.float().cpu()


def clipped_fraction(pipe, run) -> float:
    """The share of decoded values (pixels × channels) outside [-1, 1], which the pipeline clips to 0 or 255."""
    return clipped_share(pipe, run.latents[-1])


def mean_saturation(pictures: np.ndarray) -> float:
    """uint8 [..., H, W, 3] -> the mean HSV saturation (max − min) / max over all pixels, 0..1."""
    rgb = np.asarray(pictures, dtype=np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return float(np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0).mean())


def guidance_sweep(pipe, prompt: str, scales, *, seed: int, **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """One run per guidance scale, the seed fixed, so only w changes (an sdexplore.sweep grid over w).

    Returns {"scales": [S], "pictures": uint8 [S, H, W, 3], "clipped": [S] (see ``clipped_fraction``),
    "saturation": [S] (see ``mean_saturation``), "cfg_used": [S] 1 where diffusers ran CFG (w > 1), else 0}.
    """
    from ..sweep import Grid, run_sweep

    scales = [check_guidance_scale(s, "scales") for s in scales]
    result = run_sweep(pipe, Grid(seed=seed, guidance_scale=scales, prompt=prompt, **pipeline_kwargs),
                       keep=_picture_and_clipping, progress=False)
    pictures = result.stack("picture").numpy()
    return {"scales": torch.tensor(scales), "pictures": torch.from_numpy(pictures),
            "clipped": torch.tensor([clipped_share(pipe, final) for final in result.column("final")]),
            "saturation": torch.tensor([mean_saturation(p) for p in pictures]),
            "cfg_used": result.stack("cfg_used")}


def rescale_sweep(pipe, prompt: str, rescales, *, seed: int, guidance_scale: float,
                  **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """One run per ``guidance_rescale`` value at a fixed seed and guidance scale (an sdexplore.sweep grid).

    Returns {"rescales": [R], "pictures": uint8 [R, H, W, 3], "clipped": [R], "saturation": [R],
    "std_ratio": [R, N] (see ``std_ratio``)}.
    """
    from ..sweep import Grid, run_sweep

    check_guidance_scale(guidance_scale)
    for phi in rescales:
        if not 0 <= phi <= 1:
            raise ValueError(f"rescales must be in [0, 1], got {phi}")
    grid = Grid(seed=seed, guidance_rescale=[float(phi) for phi in rescales], prompt=prompt,
                guidance_scale=guidance_scale, **pipeline_kwargs)
    result = run_sweep(pipe, grid, keep=_picture_clipping_and_std, progress=False)
    pictures = result.stack("picture").numpy()
    return {"rescales": torch.tensor([float(r) for r in rescales]), "pictures": torch.from_numpy(pictures),
            "clipped": torch.tensor([clipped_share(pipe, final) for final in result.column("final")]),
            "saturation": torch.tensor([mean_saturation(p) for p in pictures]),
            "std_ratio": result.stack("std_ratio")}


def clipped_share(pipe, final_latents: torch.Tensor) -> float:
    """``clipped_fraction`` from a run's final latents [B, C, h, w] (what a sweep keeps instead of the run)."""
    return float((raw_decode(pipe, final_latents).abs() > 1).float().mean())


def _picture_and_clipping(run) -> dict[str, torch.Tensor]:
    """What the guidance sweeps keep of a run: its picture, final latents, and whether CFG ran."""
    return {"picture": torch.from_numpy(np.array(run.images[0].convert("RGB"))), "final": run.latents[-1],
            "cfg_used": torch.tensor(float(run.noise_pred_uncond is not None))}


def _picture_clipping_and_std(run) -> dict[str, torch.Tensor]:
    return {**_picture_and_clipping(run), "std_ratio": std_ratio(run)}


def negative_prompt_effect(pipe, prompt: str, negative_prompt: str, *, seed: int, images: int,
                           **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """The same ``images`` starting noises (one seed, a batch) without and with ``negative_prompt``.

    Returns {"plain": uint8 [I, H, W, 3], "negative": uint8 [I, H, W, 3]}; judge them with sdexplore.toy.judge.
    """
    from ..capture.run import trace

    if not isinstance(negative_prompt, str) or not negative_prompt.strip():
        raise ValueError(f"negative_prompt must be a non-empty string, got {negative_prompt!r}")
    if not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    result = {}
    for name, negative in (("plain", None), ("negative", negative_prompt)):
        run = trace(pipe, prompt, seed=seed, negative_prompt=negative, num_images_per_prompt=images,
                    **pipeline_kwargs)
        result[name] = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in run.images]))
    return result


def share_judged(judgements: list[dict], field: str, value: str) -> float:
    """The fraction of the judge's verdicts whose ``field`` ("kind", "color", "position") is ``value``."""
    if not judgements:
        raise ValueError("no judgements given")
    return sum(j[field] == value for j in judgements) / len(judgements)



def detail(pictures, where: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., H, W, 3] -> [...]: mean |Δpixel| / 255 between 4-neighbours (how much fine texture there is),
    over the pixels ``where`` (bool [H, W], default all) selects."""
    pixels = np.asarray(pictures, dtype=np.float32)
    region = np.ones(pixels.shape[-3:-1], bool) if where is None else np.asarray(where, bool)
    if region.shape != pixels.shape[-3:-1] or not region.any():
        raise ValueError(f"where must be a bool [H, W] = {list(pixels.shape[-3:-1])} mask selecting some pixels")
    steps = []
    for axis in (-3, -2):
        step = np.abs(np.diff(pixels, axis=axis)).mean(axis=-1) / 255
        both = region[1:] & region[:-1] if axis == -3 else region[:, 1:] & region[:, :-1]
        steps.append(step[..., both])
    return np.concatenate(steps, axis=-1).mean(axis=-1)
