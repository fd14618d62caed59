"""Record cross-attention maps over the 77 prompt tokens while a pipeline runs.

``AttentionRecorder`` puts a ``RecordingAttnProcessor`` on every cross-attention (``attn2``)
layer of the UNet, wrapping the processor found there, and a forward pre-hook on the UNet that
counts steps (one UNet call per denoising step). On exit the original processor objects are put
back, also when the run raises. ``result(token_tables)`` turns what was kept into
``AttentionMaps`` (see attention_maps.py), which ``sdexplore.trace(..., attention=...)`` stores
as ``Trace.attention``.

Memory (B images, S steps, latent h x w, T = 77 tokens; SD1.5 at 512²: h = w = 64, S = 50):
- mode="aggregate", keep="per_step" (default): each step's head-averaged maps of every layer are
  upsampled to h x w and averaged on the device, then kept on the CPU in float16:
  S·B·T·h·w·2 bytes (31.5 MB per image for SD1.5), twice that with keep_negative=True. The
  device holds one float32 sum, B·T·h·w·4 bytes (1.3 MB per image), plus one layer's
  probabilities while they are computed. Nothing grows with layers or heads.
- keep="summed": the average over steps only, B·T·h·w·4 bytes (1.3 MB per image).
- mode="per_layer": every layer's head-averaged map at its own resolution, float16 on the CPU:
  S·B·T·2·Σ(hl·wl) bytes (208 MB per image for SD1.5: 16 layers at 64², 32², 16², 8²);
  per_head=True multiplies it by the heads (8 for SD1.5).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F

from ..prompts import MAX_TOKENS, token_table
from .attention_maps import AttentionMaps, layer_grid
from .attention_processor import RecordingAttnProcessor, cross_attention_layers

__all__ = ["AttentionMaps", "AttentionProcessorsReplacedWarning", "AttentionRecorder"]

MODES = ("aggregate", "per_layer")
KEEPS = ("per_step", "summed")


class AttentionProcessorsReplacedWarning(UserWarning):
    """Something replaced the recording cross-attention processors while a run was traced."""


class AttentionRecorder:
    """Context manager recording the cross-attention probabilities of the pipeline calls inside it.

    mode: "aggregate" (layers upsampled to the latent resolution and averaged as they come) or
      "per_layer" (every layer at its own resolution);
    keep: "per_step" (one map per step) or "summed" (the average over all steps);
    layers: diffusers names of the attn2 layers to record (default: all);
    keep_negative: also keep the negative/unconditional half of a classifier-free-guidance batch;
    per_head: keep every head apart (mode="per_layer" only).
    """

    def __init__(self, pipe, mode: str = "aggregate", *, keep: str = "per_step", layers=None,
                 keep_negative: bool = False, per_head: bool = False):
        _check_choice("mode", mode, MODES)
        _check_choice("keep", keep, KEEPS)
        if per_head and mode != "per_layer":
            raise ValueError("per_head=True keeps each layer's heads apart: use it with attention='per_layer' "
                             "(layers have different numbers of heads, so heads cannot be averaged across layers)")
        self.pipe, self.unet = pipe, pipe.unet
        self.mode, self.keep, self.keep_negative, self.per_head = mode, keep, bool(keep_negative), bool(per_head)
        self.layers = _select_layers(cross_attention_layers(self.unet), layers)
        self._originals: dict[str, object] = {}
        self._handles: list = []
        self._text_encoder_ids: list[torch.Tensor] = []
        self._collector = _Collector(mode, keep, per_head)
        self.replaced: dict[str, str] = {}
        self._owner: int | None = None

    # --- installing and removing -------------------------------------------------------------

    def __enter__(self) -> "AttentionRecorder":
        self._owner = threading.get_ident()  # calls from other threads pass through unrecorded
        try:
            for name, layer in self.layers.items():
                original = layer.processor
                layer.set_processor(RecordingAttnProcessor(original, name, self))
                self._originals[name] = original
            self._handles.append(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
            encoder = getattr(self.pipe, "text_encoder", None)
            if self.keep_negative and encoder is not None:
                self._handles.append(encoder.register_forward_pre_hook(self._before_text_encoder, with_kwargs=True))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._collector.end_step()
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, original in self._originals.items():
            layer = self.layers[name]
            current = layer.processor
            if isinstance(current, RecordingAttnProcessor) and current.recorder is self:
                layer.set_processor(original)
            else:
                self.replaced[name] = type(current).__name__
        self._originals = {}
        if self.replaced:
            warnings.warn(
                f"{len(self.replaced)} of {len(self.layers)} cross-attention layers had their processor replaced "
                f"during the traced run ({', '.join(sorted(set(self.replaced.values())))}); their attention is "
                f"missing (NaN) from then on, and the new processors were left in place: "
                f"{', '.join(self.replaced)}",
                AttentionProcessorsReplacedWarning,
                stacklevel=3,
            )

    # --- what the hooks and processors call ----------------------------------------------------

    def _before_unet(self, module, args, kwargs):
        if threading.get_ident() != self._owner:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self._collector.start_step(_timestep(timestep), tuple(sample.shape[-2:]), self._guided())
        return None

    def _before_text_encoder(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and not self._collector.timesteps:
            self._text_encoder_ids.append(ids.detach().cpu())
        return None

    def _guided(self) -> bool:
        try:
            return bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # outside a pipeline call
            return False

    def rows(self, batch: int) -> slice | None:
        """Batch rows of an attn2 call to record: the text half under CFG, unless keeping the negative."""
        if threading.get_ident() != self._owner:
            return None
        return self._collector.rows(batch, self.keep_negative)

    def add(self, name: str, probs: torch.Tensor) -> None:
        """One layer's probabilities [b, heads, n, T] for the rows ``rows`` chose."""
        self._collector.add(name, probs, heads=self.layers[name].heads)

    # --- the result ------------------------------------------------------------------------------

    def result(self, token_tables) -> AttentionMaps | None:
        """AttentionMaps of what was recorded (None, with a warning, if nothing was); token_tables: one per prompt."""
        self._collector.end_step()
        collected = self._collector
        if not collected.layer_sizes:
            warnings.warn("no cross-attention was recorded: the UNet was never called inside the recorder, "
                          "or its processors were replaced before it was", AttentionProcessorsReplacedWarning,
                          stacklevel=2)
            return None
        image_size = tuple(s * getattr(self.pipe, "vae_scale_factor", 8) for s in collected.latent_size)
        return AttentionMaps(
            mode=self.mode, keep=self.keep, per_head=self.per_head,
            layer_names=[name for name in self.layers if name in collected.layer_sizes],
            layer_sizes=collected.layer_sizes, layer_heads=collected.layer_heads,
            latent_size=collected.latent_size, image_size=image_size,
            timesteps=list(collected.timesteps),
            maps=collected.result("text"), negative_maps=collected.result("negative"),
            tokens=list(token_tables or []), negative_tokens=self._negative_tables(),
        )

    def _negative_tables(self):
        """Token tables of the negative prompts: the text encoder's last call before the first step."""
        if not self.keep_negative or len(self._text_encoder_ids) < 2:
            return None
        tokenizer = self.pipe.tokenizer
        tables = []
        for ids in self._text_encoder_ids[-1].tolist():
            table = token_table(tokenizer, tokenizer.decode(ids, skip_special_tokens=True), warn=False)
            if [t.id for t in table[:MAX_TOKENS]] != ids[:MAX_TOKENS]:
                return None
            tables.append(table)
        return tables


class _Series:
    """One stream of maps over steps: each step on the CPU in float16, or (keep="summed") their
    running mean in float32 on the device. A step the stream missed is None."""

    def __init__(self, summed: bool):
        self.summed = summed
        self.steps: list[torch.Tensor | None] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def append(self, step: int, value: torch.Tensor | None) -> None:
        if self.summed:
            if value is not None:
                self.total = value.float().clone() if self.total is None else self.total.add_(value.float())
                self.count += 1
            return
        self.steps.extend([None] * (step - len(self.steps)))
        self.steps.append(None if value is None else value.to(torch.float16).contiguous().cpu())

    def values(self, num_steps: int) -> list[torch.Tensor | None]:
        if self.summed:
            return [None if self.total is None else (self.total / self.count).contiguous().cpu()]
        return self.steps + [None] * (num_steps - len(self.steps))


class _Collector:
    """Per-step accumulation: averages on the device as it goes, moves each finished step to the CPU.

    series("text"|"negative"): aggregate → one _Series of [B, T, h, w]; per_layer → a _Series per
    layer of [B, n, T] (per_head: [B, heads, n, T]).
    """

    def __init__(self, mode: str, keep: str, per_head: bool):
        self.mode, self.summed, self.per_head = mode, keep == "summed", per_head
        self.timesteps: list[float] = []
        self.latent_size: tuple[int, int] | None = None
        self.layer_sizes: dict[str, tuple[int, int]] = {}
        self.layer_heads: dict[str, int] = {}
        self._series: dict[str, dict[str, _Series]] = {}
        self._guided = self._split = self._open = False
        self._sums: dict[tuple[int, int], torch.Tensor] = {}  # aggregate: this step's sum per grid [b, n, T]
        self._count = 0
        self._layers: dict[str, torch.Tensor] = {}  # per_layer: this step's maps

    def start_step(self, timestep: float, latent_size: tuple[int, int], guided: bool) -> None:
        self.end_step()
        if self.latent_size not in (None, latent_size):
            raise RuntimeError(f"the latent size changed from {self.latent_size} to {latent_size} between UNet calls; "
                               "trace one image size per run")
        self.latent_size, self._guided, self._open = latent_size, guided, True
        self.timesteps.append(timestep)

    def rows(self, batch: int, keep_negative: bool) -> slice | None:
        if not self._open:
            return None
        self._split = self._guided and keep_negative and batch % 2 == 0
        return slice(batch // 2, None) if self._guided and not keep_negative and batch % 2 == 0 else slice(None)

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        size = layer_grid(probs.shape[2], self.latent_size)
        self.layer_sizes.setdefault(name, size)
        self.layer_heads.setdefault(name, heads)
        if self.mode == "per_layer":
            self._layers[name] = probs if self.per_head else probs.mean(1, dtype=torch.float32)
            return
        heads_mean = probs.mean(1, dtype=torch.float32)  # [b, n, T]
        self._sums[size] = heads_mean if size not in self._sums else self._sums[size].add_(heads_mean)
        self._count += 1

    def _step_mean(self) -> torch.Tensor | None:
        """aggregate: this step's mean over layers [b, T, h, w] at the latent size. Layers of one grid are
        summed first and upsampled once (bilinear upsampling is linear, so this is the mean of the upsampled maps)."""
        total = None
        for size, summed in self._sums.items():
            grid = summed.transpose(1, 2).reshape(summed.shape[0], summed.shape[2], *size)
            if size != self.latent_size:
                grid = F.interpolate(grid, size=self.latent_size, mode="bilinear", align_corners=False)
            total = grid if total is None else total.add_(grid)
        return None if total is None else total / self._count

    def end_step(self) -> None:
        """Close the current step: move its maps to the CPU (or into the running mean)."""
        if not self._open:
            return
        self._open, step = False, len(self.timesteps) - 1
        if self.mode == "aggregate":
            self._append("all", step, self._step_mean())
        else:
            for name in self.layer_sizes:
                self._append(name, step, self._layers.get(name))
        self._sums, self._count, self._layers = {}, 0, {}

    def _append(self, key: str, step: int, value: torch.Tensor | None) -> None:
        halves = dict(zip(("negative", "text"), value.chunk(2))) if value is not None and self._split \
            else {"text": value}
        for half in ("text", "negative"):
            if half in halves or half in self._series:
                series = self._series.setdefault(half, {}).setdefault(key, _Series(self.summed))
                series.append(step, halves.get(half))

    def result(self, half: str):
        """aggregate: list over steps of [B, T, h, w]; per_layer: {layer: list over steps}; None if never kept."""
        if half not in self._series:
            return None
        values = {key: series.values(len(self.timesteps)) for key, series in self._series[half].items()}
        return values.get("all") if self.mode == "aggregate" else values


def _timestep(timestep) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0].item())
    return float(timestep)


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _select_layers(available: dict, wanted) -> dict:
    if not available:
        raise ValueError("this UNet has no cross-attention (attn2) layers: "
                         "there is no attention over the prompt to record")
    if wanted is None:
        return available
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [name for name in wanted if name not in available]
    if unknown or not wanted:
        raise ValueError(f"unknown cross-attention layer(s) {unknown}; this UNet has: {', '.join(available)}")
    return {name: layer for name, layer in available.items() if name in wanted}
