"""Questions about cross-attention, answered on traced runs (compute only; plots live in sdexplore.plot).

- ``token_kind_shares``: how the attention splits between the start token, the prompt's words,
  the end token and the padding (end tokens repeated up to 77);
- ``attended_region`` / ``iou``: a word's map thresholded (DAAM's 40% of its maximum) and scored
  against an object's mask;
- ``most_attended_word``: the word whose tokens take the largest share;
- ``tokens_map``: the summed map of some tokens (a word's sub-words, the padding) at one step or all;
- ``slide_attention``: the study notes' cat -> kitten slide, asking whether the word's attention
  changes where the picture jumps.
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture.attention import upsample_layer_maps
from ..prompts import TokenGroup, token_groups, token_table, word_positions

# A pixel is "attended" above this fraction of the map's maximum. DAAM uses 0.4 on SD's 64x64 maps; for
# the toy model's 8x8/16x16 maps, `python -m sdexplore.toy.gates --sweep-threshold` on validation scenes
# (not the gate's) peaks at 0.5-0.55 (0.4 gives 0.68, 0.5 gives 0.76), so 0.5 it is.
ATTENTION_THRESHOLD = 0.5
KINDS = ("start", "word", "end", "padding")


def token_kind_shares(run, prompt_index: int = 0) -> dict[str, float]:
    """{"start", "word", "end", "padding"} -> the fraction of all cross-attention (over every step,
    layer and latent pixel) that goes to tokens of that kind; the four add up to 1."""
    share = run.attention.token_share()[prompt_index]  # [77]
    table = run.attention.token_table(prompt_index)[: share.shape[0]]
    return {kind: float(share[[t.position for t in table if t.kind == kind]].sum()) for kind in KINDS}


def tokens_map(maps, positions, step: int | None = None, prompt_index: int = 0) -> torch.Tensor:
    """[h, w]: the maps of the tokens at ``positions`` summed (as ``word_map`` sums a word's sub-words), at one
    ``step`` or, with step=None, averaged over every step. ``maps``: a trace's AttentionMaps."""
    if not positions:
        raise ValueError("positions is empty: give the token positions (0..76) whose map to show")
    return maps.token_maps(steps=step)[prompt_index, list(positions)].sum(0)


def most_attended_word(maps, prompt_index: int = 0) -> TokenGroup:
    """The prompt's word (all its sub-words) that takes the largest share of the attention; the start token
    when the prompt has no words."""
    groups = token_groups(maps.token_table(prompt_index)[: maps.num_tokens])
    words = [group for group in groups if group.kind == "word"] or groups[:1]
    shares = maps.token_share()[prompt_index]
    return max(words, key=lambda group: float(shares[list(group.positions)].sum()))


def attended_region(heat: torch.Tensor, size: tuple[int, int], threshold: float = ATTENTION_THRESHOLD) -> np.ndarray:
    """bool [H, W]: the map [h, w] upsampled to ``size`` (bicubic, clipped at 0, as AttentionMaps.upsample),
    min-max scaled, above ``threshold``."""
    up = upsample_layer_maps(heat[None, None].float(), tuple(size))[0, 0]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12) > threshold).numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def slide_attention(pipe, prompt: str, word: str, target: str, alphas, *, seed: int, **pipeline_kwargs) -> dict:
    """Slide ``word``'s token embedding toward ``target`` (same seed) and record, for each alpha, the
    picture and the word's attention map.

    Returns {"alphas": [A], "images": uint8 [A, H, W, 3], "maps": [A, h, w] (each sums to 1),
    "image_change": [A-1] mean |pixel difference| / 255 between neighbouring alphas,
    "map_change": [A-1] total-variation distance (0..1) between neighbouring maps}.
    """
    from .interpolation import trace_interpolation

    positions = word_positions(token_table(pipe.tokenizer, prompt, warn=False), word)
    runs = trace_interpolation(pipe, prompt, word, target, alphas, seed=seed, attention=True, **pipeline_kwargs)
    images = np.stack([np.asarray(run.images[0].convert("RGB")) for run in runs])
    maps = torch.stack([run.attention.token_maps()[0, positions].sum(0) for run in runs])
    maps = maps / maps.sum(dim=(-2, -1), keepdim=True)
    image_change = np.abs(np.diff(images.astype(np.float32), axis=0)).mean(axis=(1, 2, 3)) / 255
    map_change = 0.5 * (maps[1:] - maps[:-1]).abs().sum(dim=(-2, -1))
    return {"alphas": list(alphas), "images": images, "maps": maps, "image_change": image_change,
            "map_change": map_change.numpy()}
