"""Prompts longer than CLIP's 77 positions: cut after 75 word tokens (diffusers) or encoded in 75-token chunks
(the WebUIs), drawn from the same seeds."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..conditioning import trace_prompt
from ..prompts import PromptTruncatedWarning


def cut_and_chunked_pictures(pipe, prompt: str, seeds: list[int], *, num_inference_steps: int = 25,
                             guidance_scale: float = 7.5) -> dict[str, torch.Tensor]:
    """{"cut": uint8 [S, H, W, 3], "chunked": uint8 [S, H, W, 3]}: ``prompt`` for every seed, as diffusers
    cuts it (its truncation warning silenced here: call ``trace_prompt`` once to read it) and chunked."""
    pictures = {"cut": [], "chunked": []}
    for seed in seeds:
        for name in pictures:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PromptTruncatedWarning)
                run = trace_prompt(pipe, prompt, seed=seed, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, chunking=name == "chunked")
            pictures[name].append(np.asarray(run.images[0]))
    return {name: torch.from_numpy(np.stack(images)) for name, images in pictures.items()}
