"""The VAE: how much a round trip loses, how much it compresses, and how many bits the latent needs.

The HN thread: "what's the minimum number of bits of precision in the 64x64x4 array that would be sufficient?"
``quantisation_sweep`` answers it for a model: latents quantised to k bits (2^k levels per value, uniform over the
latent's own range) are decoded and compared with the unquantised decode.

Shapes: pictures uint8 [B, H, W, 3]; latents [B, C, h, w] (scaled, as the pipeline keeps them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..decode import vae_decode

# Above this PSNR (dB) against the unquantised decode, no difference is visible: the usual "visually lossless"
# line for 8-bit pictures (a mean error of about 1/255, well under one grey level on most pixels).
INVISIBLE_PSNR = 40.0


def _as_batch(pictures) -> np.ndarray:
    array = np.asarray(pictures)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"pictures must be uint8 [B, H, W, 3] or [H, W, 3], got shape {list(array.shape)}")
    return array


def _to_vae(pictures: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(_as_batch(pictures).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)


def _to_pictures(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def encode(pipe, pictures) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> [B, C, h, w] scaled latents (the posterior's mode, no sampling)."""
    param = next(pipe.vae.parameters())
    latents = pipe.vae.encode(_to_vae(pictures).to(param.device, param.dtype)).latent_dist.mode()
    return (latents * pipe.vae.config.scaling_factor).float().cpu()


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """[B, C, h, w] scaled latents -> uint8 [B, H, W, 3]."""
    return _to_pictures(vae_decode(pipe.vae, latents))


def round_trip_pictures(pipe, pictures) -> np.ndarray:
    """uint8 [B, H, W, 3] -> the same pictures encoded and decoded again."""
    return decode(pipe, encode(pipe, pictures))


def psnr(a, b) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of uint8 pictures [..., H, W, 3] (peak 255); inf where identical."""
    error = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / error)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a, b) -> np.ndarray:
    """Structural similarity (Wang et al. 2004: 11×11 gaussian window, σ = 1.5, K1 = .01, K2 = .03, L = 255) of
    uint8 pictures [B, H, W, 3] or [H, W, 3], per channel then averaged; 1 for identical pictures."""
    x, y = (torch.from_numpy(_as_batch(p).astype(np.float64)).permute(0, 3, 1, 2) for p in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"pictures of different shapes: {list(x.shape)} and {list(y.shape)}")
    channels = x.shape[1]
    window = _gaussian_window().expand(channels, 1, -1, -1)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3)).numpy()


def compression_ratio(pipe, height: int, width: int) -> float:
    """Numbers in the picture (3·H·W) / numbers in its latent (C·h·w): 48 for SD 1.x at 512², 12 for the toy."""
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"height and width must be multiples of {factor} for this VAE, got {height}x{width}")
    latent_numbers = pipe.vae.config.latent_channels * (height // factor) * (width // factor)
    return 3 * height * width / latent_numbers


def check_bits(bits) -> int:
    """``bits`` as an int in 1..16; ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int from 1 to 16 (2**bits levels per latent value), got {bits!r}")
    return int(bits)


def quantise(latents: torch.Tensor, bits: int) -> torch.Tensor:
    """[B, C, h, w] -> the same latents rounded to 2**bits evenly spaced levels between each latent's own
    minimum and maximum (one range per picture; the range, two floats, is the only extra information)."""
    levels = 2 ** check_bits(bits) - 1
    low = latents.amin(dim=(1, 2, 3), keepdim=True)
    high = latents.amax(dim=(1, 2, 3), keepdim=True)
    span = (high - low).clamp_min(1e-12)
    return low + torch.round((latents - low) / span * levels) / levels * span


def quantisation_sweep(pipe, pictures, bits=tuple(range(1, 17))) -> dict[str, torch.Tensor]:
    """Decode each picture's latent quantised to every k in ``bits``.

    Returns {"bits": [K], "decoded": uint8 [K, B, H, W, 3], "psnr_to_decode": [K, B] dB against the
    unquantised latent's decode, "psnr_to_picture": [K, B] dB against the picture itself, "round_trip_psnr": [B]
    (the unquantised round trip against the picture: the ceiling)}.
    """
    bits = [check_bits(k) for k in bits]
    pictures = _as_batch(pictures)
    latents = encode(pipe, pictures)
    reference = decode(pipe, latents)
    decoded = np.stack([decode(pipe, quantise(latents, k)) for k in bits])
    return {"bits": torch.tensor(bits), "decoded": torch.from_numpy(decoded),
            "psnr_to_decode": torch.from_numpy(psnr(decoded, reference[None])),
            "psnr_to_picture": torch.from_numpy(psnr(decoded, pictures[None])),
            "round_trip_psnr": torch.from_numpy(psnr(reference, pictures))}


def invisible_from(bits, psnr_to_decode, threshold: float = INVISIBLE_PSNR) -> int | None:
    """The smallest k from which every larger k decodes within ``threshold`` dB of the unquantised decode
    (PSNR [K] or [K, B], worst picture counts); None if even the largest does not."""
    worst = np.asarray(psnr_to_decode, dtype=np.float64)
    worst = worst.min(axis=1) if worst.ndim == 2 else worst
    answer = None
    for k, value in reversed(list(zip(list(bits), worst))):
        if value < threshold:
            break
        answer = int(k)
    return answer
