"""The cross-attention processor that records softmax(Q·Kᵀ·scale) while the original works.

``RecordingAttnProcessor`` wraps the processor a cross-attention (``attn2``) layer already
has (SDPA, sliced, xformers, LoRA, ...): the layer's output is still computed by that original
processor, unchanged, so a traced image is the untraced image. Next to it the probabilities
are recomputed with the layer's own ``to_q``/``to_k`` and ``get_attention_scores`` (scale,
``upcast_attention``, ``upcast_softmax`` and masks as diffusers applies them), for the batch
rows the recorder wants only. Self-attention (``attn1``) is never touched.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.models.attention_processor import Attention


def cross_attention_layers(unet) -> dict[str, Attention]:
    """The UNet's cross-attention layers by diffusers name, in forward order (down, mid, up).

    Names are diffusers' own, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2".
    """
    found = [(name, module) for name, module in unet.named_modules()
             if isinstance(module, Attention) and module.is_cross_attention]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    ranked = sorted(enumerate(found), key=lambda item: (order.get(item[1][0].split(".")[0], 3), item[0]))
    return {name: module for _, (name, module) in ranked}


def attention_probabilities(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q·Kᵀ·scale) of one cross-attention layer: [b, heads, n, T].

    hidden_states [b, n, C] (or [b, C, h, w]) are the queries' input, encoder_hidden_states
    [b, T, D] the text; attention_mask as the layer receives it. Same steps as diffusers'
    AttnProcessor/AttnProcessor2_0 before the product with the values.
    """
    if hidden_states.ndim == 4:
        batch, channels = hidden_states.shape[:2]
        hidden_states = hidden_states.view(batch, channels, -1).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    batch, key_length = encoder_hidden_states.shape[:2]
    mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query, key = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
    heads = attn.heads
    query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
    key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    probs = attn.get_attention_scores(query.flatten(0, 1), key.flatten(0, 1), mask)
    return probs.view(batch, heads, probs.shape[1], probs.shape[2])


class RecordingAttnProcessor:
    """Processor of one attn2 layer during a traced run; ``original`` still computes the output.

    ``recorder.rows(batch)`` says which batch rows to record (a slice, or None for none), and
    ``recorder.add(name, probs)`` receives their probabilities [b, heads, n, T].
    """

    def __init__(self, original, name: str, recorder):
        self.original = original
        self.name = name
        self.recorder = recorder
        # Attention.forward passes on only the keyword arguments its processor's __call__ names:
        # show the original's signature, so the original receives exactly what it would have.
        self.__call__ = _signature_holder(original)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, **kwargs) -> torch.Tensor:
        text = encoder_hidden_states[0] if isinstance(encoder_hidden_states, tuple) else encoder_hidden_states
        rows = self.recorder.rows(hidden_states.shape[0]) if text is not None else None
        if rows is not None:
            with torch.no_grad():
                probs = attention_probabilities(attn, hidden_states[rows], text[rows],
                                                _mask_rows(attention_mask, rows, hidden_states.shape[0]))
            self.recorder.add(self.name, probs)
        return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, **kwargs)

    def __repr__(self) -> str:
        return f"RecordingAttnProcessor({self.name!r}, wrapping {type(self.original).__name__})"


def _mask_rows(mask: torch.Tensor | None, rows: slice, batch: int) -> torch.Tensor | None:
    """The mask of the recorded rows; a mask shared by the whole batch is kept as it is."""
    if mask is None or mask.shape[0] != batch:
        return mask
    return mask[rows]


def _signature_holder(original):
    def signature_only(*args, **kwargs):  # never called: Attention.forward only inspects it
        return original(*args, **kwargs)

    try:
        signature_only.__signature__ = inspect.signature(original.__call__)
    except (TypeError, ValueError):
        pass
    return signature_only
