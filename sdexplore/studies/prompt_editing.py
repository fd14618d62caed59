"""Prompt editing ``[from:to:when]`` swept over ``when``: which picture each switch step gives."""

from __future__ import annotations

import numpy as np
import torch

from ..conditioning import trace_prompt


def editing_pictures(pipe, template: str, whens: list, seeds: list[int], *, num_inference_steps: int = 25,
                     guidance_scale: float = 7.5) -> dict[str, torch.Tensor]:
    """``template`` with a ``{when}`` field, e.g. "a photo of a [cat:kitten:{when}]", run for every when and seed.

    Returns {"pictures": uint8 [W, S, H, W, 3], "switch_step": [W] the first step that used the new text
    (num_inference_steps if none did)}.
    """
    if "{when}" not in template:
        raise ValueError(f"template must contain '{{when}}' where the switch step goes, got {template!r}")
    pictures, switch_steps = [], []
    for when in whens:
        row = []
        for seed in seeds:
            run = trace_prompt(pipe, template.format(when=when), seed=seed, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale)
            row.append(np.asarray(run.images[0]))
        per_step = run.params["conditioning_per_step"]
        switch_steps.append(next((s for s, index in enumerate(per_step) if index > 0), num_inference_steps))
        pictures.append(np.stack(row))
    return {"pictures": torch.from_numpy(np.stack(pictures)), "switch_step": torch.tensor(switch_steps)}
