"""The toy model's architecture: Stable Diffusion's parts, small enough to train on a CPU.

64x64 RGB images <-> 4x16x16 latents (AutoencoderKL, 4x downsampling); a CLIP text encoder
with a 77-token context and the project's own lower-case BPE tokenizer; a UNet2DConditionModel
with cross-attention at 16x16 and 8x8; SD's scaled-linear DDPM schedule (1000 steps), rescaled to
zero terminal SNR, with v-prediction (as SD 2.x predicts v).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from ..tokenizer import build_clip_tokenizer
from .world import WORDS


@dataclass(frozen=True)
class ToySize:
    """Widths of the three parts. ``FULL`` is what ships; ``SMALL`` is for tests of the training code."""

    image: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    text_width: int = 128
    text_layers: int = 3
    unet_channels: tuple[int, ...] = (64, 128, 128)
    heads: int = 4


FULL = ToySize()
SMALL = ToySize(image=32, vae_channels=(8, 16), text_width=32, text_layers=1, unet_channels=(16, 32, 32), heads=2)


def build_tokenizer():
    """CLIP-format tokenizer whose vocabulary holds every word the toy world's captions use."""
    return build_clip_tokenizer(WORDS)


def build_vae(size: ToySize = FULL) -> AutoencoderKL:
    """RGB [B, 3, H, W] in [-1, 1] <-> latents [B, 4, H/2^(n-1), W/2^(n-1)], n = len(vae_channels)."""
    blocks = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=size.image,
    )


def build_text_encoder(tokenizer, size: ToySize = FULL) -> CLIPTextModel:
    """CLIP text transformer, causal, 77 positions: input ids [B, 77] -> hidden states [B, 77, text_width]."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_width,
        intermediate_size=2 * size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(size: ToySize = FULL, latent_size: int = 16) -> UNet2DConditionModel:
    """Cross-attention in the two highest-resolution levels (16x16 and 8x8 for the full model)."""
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=size.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=size.text_width,
        attention_head_dim=size.heads,
        norm_num_groups=8 if min(size.unet_channels) < 32 else 16,
    )


def training_scheduler(prediction_type: str = "v_prediction", zero_terminal_snr: bool = True) -> DDPMScheduler:
    """Stable Diffusion's training schedule: 1000 steps, scaled-linear betas 0.00085..0.012.

    zero_terminal_snr rescales those betas so the last timestep is pure noise (Lin et al. 2023,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed"). With SD's own betas x_999 still
    holds 7% of the image, enough for a small model to read the layout from the noise and ignore
    "on the left" in the prompt; with none left it must take the layout from the text. Zero SNR
    needs v-prediction (epsilon says nothing about x0 at t=999), as SD 2.x uses.
    """
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, prediction_type=prediction_type,
                         rescale_betas_zero_snr=zero_terminal_snr)


def sampling_scheduler(prediction_type: str = "v_prediction", zero_terminal_snr: bool = True):
    """The scheduler the shipped pipeline uses by default.

    Zero terminal SNR: DDIM with "trailing" timesteps (so sampling starts at t=999, pure noise),
    as the zero-SNR paper recommends. Otherwise PNDM, SD 1.x's own choice.
    """
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type=prediction_type)
    if zero_terminal_snr:
        return DDIMScheduler(**common, rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False,
                             set_alpha_to_one=False)
    return PNDMScheduler(**common, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None) -> StableDiffusionPipeline:
    """A plain diffusers StableDiffusionPipeline from trained parts (default scheduler: ``sampling_scheduler()``)."""
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler or sampling_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
