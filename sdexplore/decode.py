"""Turn latents into pictures, three ways, only when asked (tracing stays cheap).

- ``approx``: a linear C->3 map per latent pixel; instant, latent resolution. The map is picked for the
  model: one it ships itself (``latent_rgb.json`` in its folder, as the toy does), else the published
  map of its latent format (SD 1.x/2.x, SDXL, SD3, Flux; see ``LATENT_FORMATS``), else an error that
  says what to do (``method="vae"``, or fit a map with ``fit_latent_rgb`` and pass ``latent_rgb=``).
- ``vae``: the pipeline's own VAE decoder; exact, full resolution, slow.
- ``taesd``: a tiny autoencoder (diffusers ``AutoencoderTiny``) the user passes; fast, close.
Latents here are the pipeline's scaled latents ([B, C, h, w], as in a Trace: what the denoiser sees,
``(vae latents - shift_factor) * scaling_factor``; Flux's packed latents already unpacked).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METHODS = ("approx", "vae", "taesd")
LATENT_RGB_FILE = "latent_rgb.json"  # a model folder may ship its own fitted approx map under this name


@dataclass(frozen=True)
class LatentRGB:
    """A linear map from latent channels to RGB in [-1, 1]: rgb = latents @ weights + bias.

    weights [C, 3], bias [3].
    """

    weights: torch.Tensor
    bias: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.weights.shape[0])

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, 3, h, w] in [-1, 1] (clamped)."""
        if latents.shape[1] != self.channels:
            raise ValueError(f"latents have {latents.shape[1]} channels; this map expects {self.channels}")
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), self.weights.float()) + self.bias.float()[:, None, None]
        return rgb.clamp(-1, 1)


def _map(weights: list[list[float]], bias: list[float] | None = None) -> LatentRGB:
    return LatentRGB(weights=torch.tensor(weights), bias=torch.tensor(bias or [0.0, 0.0, 0.0]))


@dataclass(frozen=True)
class LatentFormat:
    """A family's latent space: its VAE's channels and factors, the pipelines that use it, and its approx map."""

    name: str
    channels: int
    scaling_factor: float
    shift_factor: float | None
    pipelines: tuple[str, ...]  # pipeline class-name prefixes that use this latent format
    latent_rgb: LatentRGB


# The published latent -> RGB factors the field uses for previews, from ComfyUI's comfy/latent_formats.py
# (github.com/comfyanonymous/ComfyUI, commit 040a3243468ecefd1f2802592d90458f1ce4d65f: classes SD15, SDXL,
# SD3, Flux; latent_rgb_factors [C, 3] and latent_rgb_factors_bias [3]). ComfyUI applies them to latents after
# its process_in, (latent - shift) * scale, which is diffusers' denoiser-side latent, so they apply as is here.
LATENT_FORMATS: dict[str, LatentFormat] = {
    "sd1": LatentFormat(  # SD 1.x and 2.x share the VAE (and its 0.18215)
        "sd1", 4, 0.18215, None, ("StableDiffusion", "AltDiffusion"),
        _map([[0.3512, 0.2297, 0.3227],
              [0.3250, 0.4974, 0.2350],
              [-0.2829, 0.1762, 0.2721],
              [-0.2120, -0.2616, -0.7177]])),
    "sdxl": LatentFormat(
        "sdxl", 4, 0.13025, None, ("StableDiffusionXL",),
        _map([[0.3651, 0.4232, 0.4341],
              [-0.2533, -0.0042, 0.1068],
              [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011])),
    "sd3": LatentFormat(
        "sd3", 16, 1.5305, 0.0609, ("StableDiffusion3",),
        _map([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
              [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
              [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
              [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
              [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
              [-0.1448, -0.1463, -0.1189]],
             [0.2394, 0.2135, 0.1925])),
    "flux": LatentFormat(
        "flux", 16, 0.3611, 0.1159, ("Flux",),
        _map([[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
              [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
              [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
              [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
              [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
              [-0.1262, -0.0982, -0.0778]],
             [-0.0329, -0.0718, -0.0851])),
}
SD1_LATENT_RGB = LATENT_FORMATS["sd1"].latent_rgb  # kept under its old name


# --- picking the approx map for a model -------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What picks a model's approx map: its pipeline class, folder, and VAE's channels and factors."""

    pipeline: str
    folder: str
    channels: int | None
    scaling_factor: float | None
    shift_factor: float | None

    @classmethod
    def of_pipeline(cls, pipe) -> ModelFacts:
        vae = pipe.vae.config
        return cls(type(pipe).__name__, _folder_of(pipe), int(vae.latent_channels),
                   float(vae.scaling_factor), _optional_float(getattr(vae, "shift_factor", None)))

    @classmethod
    def of_trace(cls, run) -> ModelFacts:
        """From a Trace's params (as ``describe_pipeline`` records them) and its latents' channel count."""
        params = run.params
        return cls(str(params.get("pipeline", "")), str(params.get("model", "")), int(run.latents.shape[2]),
                   _optional_float(params.get("vae_scaling_factor")), _optional_float(params.get("vae_shift_factor")))


def _folder_of(pipe) -> str:
    return str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or "")


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def latent_format(facts: ModelFacts) -> LatentFormat:
    """The published latent format of a model: by its pipeline class, else by its VAE's channels and factors.

    ValueError for a model none of ``LATENT_FORMATS`` fits.
    """
    by_class = [f for f in LATENT_FORMATS.values() if facts.pipeline.startswith(f.pipelines)]
    if by_class:
        found = max(by_class, key=lambda f: max(len(p) for p in f.pipelines if facts.pipeline.startswith(p)))
        if facts.channels in (None, found.channels):
            return found
    else:
        for found in LATENT_FORMATS.values():
            if (facts.channels, _rounded(facts.scaling_factor), _rounded(facts.shift_factor)) == \
                    (found.channels, _rounded(found.scaling_factor), _rounded(found.shift_factor)):
                return found
    known = "; ".join(f"{f.name}: {f.channels} channels, scaling_factor {f.scaling_factor}, shift_factor "
                      f"{f.shift_factor} ({'/'.join(f.pipelines)}*)" for f in LATENT_FORMATS.values())
    raise ValueError(
        f"no approx latent->RGB map is known for {facts.pipeline or 'this model'}'s latents "
        f"({facts.channels} channels, scaling_factor {facts.scaling_factor}, shift_factor {facts.shift_factor}); "
        f"known formats: {known}. "
        f"Use method='vae' (exact), or fit a map with sdexplore.decode.fit_latent_rgb(pipe.vae, latents) and pass "
        f"latent_rgb= (save it as {LATENT_RGB_FILE} in the model folder to have it picked up)")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def latent_rgb_for(source) -> LatentRGB:
    """The approx map for a pipeline or a Trace: the model folder's own ``latent_rgb.json`` if it ships one,
    else its latent format's published map (``latent_format``)."""
    facts = ModelFacts.of_pipeline(source) if hasattr(source, "vae") else ModelFacts.of_trace(source)
    shipped = Path(facts.folder) / LATENT_RGB_FILE if facts.folder else None
    if shipped is not None and shipped.is_file():
        return load_latent_rgb(shipped)
    return latent_format(facts).latent_rgb


# --- shipping a fitted map ---------------------------------------------------------------------------


def save_latent_rgb(latent_rgb: LatentRGB, path: str | os.PathLike, *, fitted: dict | None = None) -> Path:
    """Write the map as small JSON (weights [C][3], bias [3], and ``fitted``: how it was fitted)."""
    record = {"maps": "scaled latents [C, h, w] (as the denoiser sees them) -> RGB in [-1, 1]: "
                      "rgb = latents^T @ weights + bias",
              "channels": latent_rgb.channels,
              "weights": [[round(float(v), 6) for v in row] for row in latent_rgb.weights],
              "bias": [round(float(v), 6) for v in latent_rgb.bias],
              "fitted": fitted or {}}
    rows = ",\n  ".join(json.dumps(row) for row in record["weights"])  # one line per channel: [r, g, b]
    text = json.dumps({**record, "weights": "ROWS", "bias": "BIAS"}, indent=1)
    text = text.replace('"ROWS"', f"[\n  {rows}\n ]").replace('"BIAS"', json.dumps(record["bias"]))
    path = Path(path)
    path.write_text(text + "\n")
    return path


def load_latent_rgb(path: str | os.PathLike) -> LatentRGB:
    """Read what ``save_latent_rgb`` wrote; ValueError naming the file if it is not such a map."""
    record = json.loads(Path(path).read_text())
    try:
        weights, bias = torch.tensor(record["weights"]), torch.tensor(record["bias"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a latent->RGB map (needs 'weights' [C][3] and 'bias' [3]): {error}") from None
    if weights.ndim != 2 or weights.shape[1] != 3 or bias.shape != (3,):
        raise ValueError(f"{path}: weights must be [C][3] and bias [3], "
                         f"got {list(weights.shape)} and {list(bias.shape)}")
    return LatentRGB(weights=weights.float(), bias=bias.float())


def fit_latent_rgb(vae, latents: torch.Tensor, *, scaling_factor: float | None = None,
                   shift_factor: float | None = None) -> LatentRGB:
    """Least-squares fit of the C->3 map for ``vae`` from a few example scaled latents [B, C, h, w].

    Each latent is decoded, the image is average-pooled to latent resolution, and
    [latent, 1] -> rgb is solved for every latent pixel at once.
    """
    images = torch.cat([vae_decode(vae, chunk, scaling_factor=scaling_factor, shift_factor=shift_factor)
                        for chunk in latents.split(32)])  # [B, 3, H, W]
    pooled = F.adaptive_avg_pool2d(images, latents.shape[-2:])
    inputs = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    targets = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs.double(), targets.double()).solution.float()
    return LatentRGB(weights=solution[:-1], bias=solution[-1])


# --- decoding ---------------------------------------------------------------------------------------


def unscale_latents(vae, latents: torch.Tensor, *, scaling_factor: float | None = None,
                    shift_factor: float | None = None) -> torch.Tensor:
    """Denoiser-side latents [B, C, h, w] -> what ``vae.decode`` takes, as diffusers' pipelines do it:
    latents / scaling_factor + shift_factor (SD3, Flux), or latents * std / scaling_factor + mean where the
    VAE config has latents_mean/latents_std (SDXL-style VAEs such as Playground's)."""
    config = vae.config
    scale = scaling_factor if scaling_factor is not None else config.scaling_factor
    shift = shift_factor if shift_factor is not None else (getattr(config, "shift_factor", None) or 0.0)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, dtype=latents.dtype).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=latents.dtype).view(1, -1, 1, 1)
        return latents * std / scale + mean
    return latents / scale + shift


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, *, scaling_factor: float | None = None,
               shift_factor: float | None = None) -> torch.Tensor:
    """[B, C, h, w] scaled latents -> [B, 3, H, W] in [-1, 1] with a diffusers VAE (KL or tiny)."""
    param = next(vae.parameters())
    unscaled = unscale_latents(vae, latents.float(), scaling_factor=scaling_factor, shift_factor=shift_factor)
    decoded = vae.decode(unscaled.to(device=param.device, dtype=param.dtype)).sample
    return decoded.float().clamp(-1, 1).cpu()


def decode(latents: torch.Tensor, method: str = "approx", *, pipe=None, run=None, taesd=None,
           latent_rgb: LatentRGB | None = None) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, 3, H', W'] in [-1, 1]. H' = h for approx, the image size otherwise.

    approx: ``latent_rgb`` if given, else the map for ``pipe`` or, without one, for the Trace ``run``
    (see ``latent_rgb_for``). vae: ``pipe``'s VAE. taesd: the ``taesd`` autoencoder.
    """
    if method not in METHODS:
        raise ValueError(f"unknown preview method {method!r}; choose one of: {', '.join(METHODS)}")
    if latents.ndim != 4:
        raise ValueError(f"latents must be [B, C, h, w], got shape {list(latents.shape)}")
    if method == "approx":
        if latent_rgb is None:
            if pipe is None and run is None:
                raise ValueError("method='approx' needs to know which model made these latents: pass pipe= "
                                 "(the pipeline), run= (its Trace) or latent_rgb= (a map, e.g. from fit_latent_rgb)")
            latent_rgb = latent_rgb_for(pipe if pipe is not None else run)
        return latent_rgb(latents)
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
    """PIL previews of one step of a Trace: ``which`` is "x0", "x_t" or "x_prev" (see Trace.latent).

    approx previews use the map of the model that made ``run`` unless ``pipe=`` or ``latent_rgb=`` says otherwise.
    """
    latents = run.latent(step, which)
    if method == "approx":
        decoder.setdefault("run", run)
    images = decode(latents, method, **decoder)
    upscale = 8 if method == "approx" else 1
    return to_pil(images, upscale=upscale)
