"""Record every denoising step of a diffusers pipeline run, on every family (sdexplore.capture.families).

Three public hooks, all removed on exit (also when the run raises):
- torch forward hooks on the denoiser (``pipe.unet`` or ``pipe.transformer``): the latent it was
  given and its raw prediction (both CFG halves: unconditional/negative and text), the text
  sequence, the pooled text embedding and SDXL's time ids;
- a wrapper around *this scheduler instance's* ``step``: x_t entering the step, the guided
  prediction the scheduler used, x_{t-1}, and the scheduler's own x0 when it reports one;
- diffusers' ``callback_on_step_end``: the latents the pipeline keeps after the step (after
  inpainting's per-step blending, which happens outside the scheduler).

x0 is computed from the denoiser's own input and prediction, so it is right for epsilon-, v- and
sample-prediction and for every scheduler, including those (PNDM, DPM++) that do not report it;
where the scheduler keeps sigmas (Euler, DPM++, Karras or exponential sigmas) its own sigma of the
step is used. Flow matching (SD3, Flux): x0 = x_t - sigma * v with the scheduler's sigma. Flux's
packed latents are unpacked to [B, C, h, w].

Captures stay on the pipeline's device during the run (float32); ``to_trace`` moves them to the
CPU once. Only calls from the thread that entered the recorder are recorded; calls from any other
thread pass through untouched and are counted in ``foreign_calls`` (the trace is then refused: the
scheduler's state was shared between two runs).
"""

from __future__ import annotations

import functools
import inspect
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .families import denoiser_of, family_of, prediction_kind, read_call, unpack_latents


@dataclass
class StepRecord:
    """What one denoising step saw. Tensors float32 on the pipeline's device, shapes [B, C, h, w] (unpacked);
    timestep as the scheduler gave it (read as a float by ``timestep_value``, after the run: no device sync)."""

    timestep: float | torch.Tensor
    latents_in: torch.Tensor
    noise_pred: torch.Tensor
    noise_pred_text: torch.Tensor
    noise_pred_uncond: torch.Tensor | None
    x0: torch.Tensor
    latents_out: torch.Tensor
    scheduler_x0: torch.Tensor | None = None
    sigma: float | None = None


@dataclass
class _PendingCall:
    model_input: torch.Tensor  # [B*, C, h, w] (or Flux's packed [B*, L, 4C]) the latent part of the denoiser's input
    timestep: float | torch.Tensor
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
        self.family = family_of(pipe)
        self.denoiser = denoiser_of(pipe)
        self.unet = self.denoiser  # the name older code reads
        self.prediction_kind = prediction_kind(pipe)
        self.scheduler = pipe.scheduler
        self.records: list[StepRecord] = []
        self.first_step_calls: list[dict] = []  # text / pooled / time_ids of each denoiser call of step 0
        self.grid: tuple[int, int] | None = None  # (h, w) of Flux's unpacked latents
        self._pending: _PendingCall | None = None
        self._handles: list = []
        self._owner: int | None = None
        self.foreign_calls = 0
        self._sigmas_table: np.ndarray | None = None
        self._device_sigmas: dict[torch.device, torch.Tensor] = {}  # the same table on the timesteps' device

    def _is_foreign(self) -> bool:
        """True (and counted) when a hook runs in a thread other than the one that entered."""
        if threading.get_ident() == self._owner:
            return False
        self.foreign_calls += 1
        return True

    # --- installing and removing the hooks -------------------------------------------------

    def __enter__(self) -> "StepRecorder":
        self._owner = threading.get_ident()
        # a torch.compile-d UNet (OptimizedModule) takes *args, **kwargs: bind calls to the wrapped forward
        self._signature = inspect.signature(getattr(self.denoiser, "_orig_mod", self.denoiser).forward)
        self._handles = [
            self.denoiser.register_forward_pre_hook(self._before_denoiser, with_kwargs=True),
            self.denoiser.register_forward_hook(self._after_denoiser, with_kwargs=True),
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

    def _before_denoiser(self, module, args, kwargs):
        if self._is_foreign():
            return None
        call = read_call(self.family, module, args, kwargs, self._signature)
        if not self.records:
            self.first_step_calls.append({name: None if value is None else _keep(value) for name, value in
                                          (("text", call.text), ("pooled", call.pooled), ("time_ids", call.time_ids))})
        if call.grid is not None:
            self.grid = call.grid
        if self._pending is None:
            latents = call.latents
            if not self.family.packed:
                latents = latents[:, :module.config.out_channels]  # inpainting UNets also get mask and picture
            self._pending = _PendingCall(_keep(latents), call.timestep)
        return None

    def _after_denoiser(self, module, args, kwargs, output):
        if threading.get_ident() != self._owner or self._pending is None:
            return None
        prediction = output[0] if isinstance(output, tuple) else output.sample
        self._pending.outputs.append(_keep(prediction))
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
            self.records[-1].latents_out = self._unpacked(_keep(latents))
        return {}

    # --- turning one step's observations into a record ---------------------------------------

    def _make_record(self, guided, timestep, sample, prev_sample, reported_x0) -> StepRecord:
        pending, self._pending = self._pending, None
        batch = sample.shape[0]
        if pending is None or not pending.outputs:
            raise RuntimeError("the scheduler stepped without a denoiser call before it: cannot trace this pipeline")
        uncond, text = self._cfg_parts(pending.outputs, batch)
        guided, sample = _keep(guided), _keep(sample)
        sigma = self._sigma_of_step()
        if self.prediction_kind == "flow":
            if sigma is None:
                raise RuntimeError(f"{type(self.scheduler).__name__} has no sigmas/step_index: cannot compute x0 "
                                   "for flow matching")
            x0 = sample - sigma * guided
        else:
            x0 = predicted_x0(self.scheduler, pending.model_input[:batch], guided, None,
                              alpha_bar=self._alpha_bar(sigma, pending.timestep), kind=self.prediction_kind)
        unpack = self._unpacked
        return StepRecord(
            timestep=timestep.detach() if isinstance(timestep, torch.Tensor) else timestep,
            latents_in=unpack(sample),
            noise_pred=unpack(guided),
            noise_pred_text=unpack(text),
            noise_pred_uncond=None if uncond is None else unpack(uncond),
            x0=unpack(x0),
            latents_out=unpack(_keep(prev_sample)),
            scheduler_x0=None if reported_x0 is None else unpack(_keep(reported_x0)),
            sigma=sigma,
        )

    def conditioning(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(negative, prompt) halves of what step 0's denoiser calls got as ``name``: "text" [B, T, D],
        "pooled" [B, P] or "time_ids" [B, 6]; (None, None) when the denoiser got none, None for the
        negative half without CFG."""
        if not self.records or not self.first_step_calls:
            return None, None
        batch = self.records[0].latents_in.shape[0]
        values = [call[name] for call in self.first_step_calls]
        if values[0] is None:
            return None, None
        if values[0].shape[0] == 2 * batch and self.records[0].noise_pred_uncond is not None:
            negative, prompt = values[0].chunk(2)
            return negative, prompt
        if self.family.true_cfg_calls and len(values) == 2 and self.records[0].noise_pred_uncond is not None:
            return values[1], values[0]
        return None, values[0]

    def _cfg_parts(self, outputs: list, batch: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(unconditional, text) predictions of one step from the denoiser calls made during it.

        One call on a [2B] batch: CFG (negative first). Flux's true CFG: two [B] calls, text first.
        Further calls (SD3's skip-layer guidance) only shape the guided prediction, recorded as such.
        """
        first = outputs[0]
        if first.shape[0] == 2 * batch:
            uncond, text = first.chunk(2)
            return uncond, text
        if self.family.true_cfg_calls and len(outputs) == 2 and outputs[1].shape[0] == batch:
            return outputs[1], first
        return None, first if len(outputs) == 1 else torch.cat(outputs)

    def _training_sigmas(self) -> np.ndarray:
        """The training schedule's sigmas, read once per recorder (not at every step)."""
        if self._sigmas_table is None:
            self._sigmas_table = training_sigmas(self.scheduler)
        return self._sigmas_table

    def _alpha_bar(self, sigma: float | None, timestep) -> float | torch.Tensor:
        """alpha_bar of this step: from the scheduler's own sigma where it keeps one; else from the training
        schedule at the timestep, computed where the timestep lives (a GPU tensor is not read: no sync per step)."""
        if sigma is not None:
            return 1.0 / (1.0 + sigma**2)
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "mps":  # MPS has no float64
            table = self._device_sigmas.get(timestep.device)
            if table is None:
                table = self._device_sigmas[timestep.device] = torch.from_numpy(self._training_sigmas()).to(
                    timestep.device)
            return alpha_bar_of_tensor(timestep, table)
        return alpha_bar_at(self.scheduler, _as_float(timestep), self._training_sigmas())

    def _sigma_of_step(self) -> float | None:
        """The scheduler's own sigma of the step it just made (``sigmas[step_index - 1]``), if it keeps them."""
        sigmas, index = getattr(self.scheduler, "sigmas", None), getattr(self.scheduler, "step_index", None)
        if not isinstance(sigmas, torch.Tensor) or not isinstance(index, int) or not 0 < index <= len(sigmas):
            return None
        return float(sigmas[index - 1])

    def _unpacked(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents as they are; Flux's packed [B, L, 4C] unpacked to [B, C, h, w]."""
        if not self.family.packed or latents.ndim != 3:
            return latents
        if self.grid is None:
            raise RuntimeError("Flux latents were stepped before the transformer saw img_ids: cannot unpack them")
        return unpack_latents(latents, self.grid)


def predicted_x0(scheduler, model_input: torch.Tensor, prediction: torch.Tensor, timestep: float, *,
                 alpha_bar: float | None = None, kind: str | None = None) -> torch.Tensor:
    """Clean-latent estimate from what the UNet saw and predicted.

    model_input: [B, C, h, w], the (scale_model_input-ed) latent the UNet was given, which is
    always in variance-preserving form x = sqrt(a) x0 + sqrt(1 - a) eps, a = alpha_bar(t).
    prediction: [B, C, h, w] epsilon, v or x0, as ``kind`` (default ``scheduler.config.prediction_type``) says.
    alpha_bar: a of this step (default: interpolated from the training schedule at ``timestep``;
    give 1 / (1 + sigma^2) with the scheduler's own sigma where it keeps one).
    """
    if alpha_bar is None:
        alpha_bar = alpha_bar_at(scheduler, timestep)
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    kind = kind or scheduler.config.prediction_type
    if kind == "epsilon":
        return (model_input - s * prediction) / a
    if kind == "v_prediction":
        return a * model_input - s * prediction
    if kind == "sample":
        return prediction.clone()
    raise ValueError(f"unknown prediction_type {kind!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def alpha_bar_at(scheduler, timestep: float, sigmas: np.ndarray | None = None) -> float:
    """alpha_bar of the training schedule at a (possibly fractional) timestep.

    Fractional timesteps are interpolated linearly in sigma = sqrt((1 - a) / a), as Euler-type
    schedulers do, so a = 1 / (1 + sigma^2) matches the sigma they scaled the input with.
    sigmas: ``training_sigmas(scheduler)``, when the caller keeps it (a run reads it once, not every step).
    """
    sigmas = training_sigmas(scheduler) if sigmas is None else sigmas
    sigma = float(np.interp(float(timestep), np.arange(len(sigmas)), sigmas))
    return 1.0 / (1.0 + sigma**2)


def alpha_bar_of_tensor(timestep: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_at`` on the timestep's device without reading it: timestep a tensor (its first value is
    used), sigmas [N] float64 ``training_sigmas`` on the same device; returns a 0-dim float64 tensor.

    np.interp's arithmetic, step by step: the table's value at an integer timestep (then equal to alpha_bar_at to
    the last bit), else slope * (t - left) + left value, from the right end where that is not a number (equal to
    float64 rounding: sigma * sigma here, Python's sigma**2 there)."""
    last = sigmas.shape[0] - 1
    t = timestep.detach().reshape(-1)[:1].to(torch.float64).clamp(0, last)
    left = t.floor().long().clamp(max=last - 1)
    below, above = sigmas.index_select(0, left), sigmas.index_select(0, left + 1)
    slope = above - below
    sigma = slope * (t - left) + below
    sigma = torch.where(sigma.isnan(), slope * (t - (left + 1)) + above, sigma)
    sigma = torch.where(t == left, below, torch.where(t == last, sigmas[last:], sigma))
    return (1.0 / (1.0 + sigma * sigma)).reshape(())


def training_sigmas(scheduler) -> np.ndarray:
    """[num_train_timesteps] float64: sigma = sqrt((1 - a) / a) of the training schedule (inf where a = 0)."""
    alphas_cumprod = scheduler.alphas_cumprod.double().cpu().numpy()
    with np.errstate(divide="ignore"):  # zero terminal SNR: alpha_bar = 0, sigma = inf at the last timestep
        return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy, detached, left on its device (moved to the CPU once, in Tracing.to_trace)."""
    return tensor.detach().to(dtype=torch.float32).clone()


def timestep_value(record: StepRecord) -> float:
    """A record's timestep as a float."""
    return _as_float(record.timestep)


def _as_float(timestep) -> float:
    return float(timestep.item() if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 else
                 timestep.flatten()[0].item() if isinstance(timestep, torch.Tensor) else timestep)
