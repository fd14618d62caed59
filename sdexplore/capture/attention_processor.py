"""The denoiser's attention layers, and their queries and keys recomputed exactly as the model makes them.

Nothing here replaces a processor. ``attention_layers(denoiser)`` finds every attention module
(diffusers' ``Attention`` and the newer ``AttentionModuleMixin`` classes such as ``FluxAttention``)
and says what kind it is:

- "cross": UNet cross-attention (``attn2``): image queries, text keys;
- "joint": joint attention with added projections (SD3's MMDiT, Flux's double-stream blocks):
  image and text tokens projected apart, attended as one sequence ([image, text] in SD3,
  [text, image] in Flux);
- "single": Flux's single-stream blocks: one sequence [text, image], one projection;
- "self": image self-attention (UNet ``attn1``, SD3.5's second attention).

``queries_and_keys(layer, inputs, text_length)`` recomputes, from the module's own ``to_q``/``to_k``/
``add_q_proj``/``add_k_proj``, its group norm and norm of the text, its qk norms and the rotary
embedding it receives (diffusers' public ``apply_rotary_emb``), the queries and keys the
processor uses. A torch forward pre-hook on the module (see attention.py) calls it with the
module's inputs, so the processor in place, whichever it is, still computes the output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

KINDS = ("cross", "joint", "single", "self")

# Processors whose attention is softmax(Q·Kᵀ·scale + mask) of the queries and keys recomputed here
# (by class name, so that a release that drops one breaks nothing; subclasses count too).
STANDARD_PROCESSORS = frozenset({
    "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor", "AttnProcessorNPU",
    "FusedAttnProcessor2_0", "IPAdapterAttnProcessor", "IPAdapterAttnProcessor2_0", "IPAdapterXFormersAttnProcessor",
    "CustomDiffusionAttnProcessor", "CustomDiffusionAttnProcessor2_0", "CustomDiffusionXFormersAttnProcessor",
    "JointAttnProcessor2_0", "FusedJointAttnProcessor2_0", "XFormersJointAttnProcessor",
    "SD3IPAdapterJointAttnProcessor2_0", "FluxAttnProcessor", "FluxAttnProcessor2_0", "FusedFluxAttnProcessor2_0",
    "FluxAttnProcessor2_0_NPU", "FluxIPAdapterAttnProcessor", "FluxIPAdapterJointAttnProcessor2_0",
})


class UncapturableAttentionError(RuntimeError):
    """An attention layer whose probabilities sdexplore cannot compute exactly (named with its processor)."""


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the denoiser. name: diffusers' module name; heads: its head count."""

    name: str
    module: torch.nn.Module
    kind: str
    heads: int

    @property
    def text_first(self) -> bool:
        """Joint sequences: Flux puts the text first ([text, image]), SD3 last ([image, text])."""
        if self.kind == "single":
            return True
        names = " ".join(cls.__name__ for cls in type(self.processor).__mro__)
        if "Flux" in names or "Joint" in names:
            return "Flux" in names
        return not isinstance(self.module, Attention)  # the newer attention classes put the text first

    @property
    def processor(self):
        return getattr(self.module, "processor", None)

    @property
    def has_text(self) -> bool:
        return self.kind != "self"

    @property
    def has_image_self_attention(self) -> bool:
        return self.kind != "cross"


def attention_layers(denoiser) -> dict[str, AttentionLayer]:
    """Every attention module of the denoiser by diffusers name, in forward order (UNets: down, mid, up)."""
    found = [(name, module) for name, module in denoiser.named_modules() if _is_attention(module)]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    ranked = sorted(enumerate(found), key=lambda item: (order.get(item[1][0].split(".")[0], 3), item[0]))
    return {name: AttentionLayer(name, module, _kind(name, module), int(module.heads)) for _, (name, module) in ranked}


def cross_attention_layers(unet) -> dict[str, torch.nn.Module]:
    """The UNet's cross-attention (attn2) modules by diffusers name, in forward order (down, mid, up)."""
    return {name: layer.module for name, layer in attention_layers(unet).items() if layer.kind == "cross"}


def uncapturable_reason(layer: AttentionLayer, trusted: tuple = ()) -> str | None:
    """Why this layer's probabilities cannot be recomputed exactly, or None when they can."""
    module, processor = layer.module, layer.processor
    if getattr(module, "spatial_norm", None) is not None:
        return "it uses a spatial norm (a VAE attention)"
    names = {cls.__name__ for cls in type(processor).__mro__}
    if names & STANDARD_PROCESSORS or any(isinstance(processor, cls) for cls in trusted):
        return None
    return (f"its processor {type(processor).__name__} is not one whose attention is known to be "
            f"softmax(Q·Kᵀ·scale) of the module's own projections; if yours is, name its class in "
            f"attention_options={{'trusted_processors': [{type(processor).__name__}]}}")


def bind_inputs(module: torch.nn.Module, args: tuple, kwargs: dict, signature=None) -> dict:
    """The module's forward arguments by name (hidden_states, encoder_hidden_states, attention_mask, ...);
    signature: inspect.signature(module.forward), when the caller keeps it."""
    signature = signature or inspect.signature(module.forward)
    names = _positional_names(signature)
    if len(args) <= len(names):  # what bind_partial gives for a valid call, without its checks (the call makes them)
        named = dict(zip(names, args))
        named.update(kwargs)
        return named
    named = dict(signature.bind_partial(*args, **kwargs).arguments)
    for parameter in signature.parameters.values():  # **kwargs (whatever its name) flattened in
        if parameter.kind == parameter.VAR_KEYWORD:
            named.update(named.pop(parameter.name, None) or {})
    return named


def _positional_names(signature: inspect.Signature) -> tuple[str, ...]:
    """The names positional arguments bind to, in order (those before any ``*args``)."""
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        names.append(parameter.name)
    return tuple(names)


@dataclass
class QueriesKeys:
    """Per-head queries and keys [b, heads, length, d] of a layer's image and text tokens (text: None when
    the layer has none), and the additive mask bias over the keys as the layer's sequence orders them."""

    image_q: torch.Tensor
    image_k: torch.Tensor
    text_q: torch.Tensor | None
    text_k: torch.Tensor | None
    scale: float
    bias: torch.Tensor | None = None  # [b, 1|heads, Lq|1, Lk] over the layer's own sequence
    text_first: bool = False


# Processors that call the layer's own to_q once on the image tokens and its to_k once on the text (cross-attention):
# their projections' outputs can be read by hooks on to_q / to_k instead of being recomputed.
PROJECTION_READING_PROCESSORS = frozenset({"AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor",
                                           "IPAdapterAttnProcessor", "IPAdapterAttnProcessor2_0"})


def reads_projections(layer: AttentionLayer) -> bool:
    """True when the layer's queries and keys can be taken from its own to_q / to_k calls (see above)."""
    return (layer.kind == "cross" and isinstance(layer.module, Attention)
            and type(layer.processor).__name__ in PROJECTION_READING_PROCESSORS)


def queries_and_keys(layer: AttentionLayer, inputs: dict, rows: slice, text_length: int | None,
                     projected: tuple[torch.Tensor, torch.Tensor] | None = None) -> QueriesKeys:
    """The layer's queries and keys for batch ``rows``: recomputed from its inputs (bind_inputs' dict), or, for a
    cross-attention layer, taken from ``projected`` = (to_q's output [B, n, C], to_k's output [B, T, C]) of
    the call itself."""
    module = layer.module
    heads = layer.heads
    image_k = text_q = text_k = None
    if projected is not None:
        if layer.kind != "cross":
            raise ValueError(f"projections can be reused for cross-attention layers only, not {layer.kind!r}")
        image_q, text_k = (_heads(output[rows], heads) for output in projected)
    else:
        hidden = inputs["hidden_states"][rows]
        if layer.kind in ("cross", "self") and hidden.ndim == 4:  # [b, C, h, w] → [b, n, C]
            hidden = hidden.flatten(2).transpose(1, 2)
        if layer.kind in ("cross", "self") and getattr(module, "group_norm", None) is not None:
            hidden = module.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        to_q, to_k = _projections(layer)
        image_q = _heads(to_q(hidden), heads)  # [b, n, heads, d]
        if layer.kind == "cross":
            text = _text_states(layer, inputs["encoder_hidden_states"])[rows]
            text_k = _heads(to_k(text), heads)
        else:
            image_k = _heads(to_k(hidden), heads)
        if layer.kind == "joint":
            text = inputs["encoder_hidden_states"][rows]
            text_q, text_k = _heads(module.add_q_proj(text), heads), _heads(module.add_k_proj(text), heads)
    image_q = _norm(module, "norm_q", image_q)
    image_k = _norm(module, "norm_k", image_k)
    text_q = _norm(module, "norm_added_q", text_q)
    text_k = _norm(module, "norm_added_k", text_k) if layer.kind == "joint" else _norm(module, "norm_k", text_k)
    if layer.kind == "single":  # one sequence [text, image]: split after the shared norms
        text_q, image_q = image_q[:, :text_length], image_q[:, text_length:]
        text_k, image_k = image_k[:, :text_length], image_k[:, text_length:]
    rotary = inputs.get("image_rotary_emb")
    if rotary is not None and layer.kind in ("joint", "single"):
        image_q, text_q = _rotate(image_q, text_q, rotary, layer.text_first)
        image_k, text_k = _rotate(image_k, text_k, rotary, layer.text_first)
    head_dim = image_q.shape[-1]
    scale = getattr(module, "scale", None)
    return QueriesKeys(
        image_q=image_q.transpose(1, 2), image_k=None if image_k is None else image_k.transpose(1, 2),
        text_q=None if text_q is None else text_q.transpose(1, 2),
        text_k=None if text_k is None else text_k.transpose(1, 2),
        scale=float(head_dim**-0.5 if scale is None else scale),
        bias=_mask_bias(inputs.get("attention_mask"), rows, inputs["hidden_states"].shape[0], heads),
        text_first=layer.text_first,
    )


def probabilities(queries: torch.Tensor, keys: torch.Tensor, scale: float, bias: torch.Tensor | None = None):
    """softmax(Q·Kᵀ·scale + bias) in float32: [b, heads, q, k] from queries [b, heads, q, d], keys [b, heads, k, d]."""
    logits = torch.matmul(queries.float(), keys.float().transpose(-1, -2)).mul_(scale)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


def mask_block(qk: QueriesKeys, query: str, key: str, lengths: dict[str, int]) -> torch.Tensor | None:
    """The part of the layer's mask bias for ``query`` rows and ``key`` columns ("image" | "text")."""
    if qk.bias is None:
        return None
    order = ("text", "image") if qk.text_first else ("image", "text")
    starts = {order[0]: 0, order[1]: lengths[order[0]]}

    def part(tensor, dim, which):
        if tensor.shape[dim] == 1 or tensor.shape[dim] == lengths[which]:
            return tensor
        return tensor.narrow(dim, starts[which], lengths[which])

    return part(part(qk.bias, -2, query), -1, key)


# --- internals ---------------------------------------------------------------------------------


def _is_attention(module) -> bool:
    """diffusers' attention protocol: a processor and the heads, to_q and to_k it works with."""
    return hasattr(module, "processor") and hasattr(module, "to_q") and hasattr(module, "to_k") \
        and hasattr(module, "heads") and isinstance(module, torch.nn.Module)


def _kind(name: str, module) -> str:
    if getattr(module, "add_k_proj", None) is not None:
        return "joint"
    if getattr(module, "is_cross_attention", False):
        return "cross"
    if getattr(module, "pre_only", False) and "single" in name:
        return "single"
    return "self"


def _projections(layer: AttentionLayer):
    """to_q and to_k, or a custom-diffusion processor's own when it trains them."""
    processor, module = layer.processor, layer.module
    to_q, to_k = module.to_q, module.to_k
    if getattr(processor, "train_q_out", False) and hasattr(processor, "to_q_custom_diffusion"):
        to_q = processor.to_q_custom_diffusion
    if getattr(processor, "train_kv", False) and hasattr(processor, "to_k_custom_diffusion") and layer.kind == "cross":
        custom = processor.to_k_custom_diffusion

        def to_k(x, custom=custom):  # the processor casts the text to its own weights' dtype
            return custom(x.to(custom.weight.dtype))

    return to_q, to_k


def _text_states(layer: AttentionLayer, text):
    """The text a cross-attention layer attends to: IP-Adapter's image tokens left out, the layer's norm applied."""
    if isinstance(text, tuple):  # (text, ip-adapter image embeddings)
        text = text[0]
    else:
        num_tokens = getattr(layer.processor, "num_tokens", None)
        if num_tokens:  # older IP-Adapter form: image tokens appended to the text
            text = text[:, : text.shape[1] - num_tokens[0]]
    module = layer.module
    if getattr(module, "norm_cross", None) is not None:
        text = module.norm_encoder_hidden_states(text)
    return text


def _heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """[b, n, heads·d] → [b, n, heads, d]."""
    return states.unflatten(-1, (heads, states.shape[-1] // heads))


def _norm(module, attribute: str, states):
    norm = getattr(module, attribute, None)
    return states if states is None or norm is None else norm(states)


def _rotate(image, text, rotary, text_first: bool):
    """Apply the layer's rotary embedding [L, d] to the sequence it covers, in the layer's order; split again."""
    if text is None:
        return apply_rotary_emb(image, rotary, sequence_dim=1), None
    parts = (text, image) if text_first else (image, text)
    rotated = apply_rotary_emb(torch.cat(parts, dim=1), rotary, sequence_dim=1)
    first, second = rotated.split([parts[0].shape[1], parts[1].shape[1]], dim=1)
    return (second, first) if text_first else (first, second)


def _mask_bias(mask, rows: slice, batch: int, heads: int) -> torch.Tensor | None:
    """An attention mask as an additive float bias [b, 1|heads, Lq|1, Lk] for the recorded rows."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
    mask = mask.float()
    if mask.ndim == 2:  # [b, Lk]
        mask = mask[:, None, None]
    elif mask.ndim == 3:  # [b or b·heads, Lq|1, Lk]
        mask = mask.unflatten(0, (batch, heads)) if mask.shape[0] == batch * heads != batch else mask[:, None]
    return mask[rows] if mask.shape[0] == batch else mask
