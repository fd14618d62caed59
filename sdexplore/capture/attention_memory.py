"""How much memory an attention capture keeps, computed from the denoiser's own attention layers.

``kept_bytes`` is what the recorder keeps on the CPU at the end of a run (float16 per step, float32
for keep="summed"), for a plan of layers (their grid and heads). ``attention_plan`` makes the plan
from a denoiser's modules (the same discovery the recorder uses) and the grid of its image tokens;
``native_memory_table`` builds SD1.5, SDXL, SD3, SD3.5 and Flux.1 denoisers on the meta device
(no weights, no download) from their published configurations and computes each mode's memory at
the family's native resolution. The capture guard in attention.py refuses a run whose
``kept_bytes`` exceed ``max_bytes`` before its first denoiser call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention_processor import attention_layers

DEFAULT_MAX_BYTES = 2 * 1024**3
TEXT_KINDS = ("cross", "joint", "single")


# aggregate: the layers of one grid and head count wait (queries and keys) until their float32 probabilities
# would take this much, then are computed together: a few kernels for them all instead of a few per layer
BATCHED_LOGITS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class PlannedLayer:
    """An attention layer's kind, grid of image queries (hl, wl) and head count."""

    kind: str
    grid: tuple[int, int]
    heads: int


@dataclass(frozen=True)
class Capture:
    """What a run records: mode, keep, per_head, the steps S, batch rows kept B (negative: they include the
    negative half of a CFG batch, which the text→text and image→image maps leave out), text length T, grid
    h x w, text→text maps (joint layers) and the number P of image→image query patches."""

    mode: str = "aggregate"
    keep: str = "per_step"
    per_head: bool = False
    steps: int = 50
    batch: int = 1
    negative: bool = False
    tokens: int = 77
    grid: tuple[int, int] = (64, 64)
    text_to_text: bool = False
    patches: int = 0


def attention_plan(denoiser, grid: tuple[int, int]) -> dict[str, PlannedLayer]:
    """{name: PlannedLayer} of every attention layer; UNet layers work at the grid halved once per
    down-sampler before them (rounding up), transformer layers at the token grid."""
    blocks = {"down_blocks": getattr(denoiser, "down_blocks", []), "up_blocks": getattr(denoiser, "up_blocks", [])}
    downs = [getattr(block, "downsamplers", None) is not None for block in blocks["down_blocks"]]
    ups = [getattr(block, "upsamplers", None) is not None for block in blocks["up_blocks"]]
    plan = {}
    for name, layer in attention_layers(denoiser).items():
        parts = name.split(".")
        if parts[0] == "down_blocks":
            halvings = sum(downs[: int(parts[1])])
        elif parts[0] == "mid_block":
            halvings = sum(downs)
        elif parts[0] == "up_blocks":
            halvings = sum(downs) - sum(ups[: int(parts[1])])
        else:
            halvings = 0
        plan[name] = PlannedLayer(layer.kind, _halved(grid, halvings), layer.heads)
    return plan


def kept_bytes(plan: dict[str, PlannedLayer], capture: Capture, layers=None) -> int:
    """Bytes the recorder keeps for ``capture`` with the layers of ``plan`` (image→text: ``layers``, default all
    cross/joint/single layers)."""
    text_layers = [p for n, p in plan.items() if p.kind in TEXT_KINDS and (layers is None or n in layers)]
    h, w = capture.grid
    per_value = 4 if capture.keep == "summed" else 2
    kept_steps = 1 if capture.keep == "summed" else capture.steps
    rows = kept_steps * capture.batch * per_value
    if capture.mode == "aggregate":
        total = rows * capture.tokens * h * w
    else:
        total = sum(rows * capture.tokens * p.grid[0] * p.grid[1] * (p.heads if capture.per_head else 1)
                    for p in text_layers)
    relation_rows = rows // 2 if capture.negative else rows
    if capture.text_to_text and any(p.kind in ("joint", "single") for p in text_layers):
        total += relation_rows * capture.tokens**2
    if capture.patches:
        total += relation_rows * capture.patches * h * w
    return total


def device_bytes(plan: dict[str, PlannedLayer], capture: Capture, layers=None) -> int:
    """Peak bytes the recording holds on the denoiser's device during a step: the float32 probabilities being
    reduced (per_layer: the largest layer's [b, heads, n, T]; aggregate: the largest batch of layers of one
    grid and head count computed together, see BATCHED_LOGITS_BYTES), plus the step's sums (aggregate: one
    [b, n, T] per grid and the [b, T, h, w] mean; per_layer: every layer's map until the step ends, float16
    unless summed)."""
    text_layers = [p for n, p in plan.items() if p.kind in TEXT_KINDS and (layers is None or n in layers)]
    rows, tokens = capture.batch, capture.tokens

    def probabilities(p):
        return 4 * rows * p.heads * p.grid[0] * p.grid[1] * tokens

    if capture.mode == "aggregate":
        groups: dict[tuple, list[int]] = {}
        for p in text_layers:
            groups.setdefault((p.grid, p.heads), []).append(probabilities(p))
        reduced = max(min(len(sizes), -(-BATCHED_LOGITS_BYTES // sizes[0])) * sizes[0] for sizes in groups.values())
        held = sum(4 * rows * h * w * tokens for h, w in {p.grid for p in text_layers})
        held += 4 * rows * tokens * capture.grid[0] * capture.grid[1]
    else:
        reduced = max(probabilities(p) for p in text_layers)
        per_value = 4 if capture.keep == "summed" else 2
        held = sum(per_value * rows * p.grid[0] * p.grid[1] * tokens * (p.heads if capture.per_head else 1)
                   for p in text_layers)
    return reduced + held


def describe_bytes(count: int) -> str:
    """1536 → '1.5 KB' (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


# --- the families at their native resolution ----------------------------------------------------

# The published denoiser configurations (diffusers' config.json of each hub model), the pipeline's
# default steps, its native image side, the text length the denoiser attends to and the latent
# pixels per image token (VAE 8x, times the transformer's 2x2 patches).
FAMILIES = {
    "SD1.5": dict(
        model="unet", steps=50, side=512, tokens=77, pixels_per_token=8,
        config=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                    cross_attention_dim=768, sample_size=64,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)),
    "SDXL": dict(
        model="unet", steps=50, side=1024, tokens=77, pixels_per_token=8,
        config=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
                    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, cross_attention_dim=2048,
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816, sample_size=128,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))),
    "SD3-medium": dict(
        model="sd3", steps=28, side=1024, tokens=77 + 256, pixels_per_token=16,
        config=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                    attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                    caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)),
    "SD3.5-large": dict(
        model="sd3", steps=28, side=1024, tokens=77 + 256, pixels_per_token=16,
        config=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                    attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                    caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                    qk_norm="rms_norm")),
    "Flux.1-dev": dict(
        model="flux", steps=28, side=1024, tokens=512, pixels_per_token=16,
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
}

CAPTURES = {
    "aggregate": dict(mode="aggregate"),
    "aggregate, summed": dict(mode="aggregate", keep="summed"),
    "per_layer": dict(mode="per_layer"),
    "per_layer, per_head": dict(mode="per_layer", per_head=True),
    "aggregate + text→text": dict(mode="aggregate", text_to_text=True),
}


def family_plan(family: str) -> tuple[dict[str, PlannedLayer], dict]:
    """The attention plan of a family's denoiser (built on the meta device) at its native resolution."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    spec = FAMILIES[family]
    model_class = {"unet": UNet2DConditionModel, "sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}
    with torch.device("meta"):
        denoiser = model_class[spec["model"]](**spec["config"])
    side = spec["side"] // spec["pixels_per_token"]
    return attention_plan(denoiser, (side, side)), spec


def native_memory_table(families=None, captures=None) -> list[dict]:
    """One row per family and capture: layers, S, T, h x w and the bytes kept for one image (CFG's text half)."""
    rows = []
    for family in families or FAMILIES:
        plan, spec = family_plan(family)
        side = spec["side"] // spec["pixels_per_token"]
        text_layers = sum(p.kind in TEXT_KINDS for p in plan.values())
        joint = any(p.kind in ("joint", "single") for p in plan.values())
        for label, options in (captures or CAPTURES).items():
            capture = Capture(steps=spec["steps"], tokens=spec["tokens"], grid=(side, side), **options)
            applies = joint or not capture.text_to_text  # text→text exists in joint attention only
            rows.append(dict(family=family, capture=label, resolution=spec["side"], steps=spec["steps"],
                             tokens=spec["tokens"], grid=side, layers=text_layers,
                             bytes=kept_bytes(plan, capture) if applies else None,
                             device_bytes=device_bytes(plan, capture)))
    return rows


def markdown_memory_table(rows=None) -> str:
    """The README's table: one line per family, one column per capture (kept on the CPU at the end of the run),
    then the peak the recording holds on the device during a step, aggregate and per_layer."""
    rows = rows if rows is not None else native_memory_table()
    captures = list(dict.fromkeys(r["capture"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    device = ["aggregate", "per_layer"]
    lines = ["| family (native size, steps, text tokens, grid, layers) | " + " | ".join(captures) + " | "
             + " | ".join(f"device peak, {c}" for c in device) + " |",
             "|---|" + "---:|" * (len(captures) + len(device))]
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        first = mine[0]
        head = (f"{family} ({first['resolution']}², {first['steps']} steps, T={first['tokens']}, "
                f"{first['grid']}x{first['grid']}, {first['layers']} layers)")
        by_capture = {r["capture"]: "—" if r["bytes"] is None else describe_bytes(r["bytes"]) for r in mine}
        on_device = {r["capture"]: describe_bytes(r["device_bytes"]) for r in mine}
        lines.append(f"| {head} | " + " | ".join(by_capture[c] for c in captures) + " | "
                     + " | ".join(on_device[c] for c in device) + " |")
    return "\n".join(lines)


def _halved(grid: tuple[int, int], times: int) -> tuple[int, int]:
    h, w = grid
    for _ in range(times):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w
