"""Record every denoising step of a diffusers pipeline run.

Three public hooks, all removed on exit (also when the run raises):
- torch forward hooks on the UNet: the latent it was given and its raw prediction
  (both CFG halves: unconditional/negative and text), and the prompt embeddings;
- a wrapper around *this scheduler instance's* ``step``: x_t entering the step, the guided
  prediction the scheduler used, x_{t-1}, and the scheduler's own x0 when it reports one;
- diffusers' ``callback_on_step_end``: the latents the pipeline keeps after the step (after
  inpainting's per-step blending, which happens outside the scheduler).

x0 is computed from the UNet's own input and prediction, so it is right for epsilon-, v- and
sample-prediction and for every scheduler, including those (PNDM, DPM++) that do not report it.

Only calls from the thread that entered the recorder are recorded; calls from any other thread
pass through untouched and are counted in ``foreign_calls`` (the trace is then refused: the
scheduler's state was shared between two runs).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class StepRecord:
    """What one denoising step saw. Tensors CPU float32, shapes [B, C, h, w]."""

    timestep: float
    latents_in: torch.Tensor
    noise_pred: torch.Tensor
    noise_pred_text: torch.Tensor
    noise_pred_uncond: torch.Tensor | None
    x0: torch.Tensor
    latents_out: torch.Tensor
    scheduler_x0: torch.Tensor | None = None


@dataclass
class _PendingUnetCall:
    model_input: torch.Tensor  # [B*, C, h, w] the latent part of what the UNet was given
    timestep: float
    outputs: list = field(default_factory=list)


class StepRecorder:
    """Context manager recording each step of the pipeline calls made inside it.

    >>> with StepRecorder(pipe) as rec:
    ...     pipe(prompt, generator=g, callback_on_step_end=rec.callback)
    >>> rec.records  # one StepRecord per step

    Passing ``rec.callback`` is needed only to see what happens to the latents after the
    scheduler (4-channel inpainting blends them with the original); without it the latents
    after a step are the scheduler's output.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.unet = pipe.unet
        self.scheduler = pipe.scheduler
        self.records: list[StepRecord] = []
        self.prompt_embeds: torch.Tensor | None = None
        self._pending: _PendingUnetCall | None = None
        self._handles: list = []
        self._owner: int | None = None
        self.foreign_calls = 0

    def _is_foreign(self) -> bool:
        """True (and counted) when a hook runs in a thread other than the one that entered."""
        if threading.get_ident() == self._owner:
            return False
        self.foreign_calls += 1
        return True

    # --- installing and removing the hooks -------------------------------------------------

    def __enter__(self) -> "StepRecorder":
        self._owner = threading.get_ident()
        self._handles = [
            self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
            self.unet.register_forward_hook(self._after_unet, with_kwargs=True),
        ]
        self._step_was_instance_attr = "step" in vars(self.scheduler)
        self._original_step = original = self.scheduler.step

        @functools.wraps(original)
        def recording_step(*args, **kwargs):
            if self._is_foreign():
                return original(*args, **kwargs)
            return self._recording_step(original, *args, **kwargs)

        self.scheduler.step = recording_step
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._step_was_instance_attr:
            self.scheduler.step = self._original_step
        else:
            del self.scheduler.step

    # --- the hooks ----------------------------------------------------------------------------

    def _before_unet(self, module, args, kwargs):
        if self._is_foreign():
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        hidden = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        if self.prompt_embeds is None and hidden is not None:
            self.prompt_embeds = _cpu(hidden)
        latent_channels = module.config.out_channels
        if self._pending is None:
            self._pending = _PendingUnetCall(_cpu(sample[:, :latent_channels]), _as_float(timestep))
        return None

    def _after_unet(self, module, args, kwargs, output):
        if threading.get_ident() != self._owner or self._pending is None:
            return None
        prediction = output[0] if isinstance(output, tuple) else output.sample
        self._pending.outputs.append(_cpu(prediction))
        return None

    def _recording_step(self, original, model_output, timestep, sample, *args, return_dict=True, **kwargs):
        """Call the real step asking for its output object (which carries pred_original_sample,
        when the scheduler has one), record, and hand the caller the form it asked for."""
        output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        reported_x0 = getattr(output, "pred_original_sample", None)
        self.records.append(self._make_record(model_output, timestep, sample, output.prev_sample, reported_x0))
        return output if return_dict else output.to_tuple()

    def callback(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers ``callback_on_step_end``: the latents the pipeline carries after the step."""
        latents = callback_kwargs.get("latents")
        if latents is not None and self.records and not self._is_foreign():
            self.records[-1].latents_out = _cpu(latents)
        return {}

    # --- turning one step's observations into a record ---------------------------------------

    def _make_record(self, guided, timestep, sample, prev_sample, reported_x0) -> StepRecord:
        pending, self._pending = self._pending, None
        batch = sample.shape[0]
        if pending is None or not pending.outputs:
            raise RuntimeError("the scheduler stepped without a UNet call before it: cannot trace this pipeline")
        raw = torch.cat(pending.outputs)
        uncond, text = (raw.chunk(2) if raw.shape[0] == 2 * batch else (None, raw))
        model_input = pending.model_input[:batch]
        guided_cpu = _cpu(guided)
        return StepRecord(
            timestep=_as_float(timestep),
            latents_in=_cpu(sample),
            noise_pred=guided_cpu,
            noise_pred_text=text,
            noise_pred_uncond=uncond,
            x0=predicted_x0(self.scheduler, model_input, guided_cpu, pending.timestep),
            latents_out=_cpu(prev_sample),
            scheduler_x0=None if reported_x0 is None else _cpu(reported_x0),
        )


def predicted_x0(scheduler, model_input: torch.Tensor, prediction: torch.Tensor, timestep: float) -> torch.Tensor:
    """Clean-latent estimate from what the UNet saw and predicted.

    model_input: [B, C, h, w], the (scale_model_input-ed) latent the UNet was given, which is
    always in variance-preserving form x = sqrt(a) x0 + sqrt(1 - a) eps, a = alpha_bar(t).
    prediction: [B, C, h, w] epsilon, v or x0, as ``scheduler.config.prediction_type`` says.
    """
    alpha_bar = alpha_bar_at(scheduler, timestep)
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (model_input - s * prediction) / a
    if kind == "v_prediction":
        return a * model_input - s * prediction
    if kind == "sample":
        return prediction.clone()
    raise ValueError(f"unknown prediction_type {kind!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def alpha_bar_at(scheduler, timestep: float) -> float:
    """alpha_bar of the training schedule at a (possibly fractional) timestep.

    Fractional timesteps are interpolated linearly in sigma = sqrt((1 - a) / a), as Euler-type
    schedulers do, so a = 1 / (1 + sigma^2) matches the sigma they scaled the input with.
    """
    alphas_cumprod = scheduler.alphas_cumprod.double().cpu().numpy()
    with np.errstate(divide="ignore"):  # zero terminal SNR: alpha_bar = 0, sigma = inf at the last timestep
        sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    sigma = float(np.interp(float(timestep), np.arange(len(sigmas)), sigmas))
    return 1.0 / (1.0 + sigma**2)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32).clone()


def _as_float(timestep) -> float:
    return float(timestep.item() if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 else
                 timestep.flatten()[0].item() if isinstance(timestep, torch.Tensor) else timestep)
