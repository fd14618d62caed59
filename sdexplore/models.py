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
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import build_clip_tokenizer

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}

TOY_WEIGHTS = Path(__file__).parent / "toy" / "weights"

TINY_WORDS = (
    "a an the photo picture painting of and with in on at by cat cats kitten dog bird fish ball box "
    "palm tree sea wave waves sand beach grass sky orange black white grey gray green yellow blue red "
    "tabby bicolor eyes left right top bottom center small large big style edvard munch"
).split()


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
    "tiny-sd2" and "tiny-inpaint"), a local diffusers folder, or a hub id such as
    "stable-diffusion-v1-5/stable-diffusion-v1-5" (loaded from the local cache or the network).
    scheduler: one of ``SCHEDULERS`` ("ddim", "ddpm", "euler", "euler_a", "dpm++", "pndm").
    """
    if scheduler is not None:
        scheduler_class(scheduler)  # fail before any loading work
    name = str(model)
    if name in TINY_KINDS:
        pipe = tiny_pipeline(name)
    elif name == "toy":
        pipe = _load_toy()
    else:
        pipe = _from_pretrained(name)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    allow_clip_skip(pipe)
    return pipe.to(device=device, dtype=dtype) if (device or dtype) else pipe


def allow_clip_skip(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Make diffusers' ``clip_skip`` work with transformers >= 5.6 (diffusers issue #14124).

    transformers 5.6 flattened CLIPTextModel (``embeddings``, ``encoder``, ``final_layer_norm`` sit on the
    model itself), but diffusers' encode_prompt still reads ``text_encoder.text_model.final_layer_norm``
    when ``clip_skip`` is set. A plain (unregistered) ``text_model`` attribute naming the model itself
    restores that path without changing the module tree, the state dict or anything computed.
    """
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None and hasattr(encoder, "final_layer_norm") and "text_model" not in vars(encoder) \
            and "text_model" not in encoder._modules:
        object.__setattr__(encoder, "text_model", encoder)
    return pipe


def scheduler_class(name: str):
    """The diffusers scheduler class for a short name; ValueError naming the choices if unknown."""
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
    try:
        return DiffusionPipeline.from_pretrained(str(path) if path.exists() else name, safety_checker=None)
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


# --- the tiny random pipelines used by the tests ---------------------------------------------

TINY_KINDS = ("tiny", "tiny-sd2", "tiny-inpaint")


def tiny_pipeline(kind: str = "tiny", seed: int = 0) -> DiffusionPipeline:
    """A random-initialised SD-shaped pipeline built in code, deterministic for a given seed.

    "tiny": SD1-shaped (epsilon prediction, conv projections, one head size);
    "tiny-sd2": SD2-shaped (v-prediction, linear projections, per-block head dims, upcast attention);
    "tiny-inpaint": SD1-shaped with the 9-channel inpainting UNet.
    Images are 64x64, latents 4x8x8 (the VAE downsamples 8x, as SD's does).
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of: {', '.join(TINY_KINDS)}")
    sd2 = kind == "tiny-sd2"
    torch.manual_seed(seed)
    unet = _tiny_unet(sd2=sd2, in_channels=9 if kind == "tiny-inpaint" else 4)
    vae = _tiny_vae()
    tokenizer = build_clip_tokenizer(TINY_WORDS)
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, sd2=sd2))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipeline_class = StableDiffusionInpaintPipeline if kind == "tiny-inpaint" else StableDiffusionPipeline
    pipe = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_unet(*, sd2: bool, in_channels: int) -> UNet2DConditionModel:
    """Cross-attention at 8x8 and 4x4 latent resolutions (SD has it at 64, 32, 16 and 8)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=8,
    )


def _tiny_vae() -> AutoencoderKL:
    """64x64 RGB <-> 4x8x8 latents: three downsamplings, like SD's 8x VAE."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def _tiny_text_config(tokenizer, *, sd2: bool) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
