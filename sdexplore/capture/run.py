"""Run a pipeline once and return its Trace; or trace any pipeline call the user writes.

``trace(pipe, prompt, seed=0, **diffusers_kwargs)`` is the one obvious way in. The context
manager ``tracing(pipe)`` records the calls made inside it, for code that calls the pipeline
itself. Either way the pipeline is left exactly as it was found, also when the run raises.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

import diffusers
import numpy as np
import torch
from PIL import Image

from ..models import as_img2img, as_inpaint
from .families import denoiser_of, family_of, latent_channels, prediction_kind, sequence_tokens, token_tables
from .inputs import check_call, check_choice, check_pipeline, check_prompt, check_seed, describe
from .locks import pipeline_lock
from .steps import StepRecorder, timestep_value
from .trace import Trace

ATTENTION_MODES = (False, True, "aggregate", "per_layer")


class NonFiniteWarning(UserWarning):
    """NaN or inf appeared in the latents or the prediction during a traced run."""


class Tracing:
    """What ``tracing(pipe)`` yields: pass ``callback`` to the pipeline, then call ``to_trace``."""

    def __init__(self, pipe, attention=False, attention_options: dict | None = None):
        check_pipeline(pipe)
        self.pipe = pipe
        self.device = pipe.device  # read once: it walks every module
        self.steps = StepRecorder(pipe)
        self.attention = _attention_recorder(pipe, attention, attention_options or {})
        if self.attention is not None:  # steps are told apart by the scheduler's steps, not by reading timesteps
            self.attention.steps_taken = lambda: len(self.steps.records)

    @property
    def callback(self):
        """Give this to the pipeline as ``callback_on_step_end``."""
        return self.steps.callback

    def to_trace(self, output=None, *, prompt=None, seed=None, params: dict | None = None,
                 inputs: dict | None = None) -> Trace:
        """Assemble the Trace of the recorded call. ``output``: what the pipeline returned."""
        records = self.steps.records
        if self.steps.foreign_calls:
            raise RuntimeError(
                f"another thread called this pipeline's UNet or scheduler {self.steps.foreign_calls} time(s) during "
                "the traced run; they share the scheduler's state, so this run and its trace are not trustworthy. "
                "Call one pipeline from one thread at a time (sdexplore.trace calls on one pipeline take turns)")
        if not records:
            raise RuntimeError("nothing was recorded: call the pipeline inside the `with tracing(pipe)` block, "
                               "in the thread that entered it")
        if seed is not None:
            seed = check_seed(seed)
        prompts = check_prompt(prompt, optional=True)
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict of the call's keywords, got {describe(params)}")
        inputs = _check_inputs(inputs)
        _check_step_counts(self.attention, records)
        _warn_non_finite(records)
        call_kwargs = params or {}
        by_encoder = [token_tables(self.pipe, p, **call_kwargs) for p in prompts]
        tables = [sequence_tokens(self.pipe, p, tables=t, **call_kwargs) for p, t in zip(prompts, by_encoder)]
        steps = self.steps
        uncond, text = steps.conditioning("text")
        pooled_uncond, pooled = steps.conditioning("pooled")
        time_ids_uncond, time_ids = steps.conditioning("time_ids")
        images = _output_images(output)
        run_params = {"prompt": prompt, "seed": seed, **describe_pipeline(self.pipe, self.device), **(params or {})}
        attention = self.attention.result(tables) if self.attention is not None else None
        return Trace(
            timesteps=torch.tensor([timestep_value(r) for r in records], dtype=torch.float32),
            latents=_to_cpu(torch.stack([records[0].latents_in] + [r.latents_out for r in records])),
            x0=_to_cpu(torch.stack([r.x0 for r in records])),
            noise_pred=_to_cpu(torch.stack([r.noise_pred for r in records])),
            noise_pred_text=_to_cpu(torch.stack([r.noise_pred_text for r in records])),
            noise_pred_uncond=_to_cpu(_stack_optional([r.noise_pred_uncond for r in records])),
            scheduler_x0=_to_cpu(_stack_optional([r.scheduler_x0 for r in records])),
            prompt_embeds=_to_cpu(text),
            negative_prompt_embeds=_to_cpu(uncond),
            images=images,
            tokens=tables,
            params=_json_safe(run_params),
            inputs=inputs,
            attention=attention,
            token_tables={name: [t[name] for t in by_encoder] for name in (by_encoder[0] if by_encoder else {})},
            pooled_prompt_embeds=_to_cpu(pooled),
            negative_pooled_prompt_embeds=_to_cpu(pooled_uncond),
            time_ids=_to_cpu(time_ids),
            negative_time_ids=_to_cpu(time_ids_uncond),
            sigmas=None if any(r.sigma is None for r in records) else
            torch.tensor([r.sigma for r in records], dtype=torch.float32),
        )


@contextlib.contextmanager
def tracing(pipe, *, attention=False, **attention_options):
    """Record every step of the pipeline calls made inside the block.

    >>> with sdexplore.tracing(pipe) as rec:
    ...     out = pipe("a cat", generator=torch.Generator().manual_seed(0), callback_on_step_end=rec.callback)
    >>> run = rec.to_trace(out, prompt="a cat", seed=0)
    """
    recorder = Tracing(pipe, attention, attention_options)
    with contextlib.ExitStack() as stack:
        stack.enter_context(pipeline_lock(pipe))
        stack.enter_context(recorder.steps)
        if recorder.attention is not None:
            stack.enter_context(recorder.attention)
        yield recorder


def trace(pipe, prompt: str | list[str], *, seed: int, attention=False, attention_options: dict | None = None,
          **pipeline_kwargs) -> Trace:
    """Run ``pipe`` once on ``prompt`` with a fixed ``seed`` and return what every step did.

    pipe: a Stable Diffusion 1.x/2.x, SDXL, SD3/3.5 or Flux.1 pipeline (sdexplore.capture.families).

    pipeline_kwargs are diffusers' own: num_inference_steps, guidance_scale, negative_prompt,
    image + strength (img2img), image + mask_image (inpainting), height, width, ...
    A txt2img pipeline given ``image`` (and ``mask_image``) is switched to its img2img
    (inpainting) sibling, sharing the same weights.
    attention: False, True/"aggregate" (memory-bounded maps) or "per_layer" (every step and layer).

    Every argument is checked before anything runs (sdexplore.capture.inputs): pictures are
    converted where that is unambiguous (RGBA on white, grayscale to RGB, numpy/torch pictures in
    diffusers' ranges), keywords the pipeline does not take are refused with the closest name,
    keywords that would do nothing are left out with a warning. Traces of one pipeline from several
    threads take turns (one lock per pipeline).
    """
    check_pipeline(pipe)
    seed = check_seed(seed)
    options = _check_attention(attention, attention_options)
    if "generator" in pipeline_kwargs:
        raise TypeError("trace() makes its own generator from seed=...; do not pass generator=")
    kwargs = {name: value for name, value in pipeline_kwargs.items()
              if not (name in ("image", "mask_image") and value is None)}
    if "mask_image" in kwargs and "image" not in kwargs:
        raise ValueError("mask_image needs image=: the picture to inpaint")
    with pipeline_lock(pipe):
        pipe = _pipeline_for(pipe, kwargs)
        call = check_call(pipe, prompt, kwargs)
        kwargs = call.kwargs
        user_callback = kwargs.pop("callback_on_step_end", None)
        user_inputs = kwargs.pop("callback_on_step_end_tensor_inputs", None)
        with tracing(pipe, attention=attention, **options) as recorder, _clip_skip_support(pipe, kwargs):
            generator = torch.Generator(device=_generator_device(recorder.device)).manual_seed(seed)
            callback, tensor_inputs = _chain_callbacks(recorder.callback, user_callback, user_inputs)
            output = pipe(prompt, generator=generator, callback_on_step_end=callback,
                          callback_on_step_end_tensor_inputs=tensor_inputs, **kwargs)
        return recorder.to_trace(output, prompt=prompt, seed=seed, params=_json_params(kwargs), inputs=call.inputs)


def describe_pipeline(pipe, device: torch.device | None = None) -> dict:
    """JSON-safe facts about the pipeline that shape a trace (and that previews need: channels, VAE factors).

    device: ``pipe.device`` when the caller already read it (reading it walks every module)."""
    scheduler, denoiser, family = pipe.scheduler, denoiser_of(pipe), family_of(pipe)
    facts = {
        "model": str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
        "pipeline": type(pipe).__name__,
        "family": family.name,
        "denoiser": type(denoiser).__name__,
        "scheduler": type(scheduler).__name__,
        "scheduler_config": _json_safe(dict(scheduler.config)),
        "prediction_type": scheduler.config.get("prediction_type", None) or prediction_kind(pipe),
        "prediction_kind": prediction_kind(pipe),
        "latent_channels": latent_channels(pipe),
        "packed_latents": family.packed,
    }
    if family.denoiser == "unet":
        facts["unet_in_channels"] = int(denoiser.config.in_channels)
    else:
        facts["denoiser_in_channels"] = int(denoiser.config.in_channels)
    shift = pipe.vae.config.get("shift_factor", None)
    facts.update({
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "vae_shift_factor": None if shift is None else float(shift),
        "dtype": str(denoiser.dtype).removeprefix("torch."),
        "device": str(device if device is not None else pipe.device),
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
    })
    return facts


# --- checks and small helpers ---------------------------------------------------------------


def _pipeline_for(pipe, kwargs: dict):
    """Switch a txt2img pipeline to img2img/inpainting when the kwargs ask for it."""
    accepted = inspect.signature(pipe.__call__).parameters
    if "mask_image" in kwargs and "mask_image" not in accepted:
        return as_inpaint(pipe)
    if "image" in kwargs and "image" not in accepted:
        return as_img2img(pipe)
    return pipe


def _generator_device(device: torch.device) -> str:
    """Where trace()'s generator lives: the pipeline's device, but the CPU for CPU and MPS pipelines."""
    return "cpu" if device.type in ("cpu", "mps") else str(device)


def _chain_callbacks(ours, theirs, their_inputs):
    """One callback_on_step_end: the user's runs first, then we record the latents the pipeline keeps."""
    inputs = list(dict.fromkeys(["latents", *(their_inputs or getattr(theirs, "tensor_inputs", None) or [])]))
    if theirs is None:
        return ours, inputs

    def both(pipe, step_index, timestep, callback_kwargs):
        result = theirs(pipe, step_index, timestep, callback_kwargs) or {}
        ours(pipe, step_index, timestep, {**callback_kwargs, **result})
        return result

    return both, inputs


def _stack_optional(values: list) -> torch.Tensor | None:
    return None if any(v is None for v in values) else torch.stack(values)


def _to_cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """One move of a stacked capture to the CPU, float32 (a no-op copy on a CPU run)."""
    return None if tensor is None else tensor.detach().to(device="cpu", dtype=torch.float32)


def _check_step_counts(attention, records) -> None:
    """The attention recorder's steps must be the step recorder's: refuse a silent misalignment."""
    counted = getattr(attention, "num_steps", None)
    if counted is not None and counted != len(records):
        raise RuntimeError(
            f"the attention recorder counted {counted} denoiser steps but the scheduler made {len(records)}: this "
            "pipeline calls its denoiser more than once per step (e.g. self-attention guidance), so the maps "
            "cannot be matched to the steps; trace it with attention=False")


@contextlib.contextmanager
def _clip_skip_support(pipe, kwargs: dict):
    """Let diffusers' clip_skip find ``text_encoder.text_model`` with transformers >= 5.

    transformers 5 flattened CLIPTextModel (its final_layer_norm is on the model itself), while
    diffusers' encode_prompt still reads ``text_encoder.text_model.final_layer_norm``. For the run
    only, the encoder answers ``text_model`` with itself (a plain attribute, not a submodule).
    """
    encoder = getattr(pipe, "text_encoder", None)
    needed = (kwargs.get("clip_skip") is not None and encoder is not None
              and not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm"))
    if not needed:
        yield
        return
    encoder.__dict__["text_model"] = encoder
    try:
        yield
    finally:
        encoder.__dict__.pop("text_model", None)


def _check_attention(attention, options) -> dict:
    """attention= and attention_options= of trace(); returns the options as a dict."""
    check_choice("attention", attention, ATTENTION_MODES)
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"attention_options must be a dict such as {{'keep': 'summed'}}, got {describe(options)}")
    if options and attention is False:
        raise ValueError("attention_options were given but attention=False records no attention; "
                         "pass attention=True (or 'per_layer') too")
    return options


def _check_attention_options(options: dict) -> None:
    from .attention import AttentionRecorder

    known = [n for n in inspect.signature(AttentionRecorder.__init__).parameters if n not in ("self", "pipe", "mode")]
    for name in options:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown attention option {name!r}{hint} (options: {', '.join(known)})")


def _check_inputs(inputs) -> dict[str, torch.Tensor]:
    if inputs is None:
        return {}
    if not isinstance(inputs, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in inputs.items()):
        raise TypeError(f"inputs must be a dict of name -> torch.Tensor (e.g. {{'image': uint8 [H, W, 3]}}), "
                        f"got {describe(inputs)}")
    return inputs


def _output_images(output) -> list[Image.Image]:
    """The pipeline's pictures as PIL, whatever output_type was: pil, np [B, H, W, 3], pt [B, 3, H, W].

    None for output_type="latent" (nothing was decoded; the latents are in the trace)."""
    images = output[0] if isinstance(output, tuple) else getattr(output, "images", None)
    if images is None:
        return []
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:  # output_type="latent": nothing decoded
            return []
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            return []
        return [Image.fromarray(a) for a in (images * 255).round().clip(0, 255).astype(np.uint8)]
    return [im for im in images if isinstance(im, Image.Image)]


def _warn_non_finite(records) -> None:
    """One warning naming the first step whose latents or prediction hold NaN/inf."""
    if not torch.isfinite(records[0].latents_in).all():
        warnings.warn("the starting latents x_T contain NaN or inf values: the whole trace is meaningless",
                      NonFiniteWarning, stacklevel=3)
        return
    for i, record in enumerate(records):
        for label, tensor in (("noise prediction", record.noise_pred), ("latents after the step", record.latents_out)):
            if not torch.isfinite(tensor).all():
                warnings.warn(f"step {i} (timestep {timestep_value(record):g}): the {label} contain NaN or inf values; "
                              "this step and every later one are meaningless (fp16 overflow? an extreme "
                              "guidance_scale? a callback?)", NonFiniteWarning, stacklevel=3)
                return


def _json_params(kwargs: dict) -> dict:
    return {name: _json_safe(value) for name, value in kwargs.items()}


def _json_safe(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, Image.Image):
        return f"<PIL image {value.size[0]}x{value.size[1]} {value.mode}>"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<{type(value).__name__} shape={list(value.shape)}>"
    return repr(value)


def _attention_recorder(pipe, attention, options: dict):
    check_choice("attention", attention, ATTENTION_MODES)
    if attention is False:
        if options:
            raise ValueError("attention options were given but attention=False records no attention; "
                             "pass attention=True (or 'per_layer') too")
        return None
    _check_attention_options(options)
    from .attention import AttentionRecorder

    mode = "aggregate" if attention is True else attention
    return AttentionRecorder(pipe, mode=mode, **options)
