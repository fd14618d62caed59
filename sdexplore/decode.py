"""Turn latents into pictures, three ways, only when asked (tracing stays cheap).

- ``approx``: a linear 4->3 map per latent pixel (SD1.x coefficients built in, or fitted for
  any VAE by least squares with ``fit_latent_rgb``); instant, latent resolution.
- ``vae``: the pipeline's own VAE decoder; exact, full resolution, slow.
- ``taesd``: a tiny autoencoder (diffusers ``AutoencoderTiny``) the user passes; fast, close.
Latents here are the pipeline's scaled latents ([B, 4, h, w], as in a Trace).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METHODS = ("approx", "vae", "taesd")


@dataclass(frozen=True)
class LatentRGB:
    """A linear map from latent channels to RGB in [-1, 1]: rgb = latents @ weights + bias.

    weights [C, 3], bias [3].
    """

    weights: torch.Tensor
    bias: torch.Tensor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, 3, h, w] in [-1, 1] (clamped)."""
        if latents.shape[1] != self.weights.shape[0]:
            raise ValueError(f"latents have {latents.shape[1]} channels; this map expects {self.weights.shape[0]}")
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), self.weights.float()) + self.bias.float()[:, None, None]
        return rgb.clamp(-1, 1)


# The well-known cheap approximation for SD 1.x latents (no bias).
SD1_LATENT_RGB = LatentRGB(
    weights=torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                          [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]),
    bias=torch.zeros(3),
)


def fit_latent_rgb(vae, latents: torch.Tensor, *, scaling_factor: float | None = None) -> LatentRGB:
    """Least-squares fit of the 4->3 map for ``vae`` from a few example latents [B, C, h, w].

    Each latent is decoded, the image is average-pooled to latent resolution, and
    [latent, 1] -> rgb is solved for every latent pixel at once.
    """
    scale = scaling_factor if scaling_factor is not None else vae.config.scaling_factor
    images = vae_decode(vae, latents, scaling_factor=scale)  # [B, 3, H, W] in [-1, 1]
    pooled = F.adaptive_avg_pool2d(images, latents.shape[-2:])
    inputs = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    targets = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs.double(), targets.double()).solution.float()
    return LatentRGB(weights=solution[:-1], bias=solution[-1])


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, *, scaling_factor: float | None = None) -> torch.Tensor:
    """[B, C, h, w] scaled latents -> [B, 3, H, W] in [-1, 1] with a diffusers VAE (KL or tiny)."""
    scale = scaling_factor if scaling_factor is not None else vae.config.scaling_factor
    param = next(vae.parameters())
    decoded = vae.decode(latents.to(device=param.device, dtype=param.dtype) / scale).sample
    return decoded.float().clamp(-1, 1).cpu()


def decode(latents: torch.Tensor, method: str = "approx", *, pipe=None, taesd=None,
           latent_rgb: LatentRGB | None = None) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, 3, H', W'] in [-1, 1]. H' = h for approx, the image size otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown preview method {method!r}; choose one of: {', '.join(METHODS)}")
    if latents.ndim != 4:
        raise ValueError(f"latents must be [B, C, h, w], got shape {list(latents.shape)}")
    if method == "approx":
        return (latent_rgb or SD1_LATENT_RGB)(latents)
    if method == "vae":
        if pipe is None:
            raise ValueError("method='vae' needs pipe= (the pipeline whose VAE made these latents)")
        return vae_decode(pipe.vae, latents)
    if taesd is None:
        raise ValueError("method='taesd' needs taesd= (a diffusers AutoencoderTiny, e.g. madebyollin/taesd)")
    return vae_decode(taesd, latents)


def to_pil(images: torch.Tensor, *, upscale: int = 1) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images, optionally enlarged by an integer factor (nearest)."""
    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pictures = [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
    if upscale > 1:
        pictures = [p.resize((p.width * upscale, p.height * upscale), Image.NEAREST) for p in pictures]
    return pictures


def preview(run, step: int = -1, which: str = "x0", method: str = "approx", **decoder) -> list[Image.Image]:
    """PIL previews of one step of a Trace: ``which`` is "x0", "x_t" or "x_prev" (see Trace.latent)."""
    latents = run.latent(step, which)
    images = decode(latents, method, **decoder)
    upscale = 8 if method == "approx" else 1
    return to_pil(images, upscale=upscale)
