"""Load a diffusers pipeline: the shipped toy model, a tiny random one, a hub id or a folder.

Whatever is loaded comes back as a plain diffusers pipeline, so everything users know about
diffusers still holds. ``scheduler=`` swaps the scheduler by a short lower-case name, configured
from the model's own scheduler config so that betas and prediction type stay right.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)

from .notices import quiet_loading
from .tiny import TINY_KINDS, TINY_WORDS, tiny_pipeline  # noqa: F401 (re-exported)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}

TOY_WEIGHTS = Path(__file__).parent / "toy" / "weights"


class ModelNotAvailableError(OSError):
    """The requested weights are not on this machine and cannot be downloaded."""


def load_pipeline(
    model: str | os.PathLike = "toy",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
) -> DiffusionPipeline:
    """Return a ready diffusers pipeline.

    model: "toy" (the shipped toy-world model), "tiny" (random SD1-shaped, for tests; also
    "tiny-sd2", "tiny-inpaint", "tiny-sdxl", "tiny-sd3", "tiny-flux"), a local diffusers folder, or a hub id such as
    "stable-diffusion-v1-5/stable-diffusion-v1-5" (loaded from the local cache or the network).
    scheduler: one of ``SCHEDULERS`` ("ddim", "ddpm", "euler", "euler_a", "dpm++", "pndm").
    """
    model, device, dtype = _check_load_arguments(model, device, dtype)
    if scheduler is not None:
        scheduler_class(scheduler)  # fail before any loading work
    name = str(model)
    with quiet_loading():
        if name in TINY_KINDS:
            pipe = tiny_pipeline(name)
        elif name == "toy":
            pipe = _load_toy()
        else:
            pipe = _from_pretrained(name)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype) if (device or dtype) else pipe


def _check_load_arguments(model, device, dtype):
    """model: str or path; device: str or torch.device that torch knows; dtype: a torch float dtype or its name."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name ('toy', 'tiny', a hub id) or a folder path, got {type(model).__name__}")
    if not str(model).strip():
        raise ValueError("model is empty: give 'toy', 'tiny', a hub id or a folder path")
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', or a torch.device, got {device!r}")
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") \
                from error
    if dtype is not None:
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        dtype = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype (torch.float32, torch.float16, torch.bfloat16) "
                             f"or its name, got {dtype!r}")
    return model, device, dtype


def scheduler_class(name: str):
    """The diffusers scheduler class for a short name; ValueError naming the choices if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"scheduler must be a name, one of: {', '.join(SCHEDULERS)}; got {name!r}")
    try:
        return SCHEDULERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}"
        ) from None


def make_scheduler(name: str, config):
    """A scheduler of the named kind built from another scheduler's config (keeps betas and prediction type)."""
    return scheduler_class(name).from_config(config)


def as_img2img(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """The img2img pipeline sharing ``pipe``'s components (no copy of the weights)."""
    return _quiet(AutoPipelineForImage2Image.from_pipe(pipe))


def as_inpaint(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """The inpainting pipeline sharing ``pipe``'s components (4-channel UNet: per-step blending)."""
    return _quiet(AutoPipelineForInpainting.from_pipe(pipe))


def with_text_encoder(pipe: DiffusionPipeline, text_encoder) -> DiffusionPipeline:
    """The same kind of pipeline sharing ``pipe``'s other components (no copy of the weights), reading
    ``text_encoder`` instead of its own, e.g. a deeper tower of the same CLIP to sweep clip_skip over."""
    return _quiet(type(pipe).from_pipe(pipe, text_encoder=text_encoder))


def _quiet(pipe: DiffusionPipeline) -> DiffusionPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_toy() -> DiffusionPipeline:
    if not (TOY_WEIGHTS / "model_index.json").exists():
        raise ModelNotAvailableError(
            f"the toy model's weights are not in {TOY_WEIGHTS}; train them with "
            "`python -m sdexplore.toy.train` or use load_pipeline('tiny')"
        )
    return StableDiffusionPipeline.from_pretrained(TOY_WEIGHTS, safety_checker=None, requires_safety_checker=False)


def _from_pretrained(name: str) -> DiffusionPipeline:
    """Real loading through diffusers; one clear error when the weights are not to be had."""
    path = Path(name).expanduser()
    if path.exists() and not (path / "model_index.json").exists():
        raise ModelNotAvailableError(f"{path} is not a diffusers pipeline folder (no model_index.json in it)")
    source = str(path) if path.exists() else name
    try:
        # SD 1.x/2.x folders name a safety checker: load without it (the other families have none)
        has_checker = "safety_checker" in DiffusionPipeline.load_config(source)
        return DiffusionPipeline.from_pretrained(source, **({"safety_checker": None} if has_checker else {}))
    except (OSError, ValueError) as error:
        if path.exists():
            raise
        raise ModelNotAvailableError(
            f"could not load {name!r}: its weights are not in the local Hugging Face cache and could not be "
            "downloaded. On a machine with network access run "
            f"`huggingface-cli download {name}` (or `DiffusionPipeline.from_pretrained({name!r})` once), "
            f"then load it here; or pass a local folder saved with `pipe.save_pretrained(folder)`. "
            f"Underlying error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
