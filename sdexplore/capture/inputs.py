"""The one rule for what a user hands sdexplore: use it as meant, or refuse it clearly.

Every entry point (``trace``, ``tracing``/``to_trace``, ``load_pipeline``, ``Trace.save/load``,
the studies through ``trace``) checks its inputs with the functions here, one per kind of input.
An input is either converted where the conversion is unambiguous (an RGBA picture composited on
``BACKGROUND``, a grayscale picture to RGB, numpy/torch pictures in the ranges diffusers
documents) or refused with a ValueError/TypeError that names the argument, what was given and
what is allowed.

Pictures go to the pipeline as PIL RGB when they are 8-bit (PIL, uint8 arrays, float arrays that
hold k/255 values), otherwise as float32 numpy [K, H, W, 3] in [0, 1]: exactly what diffusers'
own image processor makes of a PIL picture, so the same picture traces the same whatever its
container. Masks go as PIL "L" (diffusers binarises them at 0.5, which 8-bit masks keep exactly).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BACKGROUND = (255, 255, 255)  # transparent pixels of an RGBA/LA picture are composited on white
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
IMAGE_RULE = ("a PIL image, a numpy array H x W x 3 (uint8 0..255 or float 0..1; H x W x 4 is composited on white, "
              "H x W is gray), a torch tensor 3 x H x W (float 0..1 or uint8), a batch of those, or a list of them")
MASK_RULE = ("a PIL image (white = repaint, black = keep), a numpy array or torch tensor H x W "
             "(bool, uint8 0..255 or float 0..1), a batch of those, or a list of them")
TRACE_KEYWORDS = ("seed", "attention", "attention_options")


# --- describing what was given ------------------------------------------------------------------


def describe(value) -> str:
    """A short description of a value for error messages: type, and shape/range/size where it helps."""
    if isinstance(value, Image.Image):
        return f"a PIL image {value.size[0]}x{value.size[1]} mode {value.mode}"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"a {type(value).__name__} of shape {list(value.shape)}, dtype {dtype}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 60 else f"a string of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"{value!r} ({type(value).__name__})"


# --- numbers and names ----------------------------------------------------------------------------


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (numpy ints too, not bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        allowed = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an int {allowed}, got {value}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None) -> float:
    """A finite real number (not bool) >= minimum (or > above) and <= maximum."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if (minimum is not None and value < minimum) or (above is not None and value <= above) \
            or (maximum is not None and value > maximum):
        low = f"[{minimum}" if minimum is not None else (f"({above}" if above is not None else "(-inf")
        high = f"{maximum}]" if maximum is not None else "inf)"
        raise ValueError(f"{name} must be in {low}, {high}, got {value}")
    return value


def check_choice(name: str, value, choices) -> object:
    """One of ``choices``; the error suggests the closest one."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {describe(value)}"
                         + _suggestion(value, [c for c in choices if isinstance(c, str)]))
    return value


def check_seed(seed) -> int:
    """The run's seed: an int in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (same seed, same trace), not {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def check_prompt(prompt, name: str = "prompt", *, optional: bool = False) -> list[str]:
    """A string or a non-empty list of strings; returned as a list. None only when ``optional``."""
    if prompt is None:
        if optional:
            return []
        raise TypeError(f"{name} must be a string or a list of strings, got None")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError(f"{name} is an empty list: give at least one prompt (\"\" is the empty prompt)")
        bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] must be a string, got {describe(prompt[bad[0]])}")
        return list(prompt)
    raise TypeError(f"{name} must be a string or a list of strings, got {describe(prompt)}")


def check_pipeline(pipe, name: str = "pipe") -> None:
    """A diffusers pipeline of a family sdexplore traces (SD 1.x/2.x, SDXL, SD3, Flux): denoiser, VAE, scheduler."""
    from .families import family_of

    has_denoiser = getattr(pipe, "unet", None) is not None or getattr(pipe, "transformer", None) is not None
    if not callable(pipe) or not has_denoiser or not all(hasattr(pipe, part) for part in ("scheduler", "vae")):
        raise TypeError(f"{name} must be a diffusers Stable Diffusion, SDXL, SD3 or Flux pipeline (e.g. "
                        "sdexplore.load_pipeline('toy')) with a unet or transformer, a vae and a scheduler, "
                        f"got {describe(pipe)}")
    try:
        family_of(pipe)
    except TypeError as error:
        raise TypeError(f"{name}: {error}") from None


def check_path(path, name: str = "path") -> Path:
    """A file path (str or os.PathLike), not empty, not a folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {describe(path)}")
    if str(path) == "":
        raise ValueError(f"{name} is empty: give a file path such as 'run.safetensors'")
    path = Path(path)
    if path.is_dir():
        example = str(path / "run.safetensors")
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file path such as {example!r}")
    return path


def check_tensor(name: str, value, *, ndim: int | None = None, shape: tuple | None = None) -> torch.Tensor:
    """A torch tensor of finite numbers with the expected number of dimensions / shape."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {list(value.shape)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)} for this call, got {list(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(value.shape)})")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return value


def _suggestion(word, names) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- keywords --------------------------------------------------------------------------------------


def pipeline_parameters(pipe) -> dict[str, inspect.Parameter]:
    """The named keyword parameters of ``pipe.__call__`` (its catch-all **kwargs excluded)."""
    parameters = inspect.signature(pipe.__call__).parameters
    return {name: p for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_keywords(pipe, kwargs: dict, *, also_valid=TRACE_KEYWORDS) -> None:
    """Every keyword must be one ``pipe.__call__`` names; the error suggests the closest valid name."""
    accepted = pipeline_parameters(pipe)
    for name in kwargs:
        if name in accepted:
            continue
        if name == "strength":
            raise ValueError("strength needs image=: it is how much of the input picture img2img repaints "
                             "(pass image=... too, or leave strength out for text-to-image)")
        if name in ("height", "width") and "image" in kwargs and "mask_image" not in kwargs:
            raise ValueError(f"{name} cannot be set in img2img: the output has the size of image= "
                             "(resize the image instead)")
        raise TypeError(f"{type(pipe).__name__} does not take the keyword {name!r}"
                        + _suggestion(name, [*accepted, *also_valid])
                        + f" (it takes: {', '.join(n for n in accepted if n not in ('self', 'prompt'))})")


def default_of(pipe, name: str, fallback=None):
    """The default value ``pipe.__call__`` gives keyword ``name``."""
    parameter = pipeline_parameters(pipe).get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


# --- img2img strength ------------------------------------------------------------------------------


def steps_run(num_inference_steps: int, strength: float) -> int:
    """Denoising steps diffusers' img2img/inpainting runs: min(int(steps * strength), steps)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def smallest_strength(num_inference_steps: int) -> float:
    """The smallest strength that runs at least one step with ``num_inference_steps`` steps."""
    strength = 1.0 / num_inference_steps
    while steps_run(num_inference_steps, strength) < 1:
        strength = math.nextafter(strength, 2.0)
    return strength


def check_strength(strength, num_inference_steps: int) -> float:
    """strength in (0, 1] that runs at least one denoising step."""
    strength = check_number("strength", strength, above=0.0, maximum=1.0)
    if steps_run(num_inference_steps, strength) < 1:
        fewest = max(1, math.ceil(1.0 / strength))
        while steps_run(fewest, strength) < 1:
            fewest += 1
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} runs "
            f"int({num_inference_steps} * {strength}) = 0 denoising steps: nothing would happen. "
            f"With {num_inference_steps} steps the smallest strength that runs a step is "
            f"{smallest_strength(num_inference_steps):.6g}; or keep strength={strength} with "
            f"num_inference_steps >= {fewest}")
    return strength


# --- pictures --------------------------------------------------------------------------------------


@dataclass
class Pictures:
    """Checked pictures: what goes to the pipeline, and what the Trace stores."""

    for_pipeline: object            # one PIL image, a list of them, or float32 numpy [K, H, W, 3] in [0, 1]
    stored: torch.Tensor            # uint8 [H, W, 3] / [K, H, W, 3] (float32 in [0, 1] for non-8-bit input)
    count: int
    size: tuple[int, int]           # (width, height)
    notes: list[str] = field(default_factory=list)


def as_images(value, name: str = "image") -> Pictures:
    """Pictures for ``image=``: every unambiguous form converted to RGB, everything else refused."""
    items = _batch_items(value, name, IMAGE_RULE)
    pictures = [_one_picture(item, f"{name}[{i}]" if len(items) > 1 else name) for i, item in enumerate(items)]
    size = _common_size(pictures, name)
    if all(isinstance(p, Image.Image) for p in pictures):
        stored = torch.from_numpy(np.stack([np.asarray(p) for p in pictures]))
        for_pipeline = pictures[0] if len(pictures) == 1 else pictures
    else:
        arrays = [np.asarray(p, dtype=np.float32) / 255.0 if isinstance(p, Image.Image) else p for p in pictures]
        for_pipeline = np.stack(arrays).astype(np.float32)
        stored = torch.from_numpy(for_pipeline.copy())
    return Pictures(for_pipeline, stored[0] if len(pictures) == 1 else stored, len(pictures), size)


def as_masks(value, name: str = "mask_image") -> Pictures:
    """Masks for ``mask_image=`` as PIL "L" (white = repaint); ambiguous forms (RGBA, 3-channel arrays) refused."""
    items = _batch_items(value, name, MASK_RULE)
    masks = [_one_mask(item, f"{name}[{i}]" if len(items) > 1 else name) for i, item in enumerate(items)]
    size = _common_size(masks, name)
    stored = torch.from_numpy(np.stack([np.asarray(m) for m in masks]))
    return Pictures(masks[0] if len(masks) == 1 else masks, stored[0] if len(masks) == 1 else stored,
                    len(masks), size)


def _batch_items(value, name: str, rule: str) -> list:
    """Split a picture argument into single pictures (PIL, 2-/3-D arrays or tensors)."""
    if isinstance(value, Image.Image):
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list; allowed: {rule}")
        for i, item in enumerate(value):
            if not isinstance(item, (Image.Image, np.ndarray, torch.Tensor)) or \
                    (not isinstance(item, Image.Image) and item.ndim not in (2, 3)):
                raise TypeError(f"{name}[{i}] is {describe(item)}; each item must be one picture: {rule}")
        return list(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim in (2, 3):
            return [value]
        if value.ndim == 4:
            if value.shape[0] == 0:
                raise ValueError(f"{name} is an empty batch (shape {list(value.shape)}); allowed: {rule}")
            return list(value)
        raise ValueError(f"{name} is {describe(value)}; allowed: {rule}")
    raise TypeError(f"{name} must be {rule}; got {describe(value)}")


def _common_size(pictures: list[Image.Image | np.ndarray], name: str) -> tuple[int, int]:
    sizes = [p.size if isinstance(p, Image.Image) else (p.shape[1], p.shape[0]) for p in pictures]
    if len(set(sizes)) > 1:
        raise ValueError(f"the pictures in {name} have different sizes {sizes}: a batch needs one size")
    if min(sizes[0]) < 1:
        raise ValueError(f"{name} is empty ({sizes[0][0]}x{sizes[0][1]} pixels)")
    return sizes[0]


def _one_picture(value, name: str) -> Image.Image | np.ndarray:
    """One picture as PIL RGB (8-bit) or float32 numpy [H, W, 3] in [0, 1]."""
    if isinstance(value, Image.Image):
        return _pil_rgb(value, name)
    if isinstance(value, torch.Tensor):
        value = _tensor_to_hwc(value, name, channels=(1, 3), rule=IMAGE_RULE)
    else:
        value = _numpy_hwc(value, name, channels=(1, 3, 4), rule=IMAGE_RULE)
    if value.dtype == np.uint8:
        return _pil_rgb(Image.fromarray(value[..., 0] if value.shape[-1] == 1 else value), name)
    array = _unit_floats(value, name, IMAGE_RULE)
    if array.shape[-1] == 4:
        alpha = array[..., 3:]
        array = array[..., :3] * alpha + np.asarray(BACKGROUND, np.float64) / 255.0 * (1.0 - alpha)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    eight_bit = np.round(array * 255.0)
    if np.abs(array * 255.0 - eight_bit).max() < 1e-3:  # an 8-bit picture stored as floats: trace it as one
        return Image.fromarray(eight_bit.astype(np.uint8))
    return array.astype(np.float32)


def _pil_rgb(image: Image.Image, name: str) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    if image.mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise ValueError(f"{name} is {describe(image)}: mode {image.mode} has no unambiguous 8-bit RGB reading; "
                     f"convert it first (e.g. image.convert('RGB') after scaling); allowed: {IMAGE_RULE}")


def _numpy_hwc(value: np.ndarray, name: str, *, channels: tuple, rule: str) -> np.ndarray:
    """A numpy picture as [H, W, C]."""
    if value.ndim == 2:
        value = value[..., None]
    if value.shape[-1] not in channels:
        hint = ""
        if value.shape[0] in channels:
            hint = f" (channels first? numpy pictures are height x width x channels: np.transpose({name}, (1, 2, 0)))"
        raise ValueError(f"{name} is {describe(value)}: its last axis (channels) has {value.shape[-1]} values, "
                         f"not {' or '.join(map(str, channels))}{hint}; allowed: {rule}")
    return value


def _tensor_to_hwc(value: torch.Tensor, name: str, *, channels: tuple, rule: str) -> np.ndarray:
    """A torch picture [C, H, W] (or [H, W]) as numpy [H, W, C]."""
    if value.ndim == 2:
        value = value[None]
    if value.shape[0] not in channels:
        if value.shape[0] == 4:
            hint = (": 4 channels is ambiguous for a tensor (RGBA, or VAE latents?); pass latents as latents=, "
                    "RGBA pictures as PIL or numpy H x W x 4")
        elif value.shape[-1] in channels:
            hint = f" (channels last? torch pictures are channels x height x width: {name}.permute(2, 0, 1))"
        else:
            hint = ""
        raise ValueError(f"{name} is {describe(value)}{hint}; allowed: {rule}")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16 or value.dtype == torch.float16:
        value = value.float()
    return value.permute(1, 2, 0).numpy()


def _unit_floats(value: np.ndarray, name: str, rule: str) -> np.ndarray:
    """Float values in [0, 1] as float64; other dtypes and ranges refused."""
    if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"{name} is {describe(value)}: dtype {value.dtype} is ambiguous for a picture "
                         f"(use uint8 for 0..255 or float for 0..1); allowed: {rule}")
    array = value.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf values; allowed: {rule}")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        hint = " (values in [-1, 1]? pass (x + 1) / 2)" if low >= -1.0 and high <= 1.0 else \
            " (0..255 values? pass them as uint8)" if high <= 255.0 and low >= 0.0 else ""
        raise ValueError(f"{name} is a float picture with values in [{low:.4g}, {high:.4g}]; float pictures must "
                         f"be in [0, 1] as diffusers documents{hint}")
    return array


def _one_mask(value, name: str) -> Image.Image:
    """One mask as PIL "L"."""
    if isinstance(value, Image.Image):
        if value.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (value.mode == "P" and "transparency" in value.info):
            raise ValueError(f"{name} is {describe(value)}: a mask with transparency is ambiguous (is the alpha the "
                             f"mask?); pass {name}.getchannel('A') or {name}.convert('L'); allowed: {MASK_RULE}")
        if value.mode in ("L", "1", "P", "RGB", "CMYK", "YCbCr"):
            return value if value.mode == "L" else value.convert("L")
        raise ValueError(f"{name} is {describe(value)}: mode {value.mode} is not allowed; allowed: {MASK_RULE}")
    if isinstance(value, torch.Tensor):
        value = _tensor_to_hwc(value, name, channels=(1,), rule=MASK_RULE)
    else:
        value = _numpy_hwc(value, name, channels=(1,), rule=MASK_RULE)
    value = value[..., 0]
    if value.dtype == np.bool_:
        return Image.fromarray(value.astype(np.uint8) * 255)
    if value.dtype == np.uint8:
        return Image.fromarray(value)
    array = _unit_floats(value, name, MASK_RULE)
    return Image.fromarray(np.round(array * 255.0).astype(np.uint8))


# --- one pipeline call ----------------------------------------------------------------------------


class UnusedArgumentWarning(UserWarning):
    """A keyword was given that would have no effect on this run; it was left out (and out of the trace)."""


@dataclass
class Call:
    """A checked pipeline call: the keywords to pass on and the input pictures the Trace keeps."""

    kwargs: dict
    inputs: dict[str, torch.Tensor]
    batch: int  # prompts in the batch (before num_images_per_prompt)


def check_call(pipe, prompt, kwargs: dict) -> Call:
    """Check every argument of ``pipe(prompt, **kwargs)``; convert pictures; drop what would do nothing.

    ``pipe`` is already the pipeline that will run (img2img/inpainting sibling chosen).
    """
    import warnings

    kwargs = dict(kwargs)
    check_keywords(pipe, kwargs)
    accepted = pipeline_parameters(pipe)
    batch = _check_prompt_side(pipe, prompt, kwargs)
    steps = _check_steps(pipe, kwargs)
    guidance = check_number("guidance_scale", kwargs.get("guidance_scale", default_of(pipe, "guidance_scale", 7.5)),
                            minimum=0.0)
    images_per_prompt = check_int("num_images_per_prompt", kwargs.get("num_images_per_prompt", 1), minimum=1)
    inputs = _check_pictures(pipe, kwargs, accepted, batch, images_per_prompt)
    if "strength" in accepted:
        check_strength(kwargs.get("strength", default_of(pipe, "strength", 1.0)), steps)
    _check_other_keywords(pipe, kwargs, batch * images_per_prompt)
    for name, reason in _unused(pipe, kwargs, guidance).items():
        value = kwargs.pop(name)
        if not _is_nothing(value):
            warnings.warn(f"{name}={describe(value)} has no effect here ({reason}); it was not passed on and is not "
                          "recorded in the trace", UnusedArgumentWarning, stacklevel=4)
    return Call(kwargs, inputs, batch)


def _check_prompt_side(pipe, prompt, kwargs: dict) -> int:
    """Prompt, negative prompt and their embeddings; returns the number of prompts."""
    embeds = kwargs.get("prompt_embeds")
    prompts = check_prompt(prompt, optional=embeds is not None)
    dim = _text_width(pipe)
    if embeds is not None:
        if prompts:
            raise ValueError("give prompt or prompt_embeds, not both (prompt_embeds replaces the text encoder's "
                             "output for prompt); pass prompt=None with prompt_embeds")
        check_tensor("prompt_embeds", embeds, ndim=3)
        if embeds.shape[-1] != dim:
            raise ValueError(f"prompt_embeds must be [B, tokens, {dim}] for this {type(_denoiser(pipe)).__name__} "
                             f"(text width {dim}), got {list(embeds.shape)}")
    batch = embeds.shape[0] if embeds is not None else len(prompts)
    negative = kwargs.get("negative_prompt")
    if negative is not None:
        negatives = check_prompt(negative, "negative_prompt")
        if isinstance(negative, (list, tuple)) and len(negatives) != batch:
            raise ValueError(f"negative_prompt has {len(negatives)} prompts but prompt has {batch}: give one "
                             "negative prompt (used for all) or one per prompt")
    negative_embeds = kwargs.get("negative_prompt_embeds")
    if negative_embeds is not None:
        if negative is not None:
            raise ValueError("give negative_prompt or negative_prompt_embeds, not both")
        expected = tuple(embeds.shape) if embeds is not None else None
        check_tensor("negative_prompt_embeds", negative_embeds, ndim=3, shape=expected)
        if negative_embeds.shape[-1] != dim:
            raise ValueError(f"negative_prompt_embeds must be [B, tokens, {dim}], got {list(negative_embeds.shape)}")
    return batch


def _denoiser(pipe):
    from .families import denoiser_of

    return denoiser_of(pipe)


def _text_width(pipe) -> int:
    """Features per text token the denoiser takes (UNet: cross_attention_dim, transformer: joint_attention_dim)."""
    config = _denoiser(pipe).config
    return int(config.get("cross_attention_dim") or config.get("joint_attention_dim"))


def _check_steps(pipe, kwargs: dict) -> int:
    """num_inference_steps, or the length of custom timesteps/sigmas; returns the step count."""
    train_steps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
    custom = [name for name in ("timesteps", "sigmas") if kwargs.get(name) is not None]
    if custom:
        if len(custom) == 2 or "num_inference_steps" in kwargs:
            raise ValueError(f"give either num_inference_steps or {custom[0]}, not both "
                             f"({custom[0]} sets the steps itself)")
        values = kwargs[custom[0]]
        if not isinstance(values, (list, tuple)) or not values:
            raise TypeError(f"{custom[0]} must be a non-empty list of numbers, got {describe(values)}")
        for value in values:
            check_number(custom[0], value, minimum=0.0)
        return len(values)
    return check_int("num_inference_steps", kwargs.get("num_inference_steps", default_of(pipe, "num_inference_steps",
                                                                                           50)),
                     minimum=1, maximum=train_steps)


def _check_pictures(pipe, kwargs: dict, accepted: dict, batch: int, images_per_prompt: int) -> dict:
    """image= and mask_image=: converted in kwargs; returns the pictures the Trace stores."""
    pipeline = type(pipe).__name__
    if "image" in accepted and kwargs.get("image") is None:
        raise ValueError(f"{pipeline} needs image=: the picture to start from ({IMAGE_RULE})")
    if "mask_image" in accepted and kwargs.get("mask_image") is None and kwargs.get("masked_image_latents") is None:
        raise ValueError(f"{pipeline} needs mask_image= (white = repaint, black = keep): {MASK_RULE}")
    inputs = {}
    factor = getattr(pipe, "vae_scale_factor", 8)
    if kwargs.get("image") is not None:
        pictures = as_images(kwargs["image"])
        _check_multiple("image", pictures.size, factor)
        if pictures.count not in (1, batch):
            raise ValueError(f"image holds {pictures.count} pictures but there are {batch} prompt(s): give one "
                             f"picture (used for every prompt) or one per prompt (a list of {pictures.count} prompts)")
        if pictures.count > 1 and images_per_prompt != 1:
            raise ValueError(f"one picture per prompt works with num_images_per_prompt=1, got {images_per_prompt} "
                             "(diffusers would pair pictures and prompts in the wrong order)")
        kwargs["image"], inputs["image"] = pictures.for_pipeline, pictures.stored
        if kwargs.get("mask_image") is not None:
            masks = as_masks(kwargs["mask_image"])
            if masks.size != pictures.size:
                raise ValueError(f"image and mask_image must have the same size (width, height), "
                                 f"got image {pictures.size} and mask_image {masks.size}")
            if masks.count not in (1, pictures.count):
                raise ValueError(f"mask_image holds {masks.count} masks for {pictures.count} picture(s): give one mask "
                                 "or one per picture")
            _check_mask_covers_something(masks.stored)
            kwargs["mask_image"], inputs["mask_image"] = masks.for_pipeline, masks.stored
        asked = (kwargs.get("width") or pictures.size[0], kwargs.get("height") or pictures.size[1])
        if asked != pictures.size:
            raise ValueError(f"height/width {asked[1]}x{asked[0]} differ from image's size {pictures.size[1]}x"
                             f"{pictures.size[0]}: diffusers would resize the picture and the mask, and the trace "
                             "would keep a picture that was not the one used; resize them yourself first")
        from .families import family_of

        if not family_of(pipe).size_from_image and "height" in accepted:
            kwargs["width"] = kwargs.get("width") or pictures.size[0]  # not 1024x1024 from a resized picture
            kwargs["height"] = kwargs.get("height") or pictures.size[1]
    return inputs


def _check_mask_covers_something(stored: torch.Tensor) -> None:
    """An all-black mask repaints nothing, an all-white one everything: both are refused, saying so."""
    for mask in stored.reshape(-1, *stored.shape[-2:]):
        if int(mask.max()) < 128:
            raise ValueError("mask_image is all black (below 50% everywhere): it marks nothing to repaint, so "
                             "inpainting would only pass the picture through the VAE; paint white where the picture "
                             "should change")
        if int(mask.min()) >= 128:
            raise ValueError("mask_image is all white (at least 50% everywhere): it repaints the whole picture, "
                             "which is img2img (give image= and strength= without mask_image); keep black where "
                             "the picture should stay")


def _check_multiple(name: str, size: tuple[int, int], factor: int) -> None:
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"{name} is {size[0]}x{size[1]}; width and height must be multiples of {factor} "
                         "(the VAE's downsampling)")


def _check_other_keywords(pipe, kwargs: dict, images: int) -> None:
    """The remaining keywords diffusers takes, each by its own rule."""
    factor = getattr(pipe, "vae_scale_factor", 8)
    size = {}
    for name in ("height", "width"):
        if kwargs.get(name) is not None:
            size[name] = check_int(name, kwargs[name], minimum=factor)
            if size[name] % factor:
                raise ValueError(f"{name} must be a multiple of {factor} (the VAE's downsampling), got {size[name]}")
    if "output_type" in kwargs:
        check_choice("output_type", kwargs["output_type"], OUTPUT_TYPES)
    if "return_dict" in kwargs and not isinstance(kwargs["return_dict"], bool):
        raise TypeError(f"return_dict must be True or False, got {describe(kwargs['return_dict'])}")
    if kwargs.get("eta") is not None:
        check_number("eta", kwargs["eta"], minimum=0.0)
    if kwargs.get("guidance_rescale") is not None:
        check_number("guidance_rescale", kwargs["guidance_rescale"], minimum=0.0, maximum=1.0)
    if kwargs.get("clip_skip") is not None:
        from ..conditioning import check_clip_skip

        check_clip_skip(pipe, kwargs["clip_skip"])
    if kwargs.get("cross_attention_kwargs") is not None and not isinstance(kwargs["cross_attention_kwargs"], dict):
        raise TypeError(f"cross_attention_kwargs must be a dict, got {describe(kwargs['cross_attention_kwargs'])}")
    if kwargs.get("callback_on_step_end") is not None and not callable(kwargs["callback_on_step_end"]):
        raise TypeError("callback_on_step_end must be callable (pipe, step_index, timestep, callback_kwargs) -> dict, "
                        f"got {describe(kwargs['callback_on_step_end'])}")
    for name in ("masked_image_latents", "ip_adapter_image_embeds"):
        if isinstance(kwargs.get(name), torch.Tensor):
            check_tensor(name, kwargs[name])
    if kwargs.get("latents") is not None:
        _check_latents(pipe, kwargs, images, size)


def _check_latents(pipe, kwargs: dict, images: int, size: dict) -> None:
    """latents= must be x_T for this call: [B * num_images_per_prompt, C, height / 8, width / 8], finite
    (Flux: packed, [B * num_images_per_prompt, (height / 16) * (width / 16), 4C])."""
    from .families import family_of

    channels = int(pipe.vae.config.latent_channels)
    if family_of(pipe).packed:
        latents = check_tensor("latents", kwargs["latents"], ndim=3)
        if latents.shape[-1] != 4 * channels:
            raise ValueError(f"latents must be Flux's packed [B, tokens, {4 * channels}], got {list(latents.shape)}")
        return
    latents = check_tensor("latents", kwargs["latents"], ndim=4)
    if "image" in kwargs:  # inpainting: the size follows the image unless height/width say otherwise
        if latents.shape[1] != channels:
            raise ValueError(f"latents must have {channels} channels, got shape {list(latents.shape)}")
        return
    factor = getattr(pipe, "vae_scale_factor", 8)
    default = int(getattr(pipe, "default_sample_size", None) or _denoiser(pipe).config.sample_size) * factor
    expected = (images, channels, size.get("height", default) // factor, size.get("width", default) // factor)
    check_tensor("latents", latents, shape=expected)


def _unused(pipe, kwargs: dict, guidance: float) -> dict[str, str]:
    """Keywords given that this call would ignore, with the reason."""
    unused = {}
    if "true_cfg_scale" in pipeline_parameters(pipe):  # Flux: guidance_scale is distilled guidance, not CFG
        true_cfg = kwargs.get("true_cfg_scale", default_of(pipe, "true_cfg_scale", 1.0))
        if true_cfg is None or true_cfg <= 1.0:
            for name in ("negative_prompt", "negative_prompt_2", "negative_prompt_embeds",
                         "negative_pooled_prompt_embeds"):
                if name in kwargs:
                    unused[name] = (f"{type(pipe).__name__} runs classifier-free guidance only with true_cfg_scale "
                                    f"> 1 (got {true_cfg}); its guidance_scale is the distilled guidance it is given")
    guided = guidance > 1.0 and getattr(_denoiser(pipe).config, "time_cond_proj_dim", None) is None
    if "true_cfg_scale" in pipeline_parameters(pipe):
        guided = True  # negative prompts judged above
    if not guided:
        for name in ("negative_prompt", "negative_prompt_embeds", "guidance_rescale"):
            if name in kwargs:
                unused[name] = f"guidance_scale={guidance:g} <= 1 runs without classifier-free guidance"
    if "eta" in kwargs and "eta" not in inspect.signature(pipe.scheduler.step).parameters:
        unused["eta"] = f"{type(pipe.scheduler).__name__} has no eta (only DDIM-type schedulers use it)"
    return unused


def _is_nothing(value) -> bool:
    """None, an empty string/list or zero: a keyword left at 'off'."""
    if value is None:
        return True
    if isinstance(value, (str, list, tuple)):
        return len(value) == 0
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
