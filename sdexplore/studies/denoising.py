"""How a traced run gets from noise to its picture, measured on the trace (no plotting here).

- ``settling``: at each step, how far the sampler's latent x_t and its clean guess x0 still are
  from the final latents. The guess settles long before the noise is gone.
- ``prompt_effect``: at each step, how much the prompt changes the UNet's prediction,
  |pred_text - pred_uncond| / |pred_uncond|: a small difference that guidance multiplies.
"""

from __future__ import annotations

import torch


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pow(2).mean(dim=tuple(range(1, tensor.ndim))).sqrt()


def settling(run, prompt_index: int = 0) -> dict[str, torch.Tensor]:
    """Distances to the final latents, relative to their RMS: {"x_t": [N], "x0": [N], "timesteps": [N]}.

    x_t[i] is the latent entering step i, x0[i] the clean latent predicted at step i. Meaningful for
    schedulers whose latents are not sigma-scaled (DDIM, DDPM, PNDM, DPM++; not Euler).
    """
    final = run.latents[-1, prompt_index]
    scale = _rms(final[None])[0]
    x_t = _rms(run.latents[:-1, prompt_index] - final) / scale
    x0 = _rms(run.x0[:, prompt_index] - final) / scale
    return {"x_t": x_t, "x0": x0, "timesteps": run.timesteps.clone()}


def first_step_within(distances: torch.Tensor, tolerance: float) -> int:
    """The first step from which every later distance is <= tolerance (len(distances) if none)."""
    within = (distances <= tolerance).tolist()
    step = len(within)
    while step > 0 and within[step - 1]:
        step -= 1
    return step


def prompt_effect(run) -> torch.Tensor:
    """[N] |pred_text - pred_uncond| / |pred_uncond| per step (over the whole batch); needs CFG."""
    if run.noise_pred_uncond is None:
        raise ValueError("this run had no classifier-free guidance (guidance_scale <= 1): there is no "
                         "unconditional prediction to compare with; trace with guidance_scale > 1")
    return _rms(run.noise_pred_text - run.noise_pred_uncond) / _rms(run.noise_pred_uncond)
