"""Slide one word's token embedding toward another (cat -> kitten) and see what the picture does.

The study notes interpolated "only the vector of one word": here the word's *input* token
embedding (a row of the text encoder's embedding table) is mixed with the target word's,
``(1 - alpha) * e_cat + alpha * e_kitten`` (mode "lerp") or along the great circle between them
(mode "slerp", which keeps the vector's length), and the text encoder then runs as usual, so every
later position sees the mixed word too. A forward hook on the embedding table does the mixing
and is removed afterwards. ``trace_prompt_interpolation`` mixes two whole prompts' encoder
outputs [77, D] instead.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .img2img import distance_to

MODES = ("lerp", "slerp")


def mix(a: torch.Tensor, b: torch.Tensor, alpha: float, mode: str = "lerp") -> torch.Tensor:
    """``a`` moved toward ``b`` by ``alpha`` (0 -> a, 1 -> b), same shape.

    "lerp": (1 - alpha) * a + alpha * b. "slerp": spherical interpolation of the flattened tensors
    (the angle between them is split by alpha, the norm interpolated linearly); falls back to lerp
    when a and b point the same way.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    alpha = float(alpha)
    if mode == "lerp":
        return torch.lerp(a, b, alpha)
    flat_a, flat_b = a.flatten().double(), b.flatten().double()
    norm_a, norm_b = flat_a.norm(), flat_b.norm()
    cosine = (flat_a @ flat_b / (norm_a * norm_b).clamp_min(1e-12)).clamp(-1, 1)
    angle = torch.arccos(cosine)
    if angle < 1e-4:
        return torch.lerp(a, b, alpha)
    unit = (torch.sin((1 - alpha) * angle) * flat_a / norm_a + torch.sin(alpha * angle) * flat_b / norm_b) \
        / torch.sin(angle)
    length = torch.lerp(norm_a, norm_b, alpha)
    return (unit * length).reshape(a.shape).to(a.dtype)


def single_token_id(tokenizer, word: str) -> int:
    """The id of a word that is one token; ValueError if the tokenizer splits it."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"{word!r} is {len(ids)} tokens {pieces}; a word vector needs a single-token word "
                         "(interpolation and arithmetic mix single-token words)")
    return ids[0]


@contextlib.contextmanager
def mixed_token_embedding(text_encoder, token_id: int, target_id: int, alpha: float, mode: str = "lerp"):
    """While active, every occurrence of ``token_id`` is embedded as mix(e_token, e_target, alpha, mode)."""
    table = text_encoder.get_input_embeddings()

    def mix_hook(module, args, output):
        ids = args[0] if args else None
        if ids is None:
            return output
        mixed = mix(table.weight[token_id], table.weight[target_id], alpha, mode).to(output.dtype)
        return torch.where((ids == token_id)[..., None], mixed, output)

    handle = table.register_forward_hook(mix_hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def interpolated_prompt_embeds(pipe, prompt: str, word: str, target: str, alphas, mode: str = "lerp") -> torch.Tensor:
    """[A, 77, D] prompt embeddings of ``prompt`` with ``word`` slid toward ``target`` by each alpha."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if word not in prompt.split() and word not in prompt.replace(",", " ").split():
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}")
    token_id = single_token_id(pipe.tokenizer, word)
    target_id = single_token_id(pipe.tokenizer, target)
    rows = []
    for alpha in alphas:
        with mixed_token_embedding(pipe.text_encoder, token_id, target_id, alpha, mode):
            embeds, _ = pipe.encode_prompt(prompt, device=pipe.device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
        rows.append(embeds)
    return torch.cat(rows)


def trace_interpolation(pipe, prompt: str, word: str, target: str, alphas, *, seed: int, mode: str = "lerp",
                        **pipeline_kwargs) -> list:
    """One Trace per alpha, same seed, so only the mixed word differs between them."""
    embeds = interpolated_prompt_embeds(pipe, prompt, word, target, alphas, mode)
    about = {"word": word, "target": target, "mode": mode}
    return _trace_embeds(pipe, embeds, alphas, prompt, about, seed=seed, **pipeline_kwargs)


@torch.no_grad()
def prompts_interpolated(pipe, prompt: str, target_prompt: str, alphas, mode: str = "lerp") -> torch.Tensor:
    """[A, 77, D]: the text encoder's outputs for ``prompt`` and ``target_prompt``, mixed by each alpha."""
    start, end = (pipe.encode_prompt(text, device=pipe.device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)[0][0] for text in (prompt, target_prompt))
    return torch.stack([mix(start, end, alpha, mode) for alpha in alphas])


def trace_prompt_interpolation(pipe, prompt: str, target_prompt: str, alphas, *, seed: int, mode: str = "lerp",
                               **pipeline_kwargs) -> list:
    """One Trace per alpha, same seed, between two whole prompts (their encoder outputs mixed)."""
    embeds = prompts_interpolated(pipe, prompt, target_prompt, alphas, mode)
    about = {"target_prompt": target_prompt, "mode": mode}
    return _trace_embeds(pipe, embeds, alphas, prompt, about, seed=seed, **pipeline_kwargs)


def _trace_embeds(pipe, embeds: torch.Tensor, alphas, prompt: str, about: dict, *, seed: int,
                  **pipeline_kwargs) -> list:
    """Trace each row of ``embeds`` [A, 77, D] against the empty prompt's embedding; record what was mixed."""
    from ..capture.run import trace

    negative = pipe.encode_prompt("", device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    runs = []
    for alpha, row in zip(alphas, embeds):
        run = trace(pipe, None, seed=seed, prompt_embeds=row[None], negative_prompt_embeds=negative, **pipeline_kwargs)
        run.params.update({"prompt": prompt, "interpolation": {**about, "alpha": float(alpha)}})
        runs.append(run)
    return runs


def divergence(run_a, run_b, prompt_index: int = 0) -> dict[str, torch.Tensor]:
    """How far two runs of the same seed drift apart, step by step (the notes' "butterfly effect").

    Returns {"x0": [N], "x_t": [N+1]}: |a - b| / |b| of the clean guesses and of the sampler's latents.
    """
    def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)

    return {"x0": relative(run_a.x0[:, prompt_index], run_b.x0[:, prompt_index]),
            "x_t": relative(run_a.latents[:, prompt_index], run_b.latents[:, prompt_index])}


def picture_changes(runs: list) -> torch.Tensor:
    """[A-1]: mean |pixel difference| / 255 between the pictures of neighbouring runs."""
    pictures = np.stack([np.asarray(run.images[0], dtype=np.float32) for run in runs])
    return torch.from_numpy(distance_to(pictures[1:], pictures[:-1]))
