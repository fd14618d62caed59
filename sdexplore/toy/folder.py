"""The toy model's folder as a standard Stable Diffusion folder that other tools (and older releases) read.

``pipe.save_pretrained`` with transformers 5 writes two things older readers cannot use:
- the tokenizer only as ``tokenizer.json``: transformers 4's slow ``CLIPTokenizer`` (and tools that read CLIP's
  files directly) need ``vocab.json`` + ``merges.txt``, written here from the same BPE model;
- the text encoder's weights without the ``text_model.`` prefix transformers has always written: transformers 4
  loads such a file with no error and a random text encoder. Re-saved here with the prefix, tensors unchanged
  (transformers 5 loads both forms).
And it ships the toy's own approx-preview map, ``latent_rgb.json`` (see ``sdexplore.decode``), fitted on world
pictures so that ``method="approx"`` previews of the toy have the toy VAE's colours.

    python -m sdexplore.toy.folder sdexplore/toy/weights   # bring a saved folder to this format, in place
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..decode import LATENT_RGB_FILE, fit_latent_rgb, save_latent_rgb, vae_decode
from . import world

TEXT_MODEL_PREFIX = "text_model."
TEXT_ENCODER_WEIGHTS = "model.safetensors"
LATENT_RGB_IMAGES = 400  # world pictures the preview map is fitted on
LATENT_RGB_SEED = 2024  # their seed (the training set uses the training seed: these are other scenes)


def write_clip_vocab_files(tokenizer_dir: str | os.PathLike) -> list[Path]:
    """Write CLIP's ``vocab.json`` (token -> id) and ``merges.txt`` next to ``tokenizer.json``, from its BPE model."""
    tokenizer_dir = Path(tokenizer_dir)
    model = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"{tokenizer_dir / 'tokenizer.json'} is not a CLIP-style BPE tokenizer "
                         f"(type {model.get('type')!r}, end_of_word_suffix {model.get('end_of_word_suffix')!r})")
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = [pair if isinstance(pair, str) else " ".join(pair) for pair in model["merges"]]
    vocab_path, merges_path = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    # CLIP's reader skips the first line, a version header
    merges_path.write_text("#version: 0.2\n" + "".join(f"{pair}\n" for pair in merges), encoding="utf-8")
    return [vocab_path, merges_path]


def prefix_text_encoder_weights(text_encoder_dir: str | os.PathLike) -> Path:
    """Re-save ``model.safetensors`` with every tensor under ``text_model.`` (values and dtypes unchanged).

    A file already in that form is left as it is.
    """
    path = Path(text_encoder_dir) / TEXT_ENCODER_WEIGHTS
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {"format": "pt"}
    tensors = load_file(str(path))
    if all(name.startswith(TEXT_MODEL_PREFIX) for name in tensors):
        return path
    renamed = {name if name.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + name: value
               for name, value in tensors.items()}
    temporary = path.with_suffix(".tmp")
    save_file(renamed, str(temporary), metadata=metadata)
    os.chmod(temporary, path.stat().st_mode & 0o777)  # the file's permissions, not the temporary file's
    os.replace(temporary, path)
    return path


@torch.no_grad()
def world_latents(vae, *, images: int = LATENT_RGB_IMAGES, seed: int = LATENT_RGB_SEED,
                  batch: int = 100) -> torch.Tensor:
    """Scaled latents [N, C, h, w] of ``images`` world pictures (posterior means x scaling_factor): the x0 the
    toy's denoiser aims at."""
    size = int(vae.config.sample_size)
    pictures, _, _ = world.make_dataset(images, seed=seed, size=size, exclude=None)
    pixels = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    means = [vae.encode(pixels[start:start + batch]).latent_dist.mean for start in range(0, len(pixels), batch)]
    return torch.cat(means) * vae.config.scaling_factor


def preview_colour_error(latent_rgb, vae, latents: torch.Tensor) -> float:
    """Mean absolute difference, in 0..255 levels per channel, between the approx preview of ``latents``
    [N, C, h, w] and the VAE's decoding of them average-pooled to the same latent resolution."""
    target = F.adaptive_avg_pool2d(torch.cat([vae_decode(vae, chunk) for chunk in latents.split(32)]),
                                   latents.shape[-2:])
    return float((latent_rgb(latents) - target).abs().mean() * 127.5)


def fit_preview_map(vae, *, images: int = LATENT_RGB_IMAGES, seed: int = LATENT_RGB_SEED):
    """Fit the toy VAE's approx map on world pictures; returns (LatentRGB, a record of how it was fitted)."""
    latents = world_latents(vae, images=images, seed=seed)
    latent_rgb = fit_latent_rgb(vae, latents)
    record = {"by": "sdexplore.decode.fit_latent_rgb: least squares of [latent, 1] -> the VAE's decoding "
                    "average-pooled to latent resolution, every latent pixel of every picture",
              "pictures": f"{images} toy-world scenes, sdexplore.toy.world.make_dataset(seed={seed}, exclude=None)",
              "latents": "VAE posterior means x scaling_factor",
              "fit_colour_error": round(preview_colour_error(latent_rgb, vae, latents), 3),
              "colour_error_unit": "mean |approx - pooled VAE decode| in 0..255 levels"}
    return latent_rgb, record


def write_latent_rgb(folder: str | os.PathLike, vae=None, **fit) -> Path:
    """Fit the folder's VAE's approx map and save it as ``<folder>/latent_rgb.json``."""
    folder = Path(folder)
    vae = vae if vae is not None else AutoencoderKL.from_pretrained(folder / "vae").eval()
    latent_rgb, record = fit_preview_map(vae, **fit)
    return save_latent_rgb(latent_rgb, folder / LATENT_RGB_FILE, fitted=record)


def make_standard(folder: str | os.PathLike, *, vae=None, latent_rgb: bool = True, **fit) -> list[Path]:
    """Bring a folder ``save_pretrained`` wrote to the format other tools read (see the module docstring)."""
    folder = Path(folder)
    written = write_clip_vocab_files(folder / "tokenizer")
    written.append(prefix_text_encoder_weights(folder / "text_encoder"))
    if latent_rgb:
        written.append(write_latent_rgb(folder, vae, **fit))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-latent-rgb", action="store_true", help="leave latent_rgb.json as it is")
    args = parser.parse_args(argv)
    for path in make_standard(args.folder, latent_rgb=not args.no_latent_rgb):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
