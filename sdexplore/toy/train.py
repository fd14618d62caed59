"""Train the toy model from a fixed seed and write it as a diffusers folder.

    python -m sdexplore.toy.train                      # full model -> runs/toy/model (resumable), ~2 h on 2 cores
    python -m sdexplore.toy.train --minutes 60         # fit the denoiser stage into another time budget
    python -m sdexplore.toy.train --init-from sdexplore/toy/weights --minutes 60   # go on from shipped weights
    python -m sdexplore.toy.train --text-encoder-from sdexplore/toy/weights/clip   # SD's recipe (frozen CLIP tower)
    python -m sdexplore.toy.train --device cuda --minutes 30                       # on a GPU

Two stages, each checkpointed to ``--workdir`` (safetensors + JSON, resumed automatically):
1. the VAE learns to compress 64x64 world renders to 4x16x16 latents (L1 + MSE with object pixels
   weighted up, + a tiny KL);
2. the UNet learns to denoise those latents, SD-style: DDPM with scaled-linear betas rescaled to
   zero terminal SNR, v-prediction (see model.training_scheduler for why), 10% empty captions (for
   classifier-free guidance), min-SNR loss weighting (gamma 5). Its text encoder is either
   - SD's recipe (``--text-encoder-from`` a toy CLIP folder, see ``toy.clip``): CLIP's text tower,
     frozen, with CLIP's tokenizer: "not learned in Stable Diffusion ... used without modification";
     ``--text-layers N`` keeps its first N layers, as SD 2 reads OpenCLIP's penultimate layer;
   - or (no ``--text-encoder-from``) a text encoder trained together with the UNet, as toy v1 was.
``--init-from`` starts stage 2 from a trained diffusers folder (its VAE is kept, not retrained; its UNet
is the starting point; its tokenizer is used unless a CLIP gives its own).
``--pair-share`` sets how many training scenes hold two objects (the world's default is 30%).
Losses are printed as it goes and appended to ``<workdir>/log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

from . import world
from .folder import LATENT_RGB_IMAGES, make_standard
from .judge import foreground_mask
from .model import (
    FULL,
    SMALL,
    ToySize,
    assemble_pipeline,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    sampling_scheduler,
    training_scheduler,
)

DEFAULT_OUT = Path("runs/toy/model")  # to ship it, copy it to sdexplore/toy/weights once it clears the gates


class TrainingSetupError(ValueError):
    """A configuration that cannot train here (device, text layers), refused before any work is done."""


@dataclass
class TrainConfig:
    size: ToySize = field(default_factory=lambda: FULL)
    seed: int = 0
    images: int = 24_000
    vae_steps: int = 1_000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_object_weight: float = 10.0  # objects are ~8% of the pixels: weigh them up so the VAE keeps them
    unet_steps: int = 9_000  # a cap: the time budget below decides the count
    unet_batch: int = 48
    unet_lr: float = 5e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    init_from: str | None = None  # a trained diffusers folder: stage 2 starts from its weights, its VAE is kept
    text_encoder_from: str | None = None  # a toy CLIP folder: its text tower is the frozen text encoder (SD's recipe)
    text_layers: int | None = None  # keep only the tower's first N layers (SD 2 keeps all but the last); None: all
    pair_share: float = world.PAIR_SHARE  # share of training scenes with two objects
    minutes: float | None = 95.0  # time budget for stage 2 (fitted after a warm-up); 0 or None: run unet_steps
    checkpoint_every: int = 200
    log_every: int = 25
    latent_rgb_images: int = LATENT_RGB_IMAGES  # world pictures the shipped approx-preview map is fitted on
    device: str = "cpu"  # where the models train; batches are drawn on the CPU, so they are the same on any device


TEST_CONFIG = TrainConfig(size=SMALL, images=64, vae_steps=3, vae_batch=4, unet_steps=3, unet_batch=4,
                          warmup=1, checkpoint_every=2, log_every=1, minutes=None,
                          latent_rgb_images=8)


# --- data -------------------------------------------------------------------------------------


def render_dataset(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The training scenes: images [N, 3, H, W] in [-1, 1], object masks [N, 1, H, W] (bool), SceneSpecs."""
    images, _, scenes = world.make_dataset(config.images, seed=config.seed, size=config.size.image,
                                           pair_share=config.pair_share)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    masks = torch.from_numpy(np.stack([foreground_mask(image) for image in images]))[:, None]
    return pixels, masks, scenes


def batch_captions(scenes: list, indices: np.ndarray, rng: np.random.Generator, dropout: float) -> list[str]:
    """A fresh caption (template, synonyms, word order) per scene; '' with probability ``dropout``."""
    return ["" if rng.random() < dropout else world.caption(scenes[i], rng) for i in indices]


# --- small training utilities -----------------------------------------------------------------


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, state: dict):
    """Weights and Adam moments as safetensors, the rest as JSON; both written atomically."""
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous() for name, module in modules.items()
               for key, value in module.state_dict().items()}
    names = {id(p): f"{name}.{key}" for name, module in modules.items() for key, p in module.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"adam.{key}.{names[id(param)]}"] = value.detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    json_tmp = path.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(state))
    os.replace(json_tmp, path.with_suffix(".json"))


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None) -> dict | None:
    """Restore what ``save_checkpoint`` wrote; None when there is no checkpoint yet."""
    if not path.with_suffix(".json").exists():
        return None
    tensors = load_file(str(path.with_suffix(".safetensors")))
    for name, module in modules.items():
        module.load_state_dict({k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")})
    if optimizer is not None:
        params = {f"{name}.{key}": p for name, module in modules.items() for key, p in module.named_parameters()}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, slot, param_name = key.split(".", 2)
                param = params[param_name]  # Adam's step count stays on the CPU, its moments go beside the parameter
                optimizer.state[param][slot] = value if slot == "step" else value.to(param.device)
    return json.loads(path.with_suffix(".json").read_text())


class Progress:
    """Prints a line every ``every`` steps and appends every logged step to a JSONL file. Time counts from the
    stage's start over every sitting: ``elapsed_before`` seconds ran before this one (from the checkpoint)."""

    def __init__(self, stage: str, total: int, every: int, log_path: Path, elapsed_before: float = 0.0):
        self.stage, self.total, self.every, self.log_path = stage, total, every, log_path
        self.start, self.smoothed, self.elapsed_before = time.time(), None, elapsed_before

    def elapsed(self) -> float:
        """Seconds this stage has trained, this sitting and the ones before."""
        return self.elapsed_before + time.time() - self.start

    def update(self, step: int, loss: float, **extra) -> None:
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        if step % self.every and step != self.total - 1:
            return
        elapsed = self.elapsed()
        record = {"stage": self.stage, "step": step, "loss": loss, "smoothed": self.smoothed, "elapsed_s": elapsed,
                  **extra}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"[{self.stage}] step {step + 1}/{self.total} loss {self.smoothed:.4f} "
              f"({elapsed / 60:.1f} min)", flush=True)


# --- stage 1: the VAE ---------------------------------------------------------------------------


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, object_weight: float):
    """L1 + MSE per pixel, object pixels weighted ``1 + object_weight`` (masks [B, 1, H, W] bool)."""
    weights = 1.0 + object_weight * masks.float()
    per_pixel = (recon - target).abs() + (recon - target).pow(2)
    return (per_pixel * weights).sum() / (weights.sum() * target.shape[1])


def train_vae(config: TrainConfig, pixels: torch.Tensor, masks: torch.Tensor, workdir: Path):
    torch.manual_seed(config.seed)
    vae = build_vae(config.size).to(config.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    checkpoint = workdir / "vae"
    state = load_checkpoint(checkpoint, {"vae": vae}, optimizer) or {"step": 0}
    progress = Progress("vae", config.vae_steps, config.log_every, workdir / "log.jsonl", state.get("elapsed_s", 0.0))
    for step in range(state["step"], config.vae_steps):
        rng = np.random.default_rng([config.seed, 1, step])
        indices = rng.integers(0, len(pixels), config.vae_batch)
        batch, batch_masks = pixels[indices].to(config.device), masks[indices].to(config.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.vae_steps, config.vae_lr, config.warmup)
        posterior = vae.encode(batch).latent_dist
        torch.manual_seed(config.seed * 7919 + step)
        recon = vae.decode(posterior.sample()).sample
        loss = reconstruction_loss(recon, batch, batch_masks, config.vae_object_weight)
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        progress.update(step, loss.item())
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            save_checkpoint(checkpoint, {"vae": vae}, optimizer, {"step": step + 1, "elapsed_s": progress.elapsed()})
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_dataset(vae, pixels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior means and stds [N, 4, h, w] of every image (on the CPU, whatever the VAE's device), and SD's
    scaling factor 1 / std(latents)."""
    means, stds = [], []
    for start in range(0, len(pixels), batch):
        posterior = vae.encode(pixels[start:start + batch].to(vae.device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = 1.0 / float((mean + std * torch.randn_like(std)).std())
    return mean, std, scaling


# --- stage 2: the UNet (and the text encoder, unless it is CLIP's frozen tower) ------------------


def load_tokenizer(config: TrainConfig):
    """The tokenizer the text encoder was made with: the CLIP's, the starting folder's, or a fresh one."""
    if config.text_encoder_from:
        return CLIPTokenizer.from_pretrained(config.text_encoder_from)
    if config.init_from:
        return CLIPTokenizer.from_pretrained(Path(config.init_from) / "tokenizer")
    return build_tokenizer()


def check_text_layers(clip_folder: str | os.PathLike, layers: int | None) -> int:
    """How many of the CLIP's text layers to keep (all for None); TrainingSetupError naming the range otherwise."""
    total = CLIPConfig.from_pretrained(clip_folder).text_config.num_hidden_layers
    layers = total if layers is None else layers
    if not 1 <= layers <= total:
        raise TrainingSetupError(
            f"text_layers={layers}: the CLIP in {clip_folder} has {total} text layers; use 1..{total}")
    return layers


def frozen_text_tower(clip_folder: str | os.PathLike, layers: int | None = None) -> CLIPTextModel:
    """CLIPModel's text tower as a CLIPTextModel (input ids [B, 77] -> hidden states [B, 77, width]), frozen.

    ``layers``: keep only the first N transformer layers, then the final layer norm, as SD 2 reads OpenCLIP's
    penultimate layer (diffusers ships its text encoder with 23 of 24 layers). CLIP's loss reads only the
    end token after the last layer, so the last layer's outputs at the other tokens feed nothing it sees.
    """
    clip = CLIPModel.from_pretrained(clip_folder)
    layers = check_text_layers(clip_folder, layers)
    config = clip.config.text_config
    config.num_hidden_layers = layers
    text_encoder = CLIPTextModel(config)
    kept = {k: v for k, v in clip.text_model.state_dict().items()
            if not k.startswith("encoder.layers.") or int(k.split(".")[2]) < layers}
    text_encoder.load_state_dict(kept)  # same parameter names in transformers 5
    return text_encoder.eval().requires_grad_(False)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights: min(SNR, gamma) / SNR for epsilon prediction, and for v-prediction
    min(SNR + 1, gamma) / (SNR + 1), which stays 1 at zero SNR (the step that must read the prompt)."""
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    if scheduler.config.prediction_type == "v_prediction":
        snr = snr + 1
    return torch.clamp(snr, max=gamma) / snr


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or v = sqrt(a) noise - sqrt(1 - a) x0."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    return noise


def train_denoiser(config: TrainConfig, latents: tuple[torch.Tensor, torch.Tensor, float], scenes: list,
                   tokenizer, workdir: Path):
    mean, std, scaling = latents
    torch.manual_seed(config.seed + 1)
    frozen = bool(config.text_encoder_from)
    if frozen:
        text_encoder = frozen_text_tower(config.text_encoder_from, config.text_layers)
    else:
        text_encoder = build_text_encoder(tokenizer, config.size)
    unet = build_unet(config.size, latent_size=mean.shape[-1])
    if config.init_from:
        trained = Path(config.init_from)
        if not frozen:
            text_encoder.load_state_dict(CLIPTextModel.from_pretrained(trained / "text_encoder").state_dict())
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(trained / "unet").state_dict())
    text_encoder, unet = text_encoder.to(config.device), unet.to(config.device)
    modules = {"unet": unet} if frozen else {"text_encoder": text_encoder, "unet": unet}
    parameters = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=0.01)
    scheduler = training_scheduler(config.prediction_type, config.zero_terminal_snr)
    checkpoint = workdir / "denoiser"
    state = load_checkpoint(checkpoint, modules, optimizer) or {"step": 0, "total": config.unet_steps}
    progress = Progress("denoiser", state["total"], config.log_every, workdir / "log.jsonl",
                        state.get("elapsed_s", 0.0))
    step, fitting_from = state["step"], None
    while step < state["total"]:
        rng = np.random.default_rng([config.seed, 2, step])
        indices = rng.integers(0, len(mean), config.unet_batch)
        captions = batch_captions(scenes, indices, rng, config.caption_dropout)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        generator = torch.Generator().manual_seed(config.seed * 104729 + step)
        x0 = (mean[indices] + std[indices] * torch.randn(mean[indices].shape, generator=generator)) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        target = training_target(scheduler, x0, noise, timesteps)
        weights = min_snr_weights(scheduler, timesteps, config.min_snr_gamma)
        ids, noisy, target, weights, timesteps = (t.to(config.device) for t in (ids, noisy, target, weights, timesteps))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, state["total"], config.unet_lr, config.warmup)
        with torch.set_grad_enabled(not frozen):  # a frozen tower needs no graph
            encoder_states = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, encoder_states).sample
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        progress.update(step, loss.item(), lr=optimizer.param_groups[0]["lr"])
        step += 1
        if config.minutes and state["step"] == 0 and step == 10:  # the first steps pay warm-ups: time 30 after them
            fitting_from = time.time()
        if config.minutes and state["step"] == 0 and step == 40:
            per_step = (time.time() - fitting_from) / 30
            state["total"] = progress.total = max(step + 1, min(config.unet_steps, int(config.minutes * 60 / per_step)))
            print(f"[denoiser] {per_step:.2f} s/step: {state['total']} steps fit in {config.minutes} min", flush=True)
        if step % config.checkpoint_every == 0 or step == state["total"]:
            save_checkpoint(checkpoint, modules, optimizer,
                            {"step": step, "total": state["total"], "elapsed_s": progress.elapsed()})
    text_encoder.cpu().eval().requires_grad_(False)
    unet.cpu().eval().requires_grad_(False)
    return text_encoder, unet, state["total"]


# --- the whole run -----------------------------------------------------------------------------


def train(config: TrainConfig, out: Path = DEFAULT_OUT, workdir: Path = Path("runs/toy"),
          overwrite: bool = False) -> Path:
    """Train every part, then write a diffusers folder to ``out`` (loadable with from_pretrained, and by older
    transformers and other tools too: see ``folder.make_standard``; with the approx-preview map it ships).

    A model already in ``out`` is never replaced unless ``overwrite``: checked before any training.
    """
    if config.text_layers is not None and not config.text_encoder_from:
        raise TrainingSetupError("text_layers chooses layers of a frozen CLIP tower: give text_encoder_from too")
    check_device(config.device)
    if config.text_encoder_from:  # before any rendering or training, not after the VAE stage
        check_text_layers(config.text_encoder_from, config.text_layers)
    if (Path(out) / "model_index.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a model; pass another --out, or --overwrite to replace it")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    tokenizer = load_tokenizer(config)
    print(f"rendering {config.images} scenes ...", flush=True)
    pixels, masks, scenes = render_dataset(config)
    if config.init_from:
        vae = AutoencoderKL.from_pretrained(Path(config.init_from) / "vae").eval().requires_grad_(False)
        encoded = encode_dataset(vae.to(config.device), pixels)[:2] + (vae.config.scaling_factor,)
    else:
        vae = train_vae(config, pixels, masks, workdir)
        encoded = encode_dataset(vae, pixels)
        vae.register_to_config(scaling_factor=encoded[2])
    vae = vae.cpu()  # the pipeline is assembled and saved on the CPU
    print(f"latents {tuple(encoded[0].shape[1:])}, scaling factor {encoded[2]:.4f}", flush=True)
    del pixels, masks
    text_encoder, unet, steps = train_denoiser(config, encoded, scenes, tokenizer, workdir)
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet,
                             sampling_scheduler(config.prediction_type, config.zero_terminal_snr))
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    make_standard(out, vae=vae, images=config.latent_rgb_images)  # CLIP's tokenizer files, text_model. names, previews
    if config.text_encoder_from:  # the CLIP the text encoder comes from ships beside it
        shutil.copytree(config.text_encoder_from, out / "clip", dirs_exist_ok=True)
    stages = ("denoiser",) if config.init_from else ("vae", "denoiser")
    summary = {"config": {**asdict(config), "unet_steps_run": steps}, "minutes": (time.time() - started) / 60,
               "training_minutes": stage_minutes(workdir, stages), "torch": torch.__version__,
               "device": device_name(config.device)}
    write_training_record(out, summary, config.init_from)
    print(f"wrote {out} in {summary['minutes']:.1f} min", flush=True)
    return out


def stage_minutes(workdir: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """{stage: minutes it trained over every sitting} from the stages' last checkpoints in ``workdir`` ("minutes"
    in training.json is this sitting's wall time, rendering and saving included)."""
    minutes = {}
    for stage in stages:
        state = workdir / f"{stage}.json"
        if state.exists() and "elapsed_s" in (recorded := json.loads(state.read_text())):
            minutes[stage] = recorded["elapsed_s"] / 60
    return minutes


def check_device(device: str) -> None:
    """TrainingSetupError naming what is available when ``device`` cannot train here (checked before any work)."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise TrainingSetupError(f"device={device!r} is not a torch device: use cpu, cuda or cuda:N") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise TrainingSetupError(f"device={device!r}: no CUDA GPU is available here (torch {torch.__version__}); "
                                 "use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise TrainingSetupError(f"device={device!r}: the toy trains on cpu or cuda")


def device_name(device: str) -> str:
    """What trained the model, for training.json: the GPU's name, or the CPU's core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def write_training_record(out: Path, summary: dict, init_from) -> None:
    """out/training.json: this run's summary, with the record of the run it went on from (if any)."""
    earlier = Path(init_from or "") / "training.json"
    if init_from and earlier.exists():
        summary["started_from"] = json.loads(earlier.read_text())
    (out / "training.json").write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=Path("runs/toy"), help="checkpoints and log.jsonl")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget for the denoiser stage (default 95: the whole run fits in 2 h on 2 cores; "
                             "0: no budget, run --unet-steps)")
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", default=None, help="a trained diffusers folder to start stage 2 from")
    parser.add_argument("--unet-lr", type=float, default=None)
    parser.add_argument("--unet-batch", type=int, default=None,
                        help="scenes per denoiser step (default 48; an H100 computed ~12 ms of a 65 ms step at 48)")
    parser.add_argument("--text-encoder-from", default=None,
                        help="a toy CLIP folder: its text tower, frozen, is the text encoder (SD's recipe)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="with --text-encoder-from: keep the tower's first N layers (SD 2: all but the last)")
    parser.add_argument("--pair-share", type=float, default=None, help="share of two-object training scenes")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the models train")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    parser.add_argument("--test", action="store_true", help="a tiny config that runs in seconds (for tests)")
    args = parser.parse_args(argv)
    if args.text_layers is not None and not args.text_encoder_from:
        parser.error("--text-layers chooses layers of a frozen CLIP tower: give --text-encoder-from too")
    config = TEST_CONFIG if args.test else TrainConfig()
    overrides = {"seed": args.seed, "init_from": args.init_from, "text_encoder_from": args.text_encoder_from,
                 "device": args.device}
    overrides.update({k: v for k, v in (("unet_steps", args.unet_steps), ("vae_steps", args.vae_steps),
                                         ("unet_lr", args.unet_lr), ("minutes", args.minutes),
                                         ("unet_batch", args.unet_batch),
                                         ("pair_share", args.pair_share), ("text_layers", args.text_layers))
                      if v is not None})
    try:
        train(replace(config, **overrides), out=args.out, workdir=args.workdir, overwrite=args.overwrite)
    except (FileExistsError, TrainingSetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
