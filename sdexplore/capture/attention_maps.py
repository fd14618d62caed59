"""Attention maps of a traced run, read per token, word, step range, layer and head.

Every image→text map is a probability over the text sequence the denoiser attends to (SD1/2/SDXL:
77 CLIP positions; SD3: 77 CLIP then 256 T5 positions; Flux: 512 T5 positions): start tokens, the
words' sub-word tokens, end tokens and padding. The start and end/padding tokens usually take most
of the attention; ``token_share`` shows how much, instead of hiding them. Joint-attention models
also give text→text maps (``text_attention``), and any model image→image maps of query patches
recorded on request (``self_attention_map``).

Shapes: B images (prompts x images per prompt), T text positions, h x w the grid of image tokens
(the latent for UNets, the latent's 2x2 patches for SD3 and Flux), a layer's own grid hl x wl
(SD1.5 at 512²: 64, 32, 16, 8), S steps, P recorded patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..prompts import Token, word_positions

FORMAT_VERSION = 2


class AttentionMaps:
    """The attention maps kept by ``sdexplore.trace(..., attention=...)`` (or ``AttentionRecorder.result``).

    maps: mode "aggregate" → list over kept steps of [B, T, h, w] (layers and heads averaged);
    mode "per_layer" → {layer: list over kept steps of [B, n, T]} (n = hl·wl; per_head:
    [B, heads, n, T]). keep "summed" keeps one entry, the mean over the steps. None = not recorded.
    """

    def __init__(self, *, mode: str, keep: str, per_head: bool, layer_names: list[str],
                 layer_sizes: dict, layer_heads: dict, latent_size, image_size, timesteps: list[float],
                 maps, negative_maps=None, tokens=(), negative_tokens=None, text_to_text=None,
                 image_to_image=None, patches=()):
        self.mode, self.keep, self.per_head = mode, keep, bool(per_head)
        self.layer_names = list(layer_names)
        self.layer_sizes = {name: tuple(layer_sizes[name]) for name in self.layer_names}
        self.layer_heads = {name: int(layer_heads[name]) for name in self.layer_names}
        self.latent_size, self.image_size = tuple(latent_size), tuple(image_size)
        self.timesteps = [float(t) for t in timesteps]
        self.tokens = [list(table) for table in tokens]
        self.negative_tokens = None if negative_tokens is None else [list(t) for t in negative_tokens]
        self._data = {"text": maps, "negative": negative_maps}
        self._relations = {"text_to_text": text_to_text, "image_to_image": image_to_image}
        self.patches = [tuple(p) for p in patches]

    # --- what is there --------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """S, the denoising steps recorded (denoiser calls)."""
        return len(self.timesteps)

    @property
    def has_negative(self) -> bool:
        """Whether the negative/unconditional half of the CFG batch was kept (keep_negative=True)."""
        return self._data["negative"] is not None

    @property
    def batch_size(self) -> int:
        return next(t for t in self._entries("text") if t is not None).shape[0]

    @property
    def num_tokens(self) -> int:
        first = next(t for t in self._entries("text") if t is not None)
        return first.shape[1] if self.mode == "aggregate" else first.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept maps."""
        maps = sum(t.nbytes for half in self._data for t in self._entries(half) if t is not None)
        return maps + sum(t.nbytes for steps in self._relations.values() if steps for t in steps if t is not None)

    def layers_at(self, size) -> list[str]:
        """Names of the layers whose grid is ``size`` (an int for square grids, or (hl, wl))."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        names = [name for name, grid in self.layer_sizes.items() if grid == size]
        if not names:
            sizes = sorted(set(self.layer_sizes.values()), reverse=True)
            raise ValueError(f"no cross-attention layer works at {size[0]}x{size[1]}; "
                             f"the layers' sizes are: {', '.join(f'{h}x{w}' for h, w in sizes)}")
        return names

    # --- maps at the latent resolution ------------------------------------------------------

    def token_maps(self, steps=None, layers=None, *, negative: bool = False) -> torch.Tensor:
        """[B, T, h, w]: every token's map, heads and the chosen layers and steps averaged.

        Renormalised so the T tokens sum to 1 at each position. steps: None (all), an int, a
        slice/range or a list; layers: None (all), a name or a list of names (see layers_at).
        """
        return _renormalise(self._mean_maps(self._step_indices(steps), layers, negative))

    def step_maps(self, steps=None, layers=None, *, negative: bool = False) -> torch.Tensor:
        """[S', B, T, h, w]: token_maps of each chosen step, one after the other."""
        indices = self._step_indices(steps, per_step=True)
        return torch.stack([_renormalise(self._mean_maps([i], layers, negative)) for i in indices])

    def layer_maps(self, layers=None, steps=None, *, negative: bool = False) -> torch.Tensor:
        """[L, B, T, h, w]: each chosen layer's maps upsampled to the latent size (mode "per_layer")."""
        names = self._layer_names(layers, need_layers=True)
        indices = self._step_indices(steps)
        return torch.stack([_renormalise(self._upsampled(name, indices, negative)) for name in names])

    def token_map(self, position: int, steps=None, layers=None, *, negative: bool = False,
                  normalize: bool = False) -> torch.Tensor:
        """[B, h, w]: the map of the token at ``position`` (0 = start token, then the words, end, padding)."""
        maps = self.token_maps(steps, layers, negative=negative)
        result = maps[:, self._position(position, maps.shape[1])]
        return self.normalize(result) if normalize else result

    def word_map(self, word: str, steps=None, layers=None, *, negative: bool = False,
                 normalize: bool = False, encoder: str | None = None) -> torch.Tensor:
        """[B, h, w]: a word's map, the sum of its sub-word tokens' maps (all its occurrences; with
        ``encoder`` ("clip" or "t5"), only those in that encoder's positions of the text sequence)."""
        maps = self.token_maps(steps, layers, negative=negative)
        result = torch.stack([maps[b, self.word_positions(word, b, negative=negative, encoder=encoder)].sum(0)
                              for b in range(maps.shape[0])])
        return self.normalize(result) if normalize else result

    def token_share(self, steps=None, layers=None, *, negative: bool = False) -> torch.Tensor:
        """[B, T]: the share of all attention each token takes (the start and padding tokens take most)."""
        return self.token_maps(steps, layers, negative=negative).mean(dim=(-2, -1))

    # --- text→text and image→image -------------------------------------------------------------

    def text_attention(self, steps=None) -> torch.Tensor:
        """[B, T, T]: text→text maps of the joint layers (row: a text query; it sums to 1 over the text keys),
        layers averaged, the chosen steps averaged. Recorded with text_to_text=True."""
        data = self._relation("text_to_text", "attention_options={'text_to_text': True} (SD3, Flux)")
        mean = _mean_of([data[i] for i in self._step_indices(steps)])
        return mean / mean.sum(-1, keepdim=True)

    def self_attention_map(self, patch, steps=None) -> torch.Tensor:
        """[B, h, w]: where the image token at ``patch`` = (y, x) on the grid looks (its self-attention over the
        image, layers averaged; sums to 1). Recorded with self_attention_patches=[(y, x), ...]."""
        data = self._relation("image_to_image", "attention_options={'self_attention_patches': [(y, x)]}")
        patch = tuple(patch)
        if patch not in self.patches:
            raise ValueError(f"patch {patch} was not recorded; this trace recorded self-attention of the patches "
                             f"{self.patches}")
        mean = _mean_of([data[i] for i in self._step_indices(steps)])[:, self.patches.index(patch)]
        return mean / mean.sum(dim=(-2, -1), keepdim=True)

    @property
    def relations(self) -> list[str]:
        """The relations recorded: "image_to_text" and, where asked, "text_to_text", "image_to_image"."""
        return ["image_to_text"] + [key for key, data in self._relations.items() if data is not None]

    def _relation(self, key: str, how: str):
        data = self._relations[key]
        if data is None:
            raise ValueError(f"{key.replace('_to_', '→')} maps were not recorded; trace with {how}")
        return data

    # --- one layer at its own resolution ------------------------------------------------------

    def layer_map(self, name: str, step=None, *, negative: bool = False) -> torch.Tensor:
        """[B, hl, wl, T]: head-averaged probabilities of one layer at ``step`` (None: mean over steps)."""
        maps = self._layer_steps(name, step, negative)
        return maps.mean(1) if self.per_head else maps

    def head_maps(self, name: str, step=None, *, negative: bool = False) -> torch.Tensor:
        """[B, heads, hl, wl, T]: every head of one layer (traced with per_head=True)."""
        if not self.per_head:
            raise ValueError("heads were averaged while recording; trace with attention='per_layer' and "
                             "attention_options={'per_head': True} to keep them")
        return self._layer_steps(name, step, negative)

    # --- tokens and words ---------------------------------------------------------------------

    def token_table(self, prompt_index: int = 0, *, negative: bool = False) -> list[Token]:
        """The token table behind batch image ``prompt_index`` (prompts repeat for several images each)."""
        tables = self.negative_tokens if negative else self.tokens
        if not tables:
            what = "negative prompt" if negative else "prompt"
            raise ValueError(f"the {what}'s tokens are not known (it was given as embeddings); "
                             "use token_map(position) instead of words")
        batch = self.batch_size
        if not 0 <= prompt_index < batch:
            raise IndexError(f"image {prompt_index} does not exist: the batch has {batch} (0..{batch - 1})")
        return tables[prompt_index * len(tables) // batch]

    def token_labels(self, prompt_index: int = 0, *, negative: bool = False) -> list[str]:
        """T short labels ("0 <start>", "1 cat", ..., "5 <end>", "6 <pad>") for plots."""
        names = {"start": "<start>", "end": "<end>", "padding": "<pad>"}
        table = self.token_table(prompt_index, negative=negative)[: self.num_tokens]
        return [f"{t.position} {names.get(t.kind, t.text.removesuffix('</w>'))}" for t in table]

    def word_positions(self, word: str, prompt_index: int = 0, *, negative: bool = False,
                       encoder: str | None = None) -> list[int]:
        """Positions of ``word``'s sub-word tokens (of one ``encoder``'s rows if given); ValueError listing the
        prompt's words if absent, or the encoders there are."""
        table = self.token_table(prompt_index, negative=negative)
        if encoder is not None:
            encoders = sorted({getattr(t, "encoder", None) or "clip" for t in table})
            table = [t for t in table if (getattr(t, "encoder", None) or "clip") == encoder]
            if not table:
                raise ValueError(f"encoder must be one of {', '.join(map(repr, encoders))} (the encoders whose "
                                 f"tokens the denoiser attends to), got {encoder!r}")
        try:
            return word_positions(table, word)
        except ValueError as error:
            if self.batch_size == 1:
                raise
            raise ValueError(f"image {prompt_index}: {error}") from None

    # --- for pictures -------------------------------------------------------------------------

    def upsample(self, maps: torch.Tensor, size=None) -> torch.Tensor:
        """[..., H, W]: maps [..., h, w] resized (bilinear) to ``size``, by default the image size."""
        size = self.image_size if size is None else ((size, size) if isinstance(size, int) else tuple(size))
        flat = maps.float().reshape(-1, 1, *maps.shape[-2:])
        return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*maps.shape[:-2], *size)

    @staticmethod
    def normalize(maps: torch.Tensor) -> torch.Tensor:
        """[..., h, w] scaled to [0, 1] per map (min to 0, max to 1), for display."""
        low = maps.amin(dim=(-2, -1), keepdim=True)
        high = maps.amax(dim=(-2, -1), keepdim=True)
        return (maps - low) / (high - low).clamp_min(1e-12)

    # --- saving -------------------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for the trace file: "maps" [S, B, T, h, w] or "layers.<name>" [S, B, ...]."""
        tensors = {}
        for half, prefix in (("text", ""), ("negative", "negative_")):
            data = self._data[half]
            if data is None:
                continue
            if self.mode == "aggregate":
                tensors[f"{prefix}maps"] = _stack(data)
            else:
                tensors.update({f"{prefix}layers.{name}": _stack(steps) for name, steps in data.items()})
        tensors.update({key: _stack(data) for key, data in self._relations.items() if data is not None})
        return tensors

    def to_metadata(self) -> dict:
        """JSON-safe description (the tensors' meaning) for the trace file."""
        tables = None if self.negative_tokens is None else [[t.to_dict() for t in tab] for tab in self.negative_tokens]
        return {
            "format_version": FORMAT_VERSION, "mode": self.mode, "keep": self.keep, "per_head": self.per_head,
            "layer_names": self.layer_names, "layer_sizes": {n: list(s) for n, s in self.layer_sizes.items()},
            "layer_heads": self.layer_heads, "latent_size": list(self.latent_size),
            "image_size": list(self.image_size), "timesteps": self.timesteps, "negative_tokens": tables,
            "patches": [list(p) for p in self.patches],
        }

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], metadata: dict, tokens) -> "AttentionMaps":
        """Rebuild from ``to_tensors``/``to_metadata`` output; tokens: the trace's token tables."""
        data = {}
        for half, prefix in (("text", ""), ("negative", "negative_")):
            if metadata["mode"] == "aggregate":
                data[half] = _unstack(tensors[f"{prefix}maps"]) if f"{prefix}maps" in tensors else None
            else:
                layers = {name: _unstack(tensors[f"{prefix}layers.{name}"]) for name in metadata["layer_names"]
                          if f"{prefix}layers.{name}" in tensors}
                data[half] = layers or None
        negative_tokens = metadata.get("negative_tokens")
        return cls(
            mode=metadata["mode"], keep=metadata["keep"], per_head=metadata["per_head"],
            layer_names=metadata["layer_names"], layer_sizes=metadata["layer_sizes"],
            layer_heads=metadata["layer_heads"], latent_size=metadata["latent_size"],
            image_size=metadata["image_size"], timesteps=metadata["timesteps"],
            maps=data["text"], negative_maps=data["negative"], tokens=tokens,
            negative_tokens=None if negative_tokens is None else [[Token(**r) for r in t] for t in negative_tokens],
            text_to_text=_unstack(tensors["text_to_text"]) if "text_to_text" in tensors else None,
            image_to_image=_unstack(tensors["image_to_image"]) if "image_to_image" in tensors else None,
            patches=metadata.get("patches", []),
        )

    def __repr__(self) -> str:
        h, w = self.latent_size
        return (f"AttentionMaps(mode={self.mode!r}, keep={self.keep!r}, steps={self.num_steps}, "
                f"layers={len(self.layer_names)}, batch={self.batch_size}, latent={h}x{w}, "
                f"negative={self.has_negative}, per_head={self.per_head})")

    # --- internals ----------------------------------------------------------------------------

    def _entries(self, half: str) -> list:
        data = self._data[half]
        if data is None:
            return []
        return data if self.mode == "aggregate" else [t for steps in data.values() for t in steps]

    def _half(self, negative: bool):
        if negative and not self.has_negative:
            raise ValueError("the negative-prompt half was not kept; trace with "
                             "attention_options={'keep_negative': True} (and guidance_scale > 1) to keep it")
        return self._data["negative" if negative else "text"]

    def _step_indices(self, steps, per_step: bool = False) -> list[int]:
        """Indices into the kept steps; IndexError naming the steps that exist."""
        if self.keep == "summed":
            if steps is not None or per_step:
                raise ValueError(f"this trace kept only the mean over its {self.num_steps} steps (keep='summed'); "
                                 "trace with keep='per_step' to look at single steps")
            return [0]
        count = self.num_steps
        if steps is None:
            return list(range(count))
        if isinstance(steps, slice):
            return list(range(count))[steps] or _no_steps(steps, count)
        items = [steps] if isinstance(steps, int) else list(steps)
        for step in items:
            if isinstance(step, bool) or not isinstance(step, int) or not -count <= step < count:
                raise IndexError(f"step {step!r} does not exist: this trace has {count} steps "
                                 f"(0..{count - 1}, or -1..-{count} from the end)")
        return [step % count for step in items] or _no_steps(steps, count)

    def _layer_names(self, layers, need_layers: bool = False) -> list[str]:
        names = [layers] if isinstance(layers, str) else list(self.layer_names if layers is None else layers)
        unknown = [name for name in names if name not in self.layer_sizes]
        if unknown or not names:
            raise ValueError(f"unknown cross-attention layer(s) {unknown}; "
                             f"this trace has: {', '.join(self.layer_names)}")
        if self.mode == "aggregate" and (need_layers or set(names) != set(self.layer_names)):
            raise ValueError("this trace averaged the layers while recording (attention='aggregate'); trace with "
                             "attention='per_layer' to look at layers, or choose them before the run with "
                             "attention_options={'layers': [...]}")
        return names

    def _mean_maps(self, indices: list[int], layers, negative: bool) -> torch.Tensor:
        """[B, T, h, w] float32: the chosen steps (and layers) averaged, not yet renormalised."""
        names = self._layer_names(layers)
        if self.mode == "aggregate":
            return _mean_of([self._half(negative)[i] for i in indices])
        return torch.stack([self._upsampled(name, indices, negative) for name in names]).mean(0)

    def _upsampled(self, name: str, indices: list[int], negative: bool) -> torch.Tensor:
        """[B, T, h, w]: one layer's head-averaged map, mean over steps, at the latent size."""
        from .attention import upsample_layer_maps  # the one layer→grid resize (attention.py imports this module)

        return upsample_layer_maps(self._layer_grid(name, indices, negative), self.latent_size)

    def _layer_grid(self, name: str, indices: list[int], negative: bool) -> torch.Tensor:
        """[B, T, hl, wl]: one layer's head-averaged map, mean over the chosen steps."""
        steps = self._half(negative)[name]
        mean = _mean_of([steps[i] for i in indices])
        if self.per_head:
            mean = mean.mean(1)
        return mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], *self.layer_sizes[name])

    def _layer_steps(self, name: str, step, negative: bool) -> torch.Tensor:
        """[B, (heads,) hl, wl, T] of one layer, at one step or averaged over all."""
        if self.mode != "per_layer":
            raise ValueError("this trace averaged the layers while recording (attention='aggregate'); "
                             "trace with attention='per_layer' to read single layers")
        self._layer_names(name)
        mean = _mean_of([self._half(negative)[name][i] for i in self._step_indices(step)])
        return mean.reshape(*mean.shape[:-2], *self.layer_sizes[name], mean.shape[-1])

    def _position(self, position: int, count: int) -> int:
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < count:
            raise IndexError(f"token position {position!r} does not exist: the denoiser attends to {count} text "
                             f"positions, 0..{count - 1} (its token table says which token each one is)")
        return position


def layer_grid(queries: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """(hl, wl) of a layer with ``queries`` positions: the latent grid halved (rounding up) k times."""
    h, w = latent_size
    while h * w > queries:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != queries:
        raise ValueError(f"a cross-attention layer has {queries} query positions, which is no downsampling of "
                         f"the {latent_size[0]}x{latent_size[1]} latent")
    return h, w


def _renormalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale [B, T, h, w] so the T tokens sum to 1 at each position (float16 rounding undone)."""
    return maps / maps.sum(dim=1, keepdim=True)


def _mean_of(entries: list) -> torch.Tensor:
    """float32 mean of the entries that were recorded (None: a step a layer missed)."""
    present = [t for t in entries if t is not None]
    if not present:
        raise ValueError("nothing was recorded at the chosen steps (the processors were replaced during the run)")
    total = present[0].float().clone()
    for tensor in present[1:]:
        total += tensor
    return total / len(present)


def _no_steps(steps, count: int):
    raise IndexError(f"steps {steps!r} select no step: this trace has {count} steps (0..{count - 1})")


def _stack(steps: list) -> torch.Tensor:
    """[S, ...] with NaN for steps not recorded."""
    shape, dtype = next((t.shape, t.dtype) for t in steps if t is not None)
    return torch.stack([torch.full(shape, float("nan"), dtype=dtype) if t is None else t for t in steps])


def _unstack(stacked: torch.Tensor) -> list:
    return [None if torch.isnan(t).all() else t for t in stacked.unbind(0)]
