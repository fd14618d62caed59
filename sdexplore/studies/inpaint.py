"""Inpainting, the way the study notes found it: the kept region changes too (compute only).

Mask convention (diffusers'): white (>= 0.5) = may be repainted, black = keep. Two kinds of UNet:
- 4 channels (any txt2img model): diffusers runs the normal sampler and, after every step, puts the original
  back into the kept region, noised to the next timestep: x = (1 − m)·noised_original + m·x (``blend_steps``).
  At the last step the original's latents go in un-noised, so the kept region's latents end exactly equal to
  the original's; its pixels still change, because the VAE decoder sees the repainted neighbours too and
  because the latent itself is a lossy code (``vae_floor``).
- 9 channels (SD's inpainting UNet, "tiny-inpaint"): the mask and the masked image's latents are extra UNet
  inputs; there is no per-step blend, and nothing forces the kept region at all.
The notes' fix, "mask again after inpaint", pastes the original back outside the mask in pixel space
(diffusers' ``VaeImageProcessor.apply_overlay``): exact outside, with a seam at the mask's edge (``seam``).

Shapes: pictures uint8 [H, W, 3]; masks bool [H, W] (True = repaint); latents [B, C, h, w].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .img2img import distance_to


def as_mask(mask, image=None) -> np.ndarray:
    """bool [H, W], True where the picture may be repainted (mask value >= 0.5 of white, as diffusers binarises).

    mask: PIL image, array [H, W] (bool, 0..1 or 0..255) or [H, W, C]. With ``image`` the sizes must agree.
    An all-black mask repaints nothing (the result would be the image's VAE round trip) and an all-white one
    keeps nothing (that is text-to-image): both are refused, since neither is inpainting.
    """
    array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"mask must be a picture [H, W] or [H, W, C], got shape {list(array.shape)}")
    scale = 255.0 if array.dtype == np.uint8 or array.max() > 1 else 1.0
    repaint = array.astype(np.float32) / scale >= 0.5
    if image is not None:
        size = _picture(image).shape[:2]
        if repaint.shape != size:
            raise ValueError(f"mask is {repaint.shape[1]}x{repaint.shape[0]} (width x height) but the image is "
                             f"{size[1]}x{size[0]}: give a mask of the image's size")
    if not repaint.any():
        raise ValueError("the mask is all black: nothing may be repainted, so inpainting would only return the "
                         "image's VAE round trip; paint white where the picture should change")
    if repaint.all():
        raise ValueError("the mask is all white: nothing is kept, so this is plain text-to-image (or img2img); "
                         "paint black where the picture must stay")
    return repaint


def mask_picture(repaint: np.ndarray) -> Image.Image:
    """bool [H, W] -> the black/white PIL mask diffusers takes (white = repaint)."""
    return Image.fromarray(np.where(repaint, 255, 0).astype(np.uint8), mode="L")


def _picture(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (1: repaint from pure noise), got {strength!r}")
    return float(strength)


def inpaint(pipe, image, mask, prompt: str, *, seed: int, strength: float = 1.0, **pipeline_kwargs):
    """Trace one inpainting run (4- or 9-channel UNet) after checking the image, the mask and the strength."""
    from ..capture.run import trace

    repaint = as_mask(mask, image)
    return trace(pipe, prompt, seed=seed, image=Image.fromarray(_picture(image)), mask_image=mask_picture(repaint),
                 strength=_check_strength(strength), **pipeline_kwargs)


def latent_mask(repaint: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """bool [H, W] -> float [1, 1, h, w], resized to the latent grid as diffusers does (nearest)."""
    pixels = torch.from_numpy(repaint.astype(np.float32))[None, None]
    return F.interpolate(pixels, size=size)


@torch.no_grad()
def blend_steps(pipe, run, image, mask) -> dict[str, torch.Tensor]:
    """What the 4-channel blend put together at every step of ``run`` (a strength-1 ``inpaint`` trace).

    Recomputes, with the run's seed, the original's latents and the starting noise exactly as diffusers draws
    them (the VAE posterior sample first, then the noise), and from them the noised original of each step.
    Returns {"blended": [N, C, h, w] the latents kept after each step (from the trace), "noised_original":
    [N, C, h, w] the original noised to the next timestep (un-noised at the last step), "original": [C, h, w],
    "noise": [C, h, w], "mask": [h, w] (1 = repaint)}.
    """
    if run.params.get("unet_in_channels") != 4:
        raise ValueError("blend_steps explains the 4-channel UNet's per-step blend; this run's UNet has "
                         f"{run.params.get('unet_in_channels')} input channels (the 9-channel inpainting UNet "
                         "gets the masked image as input and does not blend)")
    if run.params.get("strength", 1.0) != 1.0:
        raise ValueError(f"blend_steps recomputes a strength-1 run's noise; this run has strength "
                         f"{run.params.get('strength')}")
    repaint = as_mask(mask, image)
    processor = VaeImageProcessor(vae_scale_factor=getattr(pipe, "vae_scale_factor", 8))
    pixels = processor.preprocess(Image.fromarray(_picture(image)))
    param = next(pipe.vae.parameters())
    generator = torch.Generator(device="cpu").manual_seed(run.seed)
    original = retrieve_latents(pipe.vae.encode(pixels.to(param.device, param.dtype)), generator=generator)
    original = (original * pipe.vae.config.scaling_factor).float().cpu()[0]
    noise = randn_tensor(tuple(run.latents.shape[1:]), generator=generator, dtype=torch.float32)[0]
    scheduler = pipe.scheduler
    noised = []
    for i in range(run.num_steps):
        if i < run.num_steps - 1:
            t_next = torch.tensor([int(run.timesteps[i + 1])])
            noised.append(scheduler.add_noise(original[None], noise[None], t_next)[0])
        else:
            noised.append(original)
    return {"blended": run.latents[1:, 0], "noised_original": torch.stack(noised), "original": original,
            "noise": noise, "mask": latent_mask(repaint, tuple(original.shape[-2:]))[0, 0]}


@torch.no_grad()
def vae_round_trip(pipe, image) -> np.ndarray:
    """uint8 [H, W, 3]: the picture encoded (posterior mode) and decoded again by the pipeline's VAE."""
    from .vae import round_trip_pictures

    return round_trip_pictures(pipe, _picture(image)[None])[0]


def kept_region_error(pipe, run, image, mask) -> dict[str, float]:
    """How much the kept region (mask black) changed, against what the VAE alone changes there.

    Returns {"inpainted": mean |Δpixel| / 255 of the run's picture vs the original, inside the kept region;
    "vae_floor": the same for the original's VAE round trip; "repainted": the change inside the masked region}.
    """
    repaint = as_mask(mask, image)
    original = _picture(image).astype(np.float32)
    picture = np.asarray(run.images[0].convert("RGB"), dtype=np.float32)
    floor = vae_round_trip(pipe, image).astype(np.float32)
    return {"inpainted": float(distance_to(picture, original, where=~repaint)),
            "vae_floor": float(distance_to(floor, original, where=~repaint)),
            "repainted": float(distance_to(picture, original, where=repaint))}


def recomposite(picture, image, mask) -> np.ndarray:
    """uint8 [H, W, 3]: the notes' "mask again after inpaint": the original pasted back wherever the mask is
    black, the inpainted picture kept where it is white (diffusers' ``VaeImageProcessor.apply_overlay``)."""
    repaint = as_mask(mask, image)
    pasted = VaeImageProcessor().apply_overlay(mask_picture(repaint), Image.fromarray(_picture(image)),
                                               Image.fromarray(_picture(picture)))
    return np.asarray(pasted)


def seam(picture, mask) -> float:
    """How visible the mask's edge is in ``picture``: the mean |Δpixel| / 255 between 4-neighbours on opposite
    sides of the edge, divided by the same between 4-neighbours on the same side. ~1: no seam; > 1: an edge
    that the picture does not have elsewhere."""
    repaint = as_mask(mask)
    pixels = _picture(picture).astype(np.float32)
    across, within = [], []
    for axis in (0, 1):
        step = np.abs(np.diff(pixels, axis=axis)).mean(axis=-1) / 255
        crosses = np.diff(repaint.astype(np.int8), axis=axis) != 0
        across.append(step[crosses])
        within.append(step[~crosses])
    return float(np.concatenate(across).mean() / max(np.concatenate(within).mean(), 1e-6))


def inpaint_seeds(pipe, image, mask, prompt: str, seeds, **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """``inpaint`` once per seed, measured.

    Returns {"seeds": [S], "pictures": uint8 [S, H, W, 3] the inpainted pictures, "recomposited": uint8
    [S, H, W, 3] after "mask again", "inpainted", "vae_floor", "repainted": [S] (see ``kept_region_error``),
    "seam_inpainted", "seam_recomposited": [S] (see ``seam``)}.
    """
    seeds = [int(s) for s in seeds]
    rows = {key: [] for key in ("pictures", "recomposited", "inpainted", "vae_floor", "repainted",
                                "seam_inpainted", "seam_recomposited")}
    for seed in seeds:
        run = inpaint(pipe, image, mask, prompt, seed=seed, **pipeline_kwargs)
        picture = np.asarray(run.images[0].convert("RGB"))
        pasted = recomposite(picture, image, mask)
        for key, value in kept_region_error(pipe, run, image, mask).items():
            rows[key].append(value)
        rows["pictures"].append(picture)
        rows["recomposited"].append(pasted)
        rows["seam_inpainted"].append(seam(picture, mask))
        rows["seam_recomposited"].append(seam(pasted, mask))
    result = {"seeds": torch.tensor(seeds)}
    for key, values in rows.items():
        result[key] = torch.from_numpy(np.stack(values)) if key in ("pictures", "recomposited") \
            else torch.tensor(values, dtype=torch.float32)
    return result
