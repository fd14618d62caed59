"""Tiny random pipelines of every family, built in code (no download): the unit tests' models.

Each is shaped like the real family (its text encoders, its denoiser's kind of attention, its
latent channels and packing, its scheduler), only a few thousand times smaller, and is
deterministic for a given seed. Images are 64x64 and the VAE downsamples 8x, as SD's does.

- "tiny": SD1-shaped (epsilon prediction, conv projections, one head size);
- "tiny-sd2": SD2-shaped (v-prediction, linear projections, per-block head dims, upcast attention);
- "tiny-inpaint": SD1-shaped with the 9-channel inpainting UNet;
- "tiny-sdxl": SDXL-shaped (two CLIP text encoders, pooled embeddings and time ids, Euler);
- "tiny-sd3": SD3-shaped (MMDiT joint attention, CLIP-L + CLIP-G + T5, 16-channel latents with
  a shift factor, flow matching);
- "tiny-flux": Flux.1-shaped (double- and single-stream blocks, rotary embeddings, CLIP pooled +
  T5, 16-channel latents packed 2x2 into 64-channel tokens, guidance embedding, flow matching).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .tokenizer import build_clip_tokenizer

TINY_WORDS = (
    "a an the photo picture painting of and with in on at by cat cats kitten dog bird fish ball box "
    "palm tree sea wave waves sand beach grass sky orange black white grey gray green yellow blue red "
    "tabby bicolor eyes left right top bottom center small large big style edvard munch"
).split()

TINY_KINDS = ("tiny", "tiny-sd2", "tiny-inpaint", "tiny-sdxl", "tiny-sd3", "tiny-flux")


def tiny_pipeline(kind: str = "tiny", seed: int = 0) -> DiffusionPipeline:
    """A random-initialised pipeline of the named family (see the module docstring), same weights for a seed."""
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of: {', '.join(TINY_KINDS)}")
    with torch.random.fork_rng(devices=[]):  # seeded weights, and the caller's random state left as it was
        torch.manual_seed(seed)
        pipe = _BUILDERS[kind]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them: T5's dropout off
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- SD 1.x / 2.x ------------------------------------------------------------------------------


def _sd(kind: str) -> DiffusionPipeline:
    sd2 = kind == "tiny-sd2"
    tokenizer = build_clip_tokenizer(TINY_WORDS)  # deterministic merges: same ids in every process
    unet = _tiny_unet(sd2=sd2, in_channels=9 if kind == "tiny-inpaint" else 4)
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_clip_config(tokenizer, gelu=sd2))
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
    return pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)


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


# --- SDXL --------------------------------------------------------------------------------------


def _sdxl() -> DiffusionPipeline:
    """Two CLIP encoders (hidden 32 each, concatenated to 64), the second's pooled projection (32)
    and six time ids (8 each) feed the UNet's added conditioning: 6 * 8 + 32 = 80."""
    tokenizer = build_clip_tokenizer(TINY_WORDS)
    tokenizer_2 = build_clip_tokenizer(TINY_WORDS)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, gelu=False))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, gelu=True, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_tiny_vae(scaling_factor=0.13025), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                     unet=unet, scheduler=scheduler, add_watermarker=False)


# --- SD3 and Flux (flow matching, joint attention) ------------------------------------------------


def _sd3() -> DiffusionPipeline:
    """MMDiT with 2 joint blocks; CLIP-L (32) + CLIP-G (32) give 64 pooled features and, zero-padded to
    T5's width, the first 77 text tokens; T5 (32) the next ones."""
    tokenizer, tokenizer_2 = build_clip_tokenizer(TINY_WORDS), build_clip_tokenizer(TINY_WORDS)
    text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer, gelu=False, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, gelu=True, projection_dim=32))
    tokenizer_3 = tiny_t5_tokenizer()
    text_encoder_3 = T5EncoderModel(_t5_config(tokenizer_3))
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    vae = _tiny_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def _flux() -> DiffusionPipeline:
    """Flux.1-dev-shaped: one double-stream and one single-stream block, rotary axes (2, 2, 4), a
    guidance embedding; CLIP's pooled output (32) and T5's tokens (32)."""
    tokenizer = build_clip_tokenizer(TINY_WORDS)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, gelu=False))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(_t5_config(tokenizer_2))
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16,
                                                max_image_seq_len=64)
    vae = _tiny_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


# --- shared parts --------------------------------------------------------------------------------


def _tiny_vae(*, latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None,
              use_quant_conv: bool = True) -> AutoencoderKL:
    """64x64 RGB <-> [latent_channels, 8, 8]: three downsamplings, like SD's 8x VAE."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=use_quant_conv,
    )


def _clip_config(tokenizer, *, gelu: bool, projection_dim: int | None = None) -> CLIPTextConfig:
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if gelu else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5-format (SentencePiece unigram) tokenizer over TINY_WORDS and single letters, built offline.

    Like T5's: no start token, "</s>" ends the prompt, "<pad>" pads it, words are "▁word" pieces
    and an unknown word falls back to letters."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in TINY_WORDS]
    pieces += [(letter, -5.0) for letter in letters] + [("▁" + letter, -5.5) for letter in letters]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _t5_config(tokenizer) -> T5Config:
    return T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)


_BUILDERS = {
    "tiny": lambda: _sd("tiny"),
    "tiny-sd2": lambda: _sd("tiny-sd2"),
    "tiny-inpaint": lambda: _sd("tiny-inpaint"),
    "tiny-sdxl": _sdxl,
    "tiny-sd3": _sd3,
    "tiny-flux": _flux,
}
