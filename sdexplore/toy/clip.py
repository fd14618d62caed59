"""A toy CLIP: an image tower and a text tower trained to match toy-world scenes with their captions.

    python -m sdexplore.toy.clip --out runs/toy/clip            # ~10 min on one CPU thread, resumable
    python -m sdexplore.toy.clip --out runs/toy/clip --device cuda

The shipped one (sdexplore/toy/weights/clip, its training.json holds every run) was trained in eight runs,
each going on from the last (145 min in all on a 2-core machine, 13,300 steps); first four on 20,000 fixed
scenes (one CPU thread, 41 min):

    python -m sdexplore.toy.clip --out runs/toy/clip3 --minutes 0 --steps 600
    python -m sdexplore.toy.clip --out runs/toy/clip5 --minutes 0 --steps 400 --lr 5e-4 --seed 1 \
        --init-from runs/toy/clip3
    python -m sdexplore.toy.clip --out runs/toy/clip6 --minutes 0 --steps 400 --lr 5e-4 --seed 2 \
        --twin-weights 1 3 1 --init-from runs/toy/clip5
    python -m sdexplore.toy.clip --out runs/toy/clip7 --minutes 0 --steps 400 --lr 5e-4 --seed 3 \
        --twin-weights 1 4 1 --init-from runs/toy/clip6

then four on fresh scenes (kind on held-out scenes 0.787 -> 0.903 -> 0.917 -> 0.933 -> 0.963; 104 min):

    python -m sdexplore.toy.clip --out runs/clip-fresh --fresh --init-from runs/toy/clip7 --lr 5e-4 --seed 4 \
        --twin-weights 1 4 1 --steps 2500 --minutes 0 --threads 1
    python -m sdexplore.toy.clip --out runs/clip-fresh2 --fresh --init-from runs/clip-fresh --lr 5e-4 --seed 5 \
        --twin-weights 1 4 1 --steps 2500 --minutes 0 --threads 1
    python -m sdexplore.toy.clip --out runs/clip-fresh3 --fresh --init-from runs/clip-fresh2 --lr 4e-4 --seed 6 \
        --twin-weights 1 4 1 --steps 4000 --minutes 0 --threads 2
    python -m sdexplore.toy.clip --out runs/clip-fresh4 --fresh --init-from runs/clip-fresh3 --lr 3e-4 --seed 7 \
        --twin-weights 1 4 1 --steps 2500 --minutes 0 --threads 1

transformers' ``CLIPModel``: the text tower is 128 wide, 3 layers, 4 heads, 77 positions, with the project's
tokenizer (its first layer, frozen, is the shipped diffusion model's text encoder), the image tower is a ViT of the
same width on 8x8-pixel patches of the 64x64 renders. Training is CLIP's: a batch of (image, caption) pairs, the
symmetric InfoNCE loss over the batch's image-caption cosine similarities (every other caption of the batch is a
negative) and a learned temperature (``logit_scale``, capped at 100 as CLIP caps it). Scenes come from
``world.make_dataset`` with the held-out (kind, colour, position) combinations left out, so the gates
(``clip_gates``) can ask about combinations the model never saw; every step draws fresh captions (templates,
synonyms, word order). Half of each batch is hard negatives: each scene's twin with one thing changed
(``twin_scene``). Without them, 600 steps learned colour (97% zero-shot) but not position (21%, chance) nor cat vs
kitten (kind 69%): random batches rarely hold two scenes that differ only there. With ``--fresh`` every step draws
new scenes instead of sampling the ``images`` rendered up front (rendering 64 scenes takes ~10 ms): with 20,000
fixed scenes the loss fell to ~0.1 while kind on held-out scenes stayed near 0.8, the image tower had learned the
pictures.

Checkpoints (safetensors + JSON) and ``log.jsonl`` go to ``--workdir``; a run resumes where it stopped.
The result is a folder ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` read, with a
``training.json`` recording the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from . import world
from .model import FULL, ToySize, build_tokenizer
from .train import learning_rate, load_checkpoint, save_checkpoint, write_training_record

DEFAULT_OUT = Path("runs/toy/clip")  # ships as sdexplore/toy/weights/clip
# OpenAI CLIP's pixel statistics (what CLIPImageProcessor uses by default).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class ClipTrainConfig:
    seed: int = 0
    images: int = 20_000
    steps: int = 600  # a cap: ``minutes`` may cut it after a warm-up (then the count is recorded)
    batch: int = 128
    lr: float = 1e-3
    warmup: int = 40
    weight_decay: float = 0.1
    patch: int = 8
    projection_dim: int = 128
    minutes: float | None = 9.0
    checkpoint_every: int = 50
    log_every: int = 10
    threads: int = 1
    init_text_from: str | None = None  # a CLIPTextModel folder of the text tower's shape to start the text tower from
    init_from: str | None = None  # a toy CLIP folder (train_clip's output) to go on training from
    twin_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # how often a twin changes position, kind, colour
    fresh: bool = False  # every step draws new scenes instead of sampling the ``images`` rendered up front


TEST_CONFIG = ClipTrainConfig(images=32, steps=3, batch=8, warmup=1, minutes=None, checkpoint_every=2, log_every=1)


# --- the model ---------------------------------------------------------------------------------


def build_clip(tokenizer, size: ToySize = FULL, config: ClipTrainConfig | None = None) -> CLIPModel:
    """A random CLIPModel: text tower shaped like ``model.build_text_encoder``'s, image tower a ViT of the
    same width on ``config.patch``-pixel patches; both project to ``config.projection_dim``."""
    config = config or ClipTrainConfig()
    if config.patch < 1 or size.image % config.patch:
        raise ValueError(f"patch={config.patch}: the image tower's patches must tile the {size.image}-pixel "
                         "renders; use a divisor of it (2, 4, 8, 16, ...)")
    text = dict(vocab_size=len(tokenizer), hidden_size=size.text_width, intermediate_size=2 * size.text_width,
                num_hidden_layers=size.text_layers, num_attention_heads=4, max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=size.image, patch_size=config.patch, hidden_size=size.text_width,
                  intermediate_size=2 * size.text_width, num_hidden_layers=size.text_layers,
                  num_attention_heads=4, num_channels=3)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim))
    grid = size.image // config.patch
    with torch.no_grad():  # the class token keeps its random start; patches get fixed-pattern starts
        clip.vision_model.embeddings.position_embedding.weight[1:] = sincos_positions(size.text_width, grid)
    return clip


def load_matching(clip: CLIPModel, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a trained toy CLIP's tensors into ``clip``; returns the names that keep their fresh start.

    Only the image tower's patch and position embeddings may differ in shape (a run that changes the patch
    size goes on from a CLIP trained with another); any other difference is an error naming the tensor.
    """
    own = clip.state_dict()
    fresh = [name for name, tensor in state.items() if name in own and own[name].shape != tensor.shape]
    wrong = [name for name in fresh if not name.startswith("vision_model.embeddings.")]
    if wrong or own.keys() != state.keys():
        differ = wrong or sorted(set(own) ^ set(state))
        raise ValueError(f"this CLIP cannot go on from the given one: {', '.join(differ[:5])} differ(s); only "
                         "the image tower's patch and position embeddings may change (--patch)")
    clip.load_state_dict({name: tensor for name, tensor in state.items() if name not in fresh}, strict=False)
    return fresh


def sincos_positions(width: int, grid: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings [grid * grid, width] (row-major patches), as MAE initialises ViTs.

    CLIP's default start (N(0, 0.02)) is tiny next to the patch embeddings: in 600 steps the toy CLIP then
    learned colour but not where things are (position zero-shot at chance); starting from this pattern, every
    patch knows its row and column from the first step.
    """
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None] * frequencies[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def build_processor(tokenizer, image_size: int = FULL.image) -> CLIPProcessor:
    """CLIP's processor for the toy: images resized/cropped to ``image_size``, CLIP's pixel statistics."""
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                "width": image_size}, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def pixel_values(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> CLIP's input [N, 3, H, W] (what the processor gives for images already at size)."""
    pixels = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(IMAGE_MEAN)[:, None, None], torch.tensor(IMAGE_STD)[:, None, None]
    return (pixels - mean) / std


@torch.no_grad()
def image_embeddings(clip: CLIPModel, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> unit-length image embeddings [N, projection_dim]."""
    device = clip.device
    chunks = [clip.get_image_features(pixel_values=pixel_values(images[i:i + batch]).to(device))
              for i in range(0, len(images), batch)]
    return _unit(torch.cat([_as_tensor(c) for c in chunks]).float().cpu())


@torch.no_grad()
def text_embeddings(clip: CLIPModel, tokenizer, texts: list[str], batch: int = 512) -> torch.Tensor:
    """Captions -> unit-length text embeddings [N, projection_dim]."""
    device, chunks = clip.device, []
    for i in range(0, len(texts), batch):
        tokens = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=77, return_tensors="pt")
        chunks.append(_as_tensor(clip.get_text_features(input_ids=tokens.input_ids.to(device),
                                                        attention_mask=tokens.attention_mask.to(device))))
    return _unit(torch.cat(chunks).float().cpu())


def _as_tensor(features) -> torch.Tensor:
    """get_*_features return a tensor (older transformers) or an output whose pooler_output is it."""
    return features if torch.is_tensor(features) else features.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --- training data: scenes and their hard negatives ---------------------------------------------


def random_object(kind: str, color: str, position: str, size: str, rng: np.random.Generator) -> world.ObjectSpec:
    """An object of this kind, colour, position and size; a cat gets a random pattern its fur shows, and eyes."""
    pattern = eyes = None
    if kind in world.CAT_KINDS:
        patterns = world.PATTERNS_BY_FUR.get(color, world.PATTERNS)
        pattern, eyes = patterns[rng.integers(len(patterns))], world.EYE_COLORS[rng.integers(len(world.EYE_COLORS))]
    return world.ObjectSpec(kind, color, pattern, eyes, position, size)


CHANGES = ("position", "kind", "color")


def twin_scene(scene: world.SceneSpec, rng: np.random.Generator,
               weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> world.SceneSpec:
    """The same scene with one thing changed: an object's position (two objects swap places), its kind or its
    colour. A batch holding both teaches what in-batch negatives alone rarely ask: *where* and *which* kind.
    ``weights``: how often each of ``CHANGES`` is picked. Held-out combinations are never produced."""
    for _ in range(100):
        objects = list(scene.objects)
        index = int(rng.integers(len(objects)))
        if len(set(weights)) == 1:  # equal odds (drawn this way so that runs made before weights existed repeat)
            change = CHANGES[rng.integers(3)]
        else:
            change = CHANGES[rng.choice(3, p=np.asarray(weights) / sum(weights))]
        obj = objects[index]
        if change == "position" and len(objects) == 2:
            objects = [replace(objects[0], position=objects[1].position),
                       replace(objects[1], position=objects[0].position)]
        else:
            if change == "position":
                options = [(obj.kind, obj.color, p) for p in world.POSITIONS if p != obj.position]
            elif change == "kind":  # in the same colour where the other kind comes in it
                options = [(k, c, obj.position) for k in world.KINDS if k != obj.kind
                           for c in world.COLORS_BY_KIND[k] if world.contrasts(k, c, scene.background)]
                options = [o for o in options if o[1] == obj.color] or options
            else:
                options = [(obj.kind, c, obj.position) for c in world.COLORS_BY_KIND[obj.kind]
                           if c != obj.color and world.contrasts(obj.kind, c, scene.background)]
            if not options:
                continue
            kind, color, position = options[rng.integers(len(options))]
            if change == "position":
                objects[index] = replace(obj, position=position)
            else:
                objects[index] = random_object(kind, color, position, obj.size, rng)
        if not any(world.is_held_out(o) for o in objects):
            return world.SceneSpec(objects, scene.background)
    return scene


def training_batch(pixels: torch.Tensor | None, scenes: list | None, step: int,
                   config) -> tuple[torch.Tensor, list[str]]:
    """Step ``step``'s batch: half dataset scenes, half their twins (``twin_scene``), each with a fresh caption.

    pixels [N, 3, H, W] (CLIP-normalised dataset images) -> (pixel values [B, 3, H, W], B captions).
    With ``config.fresh`` the scenes are drawn for this step (``pixels`` and ``scenes`` are not used): no scene
    is ever seen twice, so the image tower cannot learn the dataset's pictures by heart.
    """
    rng = np.random.default_rng([config.seed, 3, step])
    if config.fresh:
        images, _, chosen = world.make_dataset(config.batch // 2, seed=int(rng.integers(2**62)))
        chosen_pixels = pixel_values(images)
    else:
        indices = rng.integers(0, len(scenes), config.batch // 2)
        chosen, chosen_pixels = [scenes[i] for i in indices], pixels[indices]
    twins = [twin_scene(scene, rng, config.twin_weights) for scene in chosen]
    twin_images = np.stack([world.render(t, size=chosen_pixels.shape[-1], rng=rng).image for t in twins])
    captions = [world.caption(scene, rng) for scene in chosen] + [world.caption(t, rng) for t in twins]
    return torch.cat([chosen_pixels, pixel_values(twin_images)]), captions


# --- training ----------------------------------------------------------------------------------


def contrastive_loss(clip: CLIPModel, pixels: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of image->caption and caption->image over the batch's
    similarity matrix [B, B] (cosines times the learned ``exp(logit_scale)``), pairs on the diagonal."""
    return clip(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, return_loss=True).loss


def train_clip(config: ClipTrainConfig, out: Path = DEFAULT_OUT, workdir: Path = Path("runs/toy/clip-work"),
               device: str = "cpu", overwrite: bool = False) -> Path:
    """Train the toy CLIP and write it (model + processor + training.json) to ``out``."""
    out, workdir = Path(out), Path(workdir)
    if (out / "config.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a model; pass another --out, or --overwrite to replace it")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    started = time.time()
    tokenizer = build_tokenizer()
    torch.manual_seed(config.seed)  # the model first: a bad patch or --init-from fails before the rendering
    clip = build_clip(tokenizer, config=config)
    if config.init_text_from:
        from transformers import CLIPTextModel

        source = CLIPTextModel.from_pretrained(config.init_text_from).state_dict()  # 'text_model.' or not,
        clip.text_model.load_state_dict({k.removeprefix("text_model."): v for k, v in source.items()})  # by version
    if config.init_from:
        fresh = load_matching(clip, CLIPModel.from_pretrained(config.init_from).state_dict())
        if fresh:
            print(f"from {config.init_from}: all but {', '.join(fresh)} (another patch size: these start fresh)")
    pixels = scenes = None
    if not config.fresh:
        images, _, scenes = world.make_dataset(config.images, seed=config.seed)  # held-out combos excluded (numpy)
        pixels = pixel_values(images)
    clip = clip.to(device)
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    checkpoint = workdir / "clip"
    state = load_checkpoint(checkpoint, {"clip": clip}, optimizer) or {"step": 0, "total": config.steps,
                                                                       "seconds": 0.0}
    log_path = workdir / "log.jsonl"
    bar = tqdm(total=state["total"], initial=state["step"], desc="toy CLIP", unit="step", file=sys.stderr)
    step, resumed_at, resumed_seconds = state["step"], time.time(), state["seconds"]
    while step < state["total"]:
        batch_pixels, captions = training_batch(pixels, scenes, step, config)
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, state["total"], config.lr, config.warmup)
        clip.train()
        loss = contrastive_loss(clip, batch_pixels.to(device), tokens.input_ids.to(device),
                                tokens.attention_mask.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        seconds = resumed_seconds + time.time() - resumed_at
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{clip.logit_scale.exp().item():.1f}")
        if step % config.log_every == 0 or step == state["total"]:
            record = {"step": step, "loss": loss.item(), "logit_scale": clip.logit_scale.exp().item(),
                      "lr": optimizer.param_groups[0]["lr"], "elapsed_s": seconds}
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if config.minutes and state["step"] == 0 and step == 20:
            per_step = seconds / 20
            state["total"] = max(step + 1, min(config.steps, int(config.minutes * 60 / per_step)))
            bar.total = state["total"]
            bar.write(f"{per_step:.2f} s/step: {state['total']} steps fit in {config.minutes} min")
        if step % config.checkpoint_every == 0 or step == state["total"]:
            save_checkpoint(checkpoint, {"clip": clip}, optimizer, {"step": step, "total": state["total"],
                                                                   "seconds": seconds})
    bar.close()
    clip.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    clip.to("cpu").save_pretrained(out, safe_serialization=True)
    build_processor(tokenizer).save_pretrained(out)
    summary = {"config": asdict(config), "steps_run": state["total"],
               "train_minutes": (resumed_seconds + time.time() - resumed_at) / 60,
               "wall_minutes_this_session": (time.time() - started) / 60,
               "machine": machine_description(device, config.threads), "torch": torch.__version__}
    write_training_record(out, summary, config.init_from)
    print(f"wrote {out} ({summary['train_minutes']:.1f} min of training)", flush=True)
    return out


def machine_description(device: str, threads: int) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {threads} torch thread(s) of {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=None, help="checkpoints and log.jsonl (default: OUT-work)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default 9; 0: run --steps)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-text-from", default=None,
                        help="start the text tower from this CLIPTextModel folder (e.g. the toy text_encoder)")
    parser.add_argument("--init-from", default=None, help="a toy CLIP folder to go on training from")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--patch", type=int, default=None, help="the image tower's patch size in pixels (default 8)")
    parser.add_argument("--twin-weights", type=float, nargs=3, default=None, metavar=("POSITION", "KIND", "COLOUR"),
                        help="how often a hard-negative twin changes each (default 1 1 1)")
    parser.add_argument("--fresh", action="store_true",
                        help="new scenes every step instead of --images rendered up front")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    parser.add_argument("--gates", action="store_true", help="measure the gates afterwards, record them")
    parser.add_argument("--test", action="store_true", help="a tiny config that runs in seconds (for tests)")
    args = parser.parse_args(argv)
    config = TEST_CONFIG if args.test else ClipTrainConfig()
    overrides = {"seed": args.seed, "init_text_from": args.init_text_from, "init_from": args.init_from,
                 "fresh": args.fresh}
    if args.twin_weights:
        overrides["twin_weights"] = tuple(args.twin_weights)
    overrides.update({k: v for k, v in (("steps", args.steps), ("minutes", args.minutes),
                                         ("threads", args.threads), ("lr", args.lr), ("patch", args.patch))
                      if v is not None})
    workdir = args.workdir or args.out.with_name(args.out.name + "-work")
    try:
        out = train_clip(replace(config, **overrides), out=args.out, workdir=workdir, device=args.device,
                         overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.gates:
        from .clip_gates import record_gates

        record_gates(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
