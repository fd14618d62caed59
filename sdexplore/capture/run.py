"""Run a pipeline once and return its Trace; or trace any pipeline call the user writes.

``trace(pipe, prompt, seed=0, **diffusers_kwargs)`` is the one obvious way in. The context
manager ``tracing(pipe)`` records the calls made inside it, for code that calls the pipeline
itself. Either way the pipeline is left exactly as it was found, also when the run raises.
"""

from __future__ import annotations

import contextlib
import inspect

import diffusers
import numpy as np
import torch
from PIL import Image

from ..models import as_img2img, as_inpaint
from ..prompts import token_table
from .steps import StepRecorder
from .trace import Trace

ATTENTION_MODES = (False, True, "aggregate", "per_layer")


class Tracing:
    """What ``tracing(pipe)`` yields: pass ``callback`` to the pipeline, then call ``to_trace``."""

    def __init__(self, pipe, attention=False, attention_options: dict | None = None):
        self.pipe = pipe
        self.steps = StepRecorder(pipe)
        self.attention = _attention_recorder(pipe, attention, attention_options or {})

    @property
    def callback(self):
        """Give this to the pipeline as ``callback_on_step_end``."""
        return self.steps.callback

    def to_trace(self, output=None, *, prompt=None, seed=None, params: dict | None = None,
                 inputs: dict | None = None) -> Trace:
        """Assemble the Trace of the recorded call. ``output``: what the pipeline returned."""
        records = self.steps.records
        if not records:
            raise RuntimeError("nothing was recorded: call the pipeline inside the `with tracing(pipe)` block")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        tokenizer = self.pipe.tokenizer
        tables = [token_table(tokenizer, p) for p in prompts]
        uncond, text = _split_embeddings(self.steps.prompt_embeds, records[0])
        images = list(getattr(output, "images", []) or [])
        images = [im for im in images if isinstance(im, Image.Image)]
        run_params = {"prompt": prompt, "seed": seed, **describe_pipeline(self.pipe), **(params or {})}
        attention = self.attention.result(tables) if self.attention is not None else None
        return Trace(
            timesteps=torch.tensor([r.timestep for r in records], dtype=torch.float32),
            latents=torch.stack([records[0].latents_in] + [r.latents_out for r in records]),
            x0=torch.stack([r.x0 for r in records]),
            noise_pred=torch.stack([r.noise_pred for r in records]),
            noise_pred_text=torch.stack([r.noise_pred_text for r in records]),
            noise_pred_uncond=_stack_optional([r.noise_pred_uncond for r in records]),
            scheduler_x0=_stack_optional([r.scheduler_x0 for r in records]),
            prompt_embeds=text,
            negative_prompt_embeds=uncond,
            images=images,
            tokens=tables,
            params=run_params,
            inputs=inputs or {},
            attention=attention,
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
        stack.enter_context(recorder.steps)
        if recorder.attention is not None:
            stack.enter_context(recorder.attention)
        yield recorder


def trace(pipe, prompt: str | list[str], *, seed: int, attention=False, attention_options: dict | None = None,
          **pipeline_kwargs) -> Trace:
    """Run ``pipe`` once on ``prompt`` with a fixed ``seed`` and return what every step did.

    pipeline_kwargs are diffusers' own: num_inference_steps, guidance_scale, negative_prompt,
    image + strength (img2img), image + mask_image (inpainting), height, width, ...
    A txt2img pipeline given ``image`` (and ``mask_image``) is switched to its img2img
    (inpainting) sibling, sharing the same weights.
    attention: False, True/"aggregate" (memory-bounded maps) or "per_layer" (every step and layer).
    """
    seed = _check_seed(seed)
    _check_kwargs(pipeline_kwargs)
    pipe = _pipeline_for(pipe, pipeline_kwargs)
    _check_images(pipe, pipeline_kwargs)
    generator = torch.Generator(device=_generator_device(pipe)).manual_seed(seed)
    user_callback = pipeline_kwargs.pop("callback_on_step_end", None)
    user_inputs = pipeline_kwargs.pop("callback_on_step_end_tensor_inputs", None)
    with tracing(pipe, attention=attention, **(attention_options or {})) as recorder:
        callback, tensor_inputs = _chain_callbacks(recorder.callback, user_callback, user_inputs)
        output = pipe(prompt, generator=generator, callback_on_step_end=callback,
                      callback_on_step_end_tensor_inputs=tensor_inputs, **pipeline_kwargs)
    return recorder.to_trace(output, prompt=prompt, seed=seed, params=_json_params(pipeline_kwargs),
                             inputs=_input_images(pipeline_kwargs))


def describe_pipeline(pipe) -> dict:
    """JSON-safe facts about the pipeline that shape a trace."""
    scheduler = pipe.scheduler
    return {
        "model": str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
        "pipeline": type(pipe).__name__,
        "scheduler": type(scheduler).__name__,
        "scheduler_config": _json_safe(dict(scheduler.config)),
        "prediction_type": scheduler.config.get("prediction_type", "epsilon"),
        "unet_in_channels": int(pipe.unet.config.in_channels),
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
    }


# --- checks and small helpers ---------------------------------------------------------------


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (same seed, same trace), not {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def _check_kwargs(kwargs: dict) -> None:
    if "generator" in kwargs:
        raise TypeError("trace() makes its own generator from seed=...; do not pass generator=")
    if "latents" in kwargs and kwargs["latents"] is not None:
        return
    steps = kwargs.get("num_inference_steps", 50)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
    strength = kwargs.get("strength")
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")


def _pipeline_for(pipe, kwargs: dict):
    """Switch a txt2img pipeline to img2img/inpainting when the kwargs ask for it."""
    accepted = inspect.signature(pipe.__call__).parameters
    if "mask_image" in kwargs and "mask_image" not in accepted:
        return as_inpaint(pipe)
    if "image" in kwargs and "image" not in accepted:
        return as_img2img(pipe)
    return pipe


def _check_images(pipe, kwargs: dict) -> None:
    image, mask = kwargs.get("image"), kwargs.get("mask_image")
    if mask is not None and image is None:
        raise ValueError("mask_image needs image=: the picture to inpaint")
    sizes = {name: _size_of(value) for name, value in (("image", image), ("mask_image", mask)) if value is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"image and mask_image must have the same size (width, height), got {sizes}")
    factor = getattr(pipe, "vae_scale_factor", 8)
    for name, size in sizes.items():
        if size is not None and (size[0] % factor or size[1] % factor):
            raise ValueError(f"{name} is {size[0]}x{size[1]}; width and height must be multiples of {factor}")


def _size_of(image) -> tuple[int, int] | None:
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return (image.shape[-2], image.shape[-3]) if image.ndim == 3 and image.shape[-1] in (1, 3, 4) \
            else (image.shape[-1], image.shape[-2])
    if isinstance(image, torch.Tensor) and image.ndim >= 2:
        return (image.shape[-1], image.shape[-2])
    return None


def _generator_device(pipe) -> str:
    return "cpu" if pipe.device.type in ("cpu", "mps") else str(pipe.device)


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


def _split_embeddings(embeds: torch.Tensor | None, first_record) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if embeds is None:
        return None, None
    if first_record.noise_pred_uncond is not None and embeds.shape[0] % 2 == 0:
        uncond, text = embeds.chunk(2)
        return uncond, text
    return None, embeds


def _input_images(kwargs: dict) -> dict[str, torch.Tensor]:
    images = {}
    for name in ("image", "mask_image"):
        value = kwargs.get(name)
        if isinstance(value, Image.Image):
            images[name] = torch.from_numpy(np.array(value.convert("RGB" if name == "image" else "L"))).clone()
    return images


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
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if attention is False:
        return None
    from .attention import AttentionRecorder

    mode = "aggregate" if attention is True else attention
    return AttentionRecorder(pipe, mode=mode, **options)
