"""Record attention maps over the denoiser's text sequence while a pipeline runs (SD1/2, SDXL, SD3, Flux).

``AttentionRecorder`` registers torch forward pre-hooks (with kwargs) on the denoiser (``pipe.unet``
or ``pipe.transformer``: one call = one step) and on its attention modules. It never replaces a
processor: the processor in place (SDPA, sliced, xformers, IP-Adapter, custom diffusion, the user's
own) computes the output untouched, so a traced picture is the untraced picture. Each hook
recomputes the layer's queries and keys from its own projections, norms and rotary embedding
(attention_processor.py) for the batch rows wanted and keeps, on the device:

- image→text: softmax(Q_image·K_textᵀ·scale) over the text sequence the denoiser attends to (SD1/2/SDXL:
  77 CLIP positions; SD3: 77 CLIP then 256 T5 positions; Flux: 512 T5 positions). A joint layer attends
  to image and text keys at once; its image→text map is its probabilities restricted to the text keys and
  renormalised over them (the relative weights are exactly the layer's);
- text→text (joint layers, ``text_to_text=True``): the text queries over the text keys, renormalised;
- image→image (``self_attention_patches=[(y, x), ...]``): each patch's query over the image keys of every
  self/joint attention layer, upsampled to the grid and averaged over layers.

Memory is computed, not guessed (attention_memory.py; the table in the README). With B images, S steps,
T text positions, a grid of h x w image tokens: mode="aggregate", keep="per_step" keeps S·B·T·h·w·2 bytes
(float16 on the CPU); keep="summed" B·T·h·w·4; mode="per_layer" S·B·T·2·Σ(hl·wl) (times each layer's heads
with per_head=True). The device holds one float32 sum per grid plus one layer's probabilities (aggregate: the
queries and keys of a few layers of one shape, whose probabilities are computed together once they would take
``BATCHED_LOGITS_BYTES``, or at the step's end: fewer, larger kernels for a GPU to launch). A run that
would keep more than ``max_bytes`` (default 2 GiB) is refused at the first denoiser call, before any step,
with the modes that fit. A layer whose probabilities cannot be recomputed exactly is an
UncapturableAttentionError naming it and its processor, never a silently incomplete map.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..prompts import MAX_TOKENS, token_table
from .attention_maps import AttentionMaps, layer_grid
from .attention_memory import (
    BATCHED_LOGITS_BYTES,
    DEFAULT_MAX_BYTES,
    TEXT_KINDS,
    Capture,
    attention_plan,
    describe_bytes,
    kept_bytes,
)
from .attention_processor import (
    UncapturableAttentionError,
    attention_layers,
    bind_inputs,
    mask_block,
    probabilities,
    queries_and_keys,
    reads_projections,
    uncapturable_reason,
)

__all__ = ["AttentionCaptureTooLargeError", "AttentionMaps", "AttentionRecorder", "UncapturableAttentionError",
           "upsample_layer_maps"]

MODES = ("aggregate", "per_layer")
KEEPS = ("per_step", "summed")


class AttentionCaptureTooLargeError(MemoryError):
    """A run would keep more attention maps than the budget (max_bytes) allows."""


def upsample_layer_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[b, C, hl, wl] → [b, C, h, w]: a layer's maps on the image-token grid (the one place layers are resized
    to the grid). Bicubic, as DAAM, with its undershoot below 0 clipped: on the toy gate's 32 scenes the word
    maps' IoU with the object went from 0.714 (bilinear) to 0.743, 0.638 → 0.691 at a 40% threshold (on the toy
    model shipped then)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    rows = bicubic_matrix(maps.shape[-2], size[0], maps.device, maps.dtype)  # [h, hl]
    columns = bicubic_matrix(maps.shape[-1], size[1], maps.device, maps.dtype)  # [w, wl]
    return (rows @ maps @ columns.T).clamp_min_(0)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n_out, n_in]: torch's bicubic resize (align_corners=False) along one axis as a matrix.

    torch's 2-D bicubic is separable (weights w(y)·w(x), borders clamped per axis), so resizing maps [.., hl, wl]
    as rows @ maps @ columnsᵀ equals F.interpolate(mode="bicubic") to float rounding (≤ 4e-7 on maps in [0, 1]),
    at a third to a seventh of its time on the CPU, where torch's bicubic kernel is slow on many small maps."""
    identity = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
    resized = F.interpolate(identity, size=(n_out, 1), mode="bicubic", align_corners=False)
    return resized.reshape(n_in, n_out).T.to(device=device, dtype=dtype).contiguous()


class AttentionRecorder:
    """Context manager recording the attention of the pipeline calls inside it (see the module docstring).

    mode: "aggregate" (layers upsampled to the grid and averaged as they come) or "per_layer" (every layer at
      its own resolution); keep: "per_step" (one map per step) or "summed" (the average over all steps);
    layers: diffusers names of the layers to record image→text from (default: all cross/joint/single ones);
    keep_negative: also keep the negative/unconditional half of a classifier-free-guidance batch;
    per_head: keep every head apart (mode="per_layer" only);
    text_to_text: also keep text→text maps of joint layers (SD3, Flux), layers averaged;
    self_attention_patches: (y, x) positions on the grid whose image→image maps to keep, layers averaged;
    max_bytes: refuse a run that would keep more than this (default 2 GiB);
    trusted_processors: processor classes of your own whose attention is softmax(Q·Kᵀ·scale) of the
      module's own projections (diffusers' standard processors are known already).
    """

    def __init__(self, pipe, mode: str = "aggregate", *, keep: str = "per_step", layers=None,
                 keep_negative: bool = False, per_head: bool = False, text_to_text: bool = False,
                 self_attention_patches=None, max_bytes: int = DEFAULT_MAX_BYTES, trusted_processors=()):
        _check_choice("mode", mode, MODES)
        _check_choice("keep", keep, KEEPS)
        if per_head and mode != "per_layer":
            raise ValueError("per_head=True keeps each layer's heads apart: use it with attention='per_layer' "
                             "(layers have different numbers of heads, so heads cannot be averaged across layers)")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        self.pipe = pipe
        self.denoiser = _denoiser(pipe)
        _refuse_compiled(self.denoiser)
        self.mode, self.keep, self.keep_negative, self.per_head = mode, keep, bool(keep_negative), bool(per_head)
        self.text_to_text, self.max_bytes = bool(text_to_text), max_bytes
        self.patches = _check_patches(self_attention_patches)
        self.trusted = tuple(trusted_processors)
        self.all_layers = attention_layers(self.denoiser)
        self.layers = _select_layers({n: la for n, la in self.all_layers.items() if la.kind in TEXT_KINDS}, layers,
                                     "UNet" if self.denoiser is getattr(pipe, "unet", None) else "transformer")
        self.self_layers = {n: la for n, la in self.all_layers.items() if la.has_image_self_attention} \
            if self.patches else {}
        self._check_text_to_text()
        self._handles: list = []
        self._text_encoder_ids: list[torch.Tensor] = []
        self._collector = _Collector(mode, keep, per_head)
        self._owner: int | None = None
        self._denoiser_signature: inspect.Signature | None = None  # bound once, on the first call
        self._text_length: int | None = None
        self._scheduler_step: int | None = None  # the scheduler's step_index when the current step began
        # steps_taken() -> scheduler steps made so far (set by tracing() from its step recorder): tells a second
        # denoiser call of one step from a new step without reading the timestep's value (a device sync)
        self.steps_taken: Callable[[], int] | None = None
        self._steps_at_step_start: int | None = None
        self._pixels_per_token = 1
        self._capturable: dict[type, str | None] = {}  # processor class → why it cannot be captured (None: it can)

    @property
    def num_steps(self) -> int:
        """Denoiser calls recorded as steps (the step recorder's count should equal it)."""
        return len(self._collector.timesteps)

    # --- installing and removing -------------------------------------------------------------

    def __enter__(self) -> "AttentionRecorder":
        self._owner = threading.get_ident()  # calls from other threads pass through unrecorded
        self._check_capturable()
        try:
            self._handles.append(self.denoiser.register_forward_pre_hook(self._before_denoiser, with_kwargs=True))
            for layer in {**self.layers, **self.self_layers}.values():
                hook = _LayerHook(self, layer)
                if reads_projections(layer) and layer.name not in self.self_layers:
                    self._handles += hook.read_projections()  # after the call: no pre-hook needed
                else:
                    self._handles.append(layer.module.register_forward_pre_hook(hook, with_kwargs=True))
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

    def _check_capturable(self) -> None:
        problems = [f"{layer.name} ({type(layer.processor).__name__}): {reason}"
                    for layer in {**self.layers, **self.self_layers}.values()
                    if (reason := uncapturable_reason(layer, self.trusted))]
        if problems:
            raise UncapturableAttentionError(f"{len(problems)} attention layer(s) cannot be captured exactly:\n  "
                                             + "\n  ".join(problems))

    def _check_text_to_text(self) -> None:
        if self.text_to_text and not any(la.kind in ("joint", "single") for la in self.layers.values()):
            raise ValueError("text_to_text=True needs joint attention (SD3, Flux); this denoiser's text layers are "
                             "cross-attention only, where the text never attends to itself")

    # --- what the hooks call ---------------------------------------------------------------------

    def _before_denoiser(self, module, args, kwargs):
        if threading.get_ident() != self._owner:
            return None
        if self._denoiser_signature is None:
            self._denoiser_signature = inspect.signature(module.forward)
        inputs = bind_inputs(module, args, kwargs, self._denoiser_signature)
        sample = inputs.get("sample", inputs.get("hidden_states"))
        grid, self._pixels_per_token = _token_grid(module, sample, inputs)
        text = inputs.get("encoder_hidden_states")
        self._text_length = None if text is None else int(text.shape[1])
        if not self._collector.timesteps:
            _check_patches_inside(self.patches, grid)
            self._guard(sample.shape[0], grid)
        timestep = inputs.get("timestep")
        if self._collector.timesteps and self._same_step(timestep):
            # a second call before the scheduler stepped (Flux's true-CFG negative call, SD3's skip-layer
            # guidance): the step keeps the first call's maps, the prompt's; this call is not recorded. Heun-type
            # schedulers call again at the same timestep *after* a step, PNDM twice at one timestep with a step
            # between: steps of their own.
            self._collector.end_step()
            return None
        self._scheduler_step = getattr(self.pipe.scheduler, "step_index", None)
        self._steps_at_step_start = self.steps_taken() if self.steps_taken is not None else None
        self._collector.start_step(_detached(timestep), grid, self._guided())
        return None

    def _same_step(self, timestep) -> bool:
        """Is this denoiser call part of the step already open? With tracing()'s step recorder: no scheduler step
        was made since that step began. Alone: the same timestep value and scheduler step_index (a scheduler
        without one, such as PNDM, then runs its repeated timestep as one step)."""
        if self.steps_taken is not None:
            return self.steps_taken() == self._steps_at_step_start
        scheduler_step = getattr(self.pipe.scheduler, "step_index", None)  # None where a scheduler keeps none
        same_value = _timestep(timestep) == _timestep(self._collector.timesteps[-1])
        return same_value and scheduler_step == self._scheduler_step

    def _before_text_encoder(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and not self._collector.timesteps:
            self._text_encoder_ids.append(ids.detach().cpu())
        return None

    def _guided(self) -> bool:
        try:
            return bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # outside a pipeline call, or a pipeline without CFG (Flux)
            return False

    def _record(self, layer, args, kwargs, signature=None, projected=None) -> None:
        """One attention call: its queries and keys for the wanted rows, kept as asked. Called before the call
        (queries and keys recomputed from its inputs), or after it with ``projected`` = (to_q's output, to_k's
        output) where the layer's own projections were read (see _LayerHook; None there when the processor did not
        call each once on the whole batch: then recomputed too, from the same inputs)."""
        collector = self._collector
        if threading.get_ident() != self._owner or not collector.is_open:
            return
        processor_type = type(layer.processor)  # it may have been replaced mid-run
        if processor_type not in self._capturable:
            self._capturable[processor_type] = uncapturable_reason(layer, self.trusted)
        reason = self._capturable[processor_type]
        if reason:
            raise UncapturableAttentionError(f"attention layer {layer.name} ({type(layer.processor).__name__}) "
                                             f"cannot be captured exactly: {reason}")
        inputs = bind_inputs(layer.module, args, kwargs, signature)
        batch = inputs["hidden_states"].shape[0]
        rows = collector.rows(batch, self.keep_negative)
        if projected is not None and not (reads_projections(layer) and all(o.shape[0] == batch for o in projected)):
            projected = None
        self._keep_maps(layer, inputs, rows, projected)

    def _keep_maps(self, layer, inputs: dict, rows: slice, projected=None) -> None:
        collector = self._collector
        with torch.no_grad():
            qk = queries_and_keys(layer, inputs, rows, self._text_length, projected)
            lengths = {"image": qk.image_q.shape[2], "text": 0 if qk.text_k is None else qk.text_k.shape[2]}
            if layer.name in self.layers:
                bias = mask_block(qk, "image", "text", lengths)
                if self.mode == "aggregate" and bias is None:  # computed with the other layers of its shape
                    collector.add_later(layer.name, qk.image_q, qk.text_k, qk.scale, layer.heads)
                else:
                    collector.add(layer.name, probabilities(qk.image_q, qk.text_k, qk.scale, bias), layer.heads)
                if self.text_to_text and qk.text_q is not None:
                    text = probabilities(qk.text_q, qk.text_k, qk.scale, mask_block(qk, "text", "text", lengths))
                    collector.add_relation("text_to_text", text.mean(1, dtype=torch.float32))
            if layer.name in self.self_layers:
                self._record_patches(qk, lengths)

    def _record_patches(self, qk, lengths) -> None:
        """image→image: each patch's query row over the layer's image keys, [b, P, hl, wl] upsampled to the grid."""
        grid = self._collector.latent_size
        size = layer_grid(lengths["image"], grid)
        index = torch.tensor([y * size[0] // grid[0] * size[1] + x * size[1] // grid[1] for y, x in self.patches],
                             device=qk.image_q.device)
        bias = mask_block(qk, "image", "image", lengths)
        if bias is not None and bias.shape[-2] != 1:
            bias = bias.index_select(-2, index)
        probs = probabilities(qk.image_q.index_select(2, index), qk.image_k, qk.scale, bias)
        maps = probs.mean(1, dtype=torch.float32).unflatten(-1, size)  # [b, P, hl, wl]
        self._collector.add_relation("image_to_image", upsample_layer_maps(maps, grid))

    def _guard(self, batch: int, grid: tuple[int, int]) -> None:
        """Refuse, before the first step, a run that would keep more than max_bytes."""
        halves = self._guided() and batch % 2 == 0
        rows = batch // 2 if halves and not self.keep_negative else batch
        capture = Capture(mode=self.mode, keep=self.keep, per_head=self.per_head, steps=self._planned_steps(),
                          batch=rows, negative=halves and self.keep_negative, tokens=self._text_length or 0,
                          grid=grid, text_to_text=self.text_to_text,
                          patches=len(self.patches))
        plan = attention_plan(self.denoiser, grid)
        needed = kept_bytes(plan, capture, layers=self.layers)
        if needed <= self.max_bytes:
            return
        fits = [f"{label} keeps {describe_bytes(size)}" for label, size in self._alternatives(plan, capture)
                if size <= self.max_bytes]
        hint = ("These fit: " + "; ".join(fits)) if fits else \
            "No mode fits: record fewer layers (attention_options={'layers': [...]})"
        raise AttentionCaptureTooLargeError(
            f"this attention capture would keep {describe_bytes(needed)} (mode={self.mode!r}, keep={self.keep!r}"
            f"{', per_head=True' if self.per_head else ''}: {capture.steps} steps, {rows} image(s), "
            f"{capture.tokens} text positions, {grid[0]}x{grid[1]} grid, {len(self.layers)} layers), more than "
            f"max_bytes={self.max_bytes} ({describe_bytes(self.max_bytes)}). {hint}; or raise "
            f"attention_options={{'max_bytes': ...}}")

    def _alternatives(self, plan, capture: Capture):
        options = {"attention='aggregate'": dict(mode="aggregate", per_head=False),
                   "attention='aggregate' with keep='summed'": dict(mode="aggregate", keep="summed", per_head=False),
                   "attention='per_layer' without per_head": dict(mode="per_layer", per_head=False),
                   "attention='per_layer' with keep='summed'": dict(mode="per_layer", keep="summed")}
        for label, changes in options.items():
            yield label, kept_bytes(plan, Capture(**{**capture.__dict__, **changes}), layers=self.layers)

    def _planned_steps(self) -> int:
        try:
            return int(self.pipe.num_timesteps)
        except (AttributeError, TypeError):
            return len(getattr(self.pipe.scheduler, "timesteps", None) or [0])

    # --- the result ------------------------------------------------------------------------------

    def result(self, token_tables) -> AttentionMaps | None:
        """AttentionMaps of what was recorded (None if the denoiser never ran); token_tables: one per prompt,
        covering the denoiser's text sequence (rows may carry an ``encoder``: "clip" or "t5")."""
        self._collector.end_step()
        collected = self._collector
        if not collected.layer_sizes:
            return None
        grid = collected.latent_size
        scale = getattr(self.pipe, "vae_scale_factor", 8) * self._pixels_per_token
        return AttentionMaps(
            mode=self.mode, keep=self.keep, per_head=self.per_head,
            layer_names=[name for name in self.layers if name in collected.layer_sizes],
            layer_sizes=collected.layer_sizes, layer_heads=collected.layer_heads,
            latent_size=grid, image_size=(grid[0] * scale, grid[1] * scale),
            timesteps=[_timestep(t) for t in collected.timesteps],  # read after the run: no sync per step
            maps=collected.result("text"), negative_maps=collected.result("negative"),
            tokens=list(token_tables or []), negative_tokens=self._negative_tables(),
            text_to_text=collected.relation("text_to_text"), image_to_image=collected.relation("image_to_image"),
            patches=self.patches,
        )

    def _negative_tables(self):
        """Token tables of the negative prompts: the text encoder's last call before the first step."""
        if not self.keep_negative or len(self._text_encoder_ids) < 2 or self._text_length != MAX_TOKENS:
            return None  # (a text sequence that is not one 77-token CLIP table: by position only)
        tokenizer = self.pipe.tokenizer
        tables = []
        for ids in self._text_encoder_ids[-1].tolist():
            table = token_table(tokenizer, tokenizer.decode(ids, skip_special_tokens=True), warn=False)
            if [t.id for t in table[:MAX_TOKENS]] != ids[:MAX_TOKENS]:
                return None
            tables.append(table)
        return tables


class _LayerHook:
    """The hooks of one attention module: they hand its inputs to the recorder and change nothing.

    Called as a forward pre-hook, it records from the inputs (queries and keys recomputed). With
    ``read_projections`` it instead reads the outputs of the module's to_q and to_k during the call (forward
    hooks on them) and hands them with the inputs to the recorder after the call (a forward hook on the module,
    with its kwargs), so a standard cross-attention layer's queries and keys are not computed twice and the layer
    takes three hook calls a step, not four."""

    def __init__(self, recorder: AttentionRecorder, layer):
        self.recorder, self.layer = recorder, layer
        self.signature = inspect.signature(layer.module.forward)
        self._outputs: dict[str, list[torch.Tensor]] = {"q": [], "k": []}

    def __call__(self, module, args, kwargs):
        self.recorder._record(self.layer, args, kwargs, self.signature)
        return None

    def read_projections(self) -> list:
        """Install the hooks on to_q, to_k and after the module; returns their handles."""
        module = self.layer.module
        return [module.to_q.register_forward_hook(self._projection_hook("q")),
                module.to_k.register_forward_hook(self._projection_hook("k")),
                module.register_forward_hook(self._after_layer, with_kwargs=True)]

    def _projection_hook(self, which: str):
        recorder, outputs = self.recorder, self._outputs

        def keep(module, args, output):
            if recorder._collector.is_open and threading.get_ident() == recorder._owner:
                outputs[which].append(output)
        return keep

    def collect(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(q, k) when to_q and to_k were each called exactly once since the last collect, else None; resets."""
        q, k = self._outputs["q"], self._outputs["k"]
        once = (q[0], k[0]) if len(q) == 1 and len(k) == 1 else None
        q.clear()
        k.clear()
        return once

    def _after_layer(self, module, args, kwargs, output):
        if threading.get_ident() != self.recorder._owner:
            return None  # another thread's call of the same module: its projections were not kept either
        projected = self.collect()
        self.recorder._record(self.layer, args, kwargs, self.signature, projected)
        return None


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
    """Per-step accumulation on the device. aggregate, per_step: each step's layers summed per grid, all
    resized and moved to the CPU once after the run; summed: a running mean; per_layer: each finished step's
    maps to the CPU.

    series("text"|"negative"): aggregate → one _Series of [B, T, h, w]; per_layer → a _Series per
    layer of [B, n, T] (per_head: [B, heads, n, T]); relations ("text_to_text" [B, T, T],
    "image_to_image" [B, P, h, w]) → one _Series each, layers averaged.
    """

    def __init__(self, mode: str, keep: str, per_head: bool):
        self.mode, self.summed, self.per_head = mode, keep == "summed", per_head
        self.timesteps: list = []  # as the denoiser got them (numbers or tensors, read after the run)
        self.latent_size: tuple[int, int] | None = None
        self.layer_sizes: dict[str, tuple[int, int]] = {}
        self.layer_heads: dict[str, int] = {}
        self._series: dict[str, dict[str, _Series]] = {}
        self._guided = self._split = self.is_open = False
        self._sums: dict[tuple, torch.Tensor] = {}  # aggregate: this step's head sums per (grid, heads) [b, n, T]
        self._waiting: dict[tuple, list] = {}  # aggregate: layers' (queries, keys) of one shape, not yet computed
        self._count = 0
        self._unresized: list[tuple[int, dict, int, bool]] = []  # aggregate per_step: (step, sums, count, split)
        self._layers: dict[str, torch.Tensor] = {}  # per_layer: this step's maps
        self._relations: dict[str, list] = {}  # this step's [sum, count] per relation

    def start_step(self, timestep, latent_size: tuple[int, int], guided: bool) -> None:
        self.end_step()
        if self.latent_size not in (None, latent_size):
            raise RuntimeError(f"the latent size changed from {self.latent_size} to {latent_size} between denoiser "
                               "calls; trace one image size per run")
        self.latent_size, self._guided, self.is_open = latent_size, guided, True
        self.timesteps.append(timestep)

    def rows(self, batch: int, keep_negative: bool) -> slice:
        self._split = self._guided and keep_negative and batch % 2 == 0
        return slice(batch // 2, None) if self._guided and not keep_negative and batch % 2 == 0 else slice(None)

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """One layer's image→text probabilities [b, heads, n, T]."""
        size = layer_grid(probs.shape[2], self.latent_size)
        self.layer_sizes.setdefault(name, size)
        self.layer_heads.setdefault(name, heads)
        if self.mode == "per_layer":
            kept = probs if self.per_head else probs.mean(1, dtype=torch.float32)
            self._layers[name] = kept if self.summed else kept.to(torch.float16)  # as kept on the CPU
            return
        self._add_head_sums((size, heads), probs.sum(1, dtype=torch.float32), layers=1)  # [b, n, T]

    def add_later(self, name: str, queries: torch.Tensor, keys: torch.Tensor, scale: float, heads: int) -> None:
        """aggregate: one layer's queries [b, heads, n, d] and keys [b, heads, T, d], kept with the other layers
        of this shape until their logits would take BATCHED_LOGITS_BYTES (or the step ends), then computed as
        one batch: a few kernels for all of them instead of a few per layer."""
        size = layer_grid(queries.shape[2], self.latent_size)
        self.layer_sizes.setdefault(name, size)
        self.layer_heads.setdefault(name, heads)
        key = (size, heads, scale, tuple(queries.shape), tuple(keys.shape), queries.dtype, keys.dtype)
        waiting = self._waiting.setdefault(key, [])
        waiting.append((queries, keys))
        b, _, n, _ = queries.shape
        if len(waiting) * b * heads * n * keys.shape[2] * 4 >= BATCHED_LOGITS_BYTES:
            self._compute_waiting(key)

    def _compute_waiting(self, key: tuple) -> None:
        """softmax(Q·Kᵀ·scale) of the layers waiting under ``key``, summed over layers and heads into the step's
        per-grid sums (divided by the heads and the layer count later, in _resized)."""
        waiting = self._waiting.pop(key)
        size, heads, scale = key[:3]
        with torch.no_grad():
            probs = probabilities(torch.stack([q for q, _ in waiting]), torch.stack([k for _, k in waiting]), scale)
            summed = probs.sum(dim=(0, 2), dtype=torch.float32)  # [L, b, heads, n, T] -> [b, n, T]
        self._add_head_sums((size, heads), summed, layers=len(waiting))

    def _add_head_sums(self, key: tuple, summed: torch.Tensor, layers: int) -> None:
        """Add ``layers`` layers' head sums [b, n, T] to the step's sum for key = (grid, heads); divided by the
        heads and the layer count once, in _resized."""
        self._sums[key] = summed if key not in self._sums else self._sums[key].add_(summed)
        self._count += layers

    def add_relation(self, key: str, maps: torch.Tensor) -> None:
        """One layer's maps of a relation, already on the common shape ([b, T, T] or [b, P, h, w])."""
        if key not in self._relations:
            self._relations[key] = [maps.float().clone(), 1]
        else:
            self._relations[key][0].add_(maps)
            self._relations[key][1] += 1

    def _resized(self, sums: dict, count: int) -> torch.Tensor | None:
        """The mean over layers [..., b, T, h, w] of the layers' head means, from per-grid sums of the layers'
        head sums {((hl, wl), heads): [..., b, n, T]}. Layers of one grid are summed first and upsampled once
        (one resize per grid instead of per layer; bicubic is linear, so this is the mean of the upsampled
        maps but for where the clip at 0 acts)."""
        total = None
        for (size, heads), summed in sums.items():
            grid = upsample_layer_maps(summed.transpose(-2, -1).unflatten(-1, size), self.latent_size)
            total = grid.div_(heads) if total is None else total.add_(grid, alpha=1 / heads)
        return None if total is None else total / count

    def _resize_unresized(self, steps_at_once: int = 8) -> None:
        """aggregate, per_step: resize the steps kept at their layers' grids, several steps per matrix product.

        During the run each step only adds its layers up per grid, on the device; the resize to the latent
        grid and the move to the CPU happen here, once, after the last step (the per-grid sums of a step hold
        at most 1 + 1/4 + 1/16 + ... ≈ 1.33 times the resized maps)."""
        pending, self._unresized = self._unresized, []
        for start in range(0, len(pending), steps_at_once):
            group = pending[start:start + steps_at_once]
            shapes = {tuple((size, tuple(t.shape)) for size, t in sums.items()) for _, sums, _, _ in group}
            if len(shapes) == 1 and next(iter(shapes)):  # the same layers and shapes at every step: stack them
                sums = {size: torch.stack([entry[1][size] for entry in group]) for size in group[0][1]}
                counts = torch.tensor([float(entry[2]) for entry in group], device=next(iter(sums.values())).device)
                means = list((self._resized(sums, 1) / counts.view(-1, 1, 1, 1, 1)).unbind(0))
            else:
                means = [self._resized(sums, count) for _, sums, count, _ in group]
            for (step, _, _, split), mean in zip(group, means):
                self._append("all", step, mean, split)

    def end_step(self) -> None:
        """Close the current step: move its maps to the CPU (or into the running mean)."""
        if not self.is_open:
            return
        for key in list(self._waiting):
            self._compute_waiting(key)
        self.is_open, step = False, len(self.timesteps) - 1
        if self.mode == "aggregate" and not self.summed:
            self._unresized.append((step, self._sums, self._count, self._split))
        elif self.mode == "aggregate":
            self._append("all", step, self._resized(self._sums, self._count))
        else:
            for name in self.layer_sizes:
                self._append(name, step, self._layers.get(name))
        for key, (total, count) in self._relations.items():  # the text half only
            mean = total / count
            self._series.setdefault("text", {}).setdefault(key, _Series(self.summed)).append(
                step, mean.chunk(2)[1] if self._split else mean)
        self._sums, self._count, self._layers, self._relations = {}, 0, {}, {}

    def _append(self, key: str, step: int, value: torch.Tensor | None, split: bool | None = None) -> None:
        split = self._split if split is None else split
        halves = dict(zip(("negative", "text"), value.chunk(2))) if value is not None and split else {"text": value}
        for half in ("text", "negative"):
            if half in halves or (half in self._series and key in self._series[half]):
                series = self._series.setdefault(half, {}).setdefault(key, _Series(self.summed))
                series.append(step, halves.get(half))

    def result(self, half: str):
        """aggregate: list over steps of [B, T, h, w]; per_layer: {layer: list over steps}; None if never kept."""
        self._resize_unresized()
        if half not in self._series:
            return None
        values = {key: series.values(len(self.timesteps)) for key, series in self._series[half].items()
                  if key not in ("text_to_text", "image_to_image")}
        return values.get("all") if self.mode == "aggregate" else values

    def relation(self, key: str):
        """The text half's list over steps of a relation's maps, None if it was not recorded."""
        series = self._series.get("text", {}).get(key)
        return None if series is None else series.values(len(self.timesteps))


def _denoiser(pipe):
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer: there is no denoiser whose "
                     "attention could be recorded")


def _token_grid(denoiser, sample: torch.Tensor, inputs: dict) -> tuple[tuple[int, int], int]:
    """(h, w) of the denoiser's image tokens and the latent pixels per token: a UNet's latent, a transformer's
    patches of it (SD3), or the rows and columns of Flux's packed image ids."""
    if sample.ndim == 4:
        patch = int(getattr(denoiser.config, "patch_size", None) or 1)
        return (sample.shape[-2] // patch, sample.shape[-1] // patch), patch
    ids = inputs.get("img_ids")
    if ids is not None:
        ids = ids[0] if ids.ndim == 3 else ids
        grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        if grid[0] * grid[1] == sample.shape[1]:
            return grid, 2
    raise ValueError(f"cannot tell the image-token grid of {type(denoiser).__name__}'s input {tuple(sample.shape)}: "
                     "expected a [B, C, h, w] latent or packed tokens with img_ids of their rows and columns")


def _detached(timestep):
    """The timestep as the denoiser got it, kept for the run (a tensor stays on its device, unread)."""
    return timestep.detach() if isinstance(timestep, torch.Tensor) else timestep


def _timestep(timestep) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0].item())
    return float(timestep)


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_patches(patches) -> list[tuple[int, int]]:
    if patches is None:
        return []
    items = [patches] if isinstance(patches, tuple) and len(patches) == 2 and isinstance(patches[0], int) \
        else list(patches)
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(v, int) and v >= 0
                                                                          for v in item)):
            raise ValueError(f"self_attention_patches must be (y, x) grid positions such as [(3, 4)], got {item!r}")
    return [tuple(item) for item in items]


def _check_patches_inside(patches, grid) -> None:
    outside = [patch for patch in patches if not (patch[0] < grid[0] and patch[1] < grid[1])]
    if outside:
        raise ValueError(f"self_attention_patches {outside} lie outside the {grid[0]}x{grid[1]} grid of image tokens "
                         f"(y in 0..{grid[0] - 1}, x in 0..{grid[1] - 1})")


def _select_layers(available: dict, wanted, denoiser: str) -> dict:
    if not available:
        raise ValueError(f"this {denoiser} has no cross- or joint-attention layers: "
                         "there is no attention over the prompt to record")
    if wanted is None:
        return available
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [name for name in wanted if name not in available]
    if unknown or not wanted:
        raise ValueError(f"unknown attention layer(s) {unknown}; this {denoiser} has: {', '.join(available)}")
    return {name: layer for name, layer in available.items() if name in wanted}


def _refuse_compiled(denoiser) -> None:
    """A torch.compile-d denoiser never calls hooks added after compilation: its maps would be silently empty."""
    if hasattr(denoiser, "_orig_mod"):
        raise ValueError(
            f"attention cannot be recorded on a torch.compile-d denoiser ({type(denoiser._orig_mod).__name__} "
            "wrapped in OptimizedModule): the compiled graph does not call the hooks the recorder adds to its "
            "attention layers, so the maps would be empty. Trace attention on the uncompiled module (e.g. "
            "pipe.unet = pipe.unet._orig_mod for the run), or trace with attention=False (that works compiled)")
