"""load_pipeline: tiny models, scheduler names, real from_pretrained loading of a saved folder, clear errors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

import sdexplore
from sdexplore import models


def test_tiny_models_are_sd_shaped_and_deterministic():
    pipe = sdexplore.load_pipeline("tiny")
    assert isinstance(pipe, StableDiffusionPipeline)
    unet = pipe.unet
    assert unet.config.in_channels == 4 and unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    cross_attention_resolutions = [b for b in unet.config.down_block_types if b.startswith("CrossAttn")]
    assert len(cross_attention_resolutions) >= 2
    assert pipe.tokenizer.model_max_length == 77 and pipe.vae_scale_factor == 8
    again = sdexplore.load_pipeline("tiny")
    for a, b in zip(pipe.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)


def test_tiny_sd2_and_inpaint_variants():
    sd2 = sdexplore.load_pipeline("tiny-sd2")
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd2.unet.config.use_linear_projection and sd2.unet.config.upcast_attention
    assert list(sd2.unet.config.attention_head_dim) == [2, 4]
    inpaint = sdexplore.load_pipeline("tiny-inpaint")
    assert isinstance(inpaint, StableDiffusionInpaintPipeline) and inpaint.unet.config.in_channels == 9


@pytest.mark.parametrize("name", sorted(sdexplore.SCHEDULERS))
def test_scheduler_names_keep_the_models_schedule(tiny_sd2, name):
    pipe = sdexplore.load_pipeline("tiny-sd2", scheduler=name)
    assert isinstance(pipe.scheduler, sdexplore.SCHEDULERS[name])
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, tiny_sd2.scheduler.alphas_cumprod)


def test_unknown_scheduler_names_the_choices():
    expected = r"unknown scheduler 'heun'; choose one of: ddim, ddpm, euler, euler_a, dpm\+\+, pndm"
    with pytest.raises(ValueError, match=expected):
        sdexplore.load_pipeline("tiny", scheduler="heun")


def test_a_saved_pipeline_folder_loads_back_through_from_pretrained(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "sd")
    loaded = sdexplore.load_pipeline(str(tmp_path / "sd"), scheduler="euler")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert type(loaded.scheduler).__name__ == "EulerDiscreteScheduler"
    same = sdexplore.load_pipeline(tmp_path / "sd")
    a = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=3)
    b = sdexplore.trace(same, "a cat", seed=0, num_inference_steps=3)
    torch.testing.assert_close(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_a_saved_inpaint_folder_loads_as_the_inpaint_pipeline(tmp_path, tiny_inpaint):
    tiny_inpaint.save_pretrained(tmp_path / "inpaint")
    loaded = sdexplore.load_pipeline(tmp_path / "inpaint")
    assert isinstance(loaded, StableDiffusionInpaintPipeline) and loaded.unet.config.in_channels == 9


def test_offline_hub_id_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(sdexplore.ModelNotAvailableError, match="not in the local Hugging Face cache") as info:
        sdexplore.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in str(info.value)


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    with pytest.raises(sdexplore.ModelNotAvailableError, match="no model_index.json"):
        sdexplore.load_pipeline(tmp_path)


def test_missing_toy_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "TOY_WEIGHTS", tmp_path / "nothing")
    with pytest.raises(sdexplore.ModelNotAvailableError, match="sdexplore.toy.train"):
        sdexplore.load_pipeline("toy")


def test_img2img_and_inpaint_siblings_share_the_weights(tiny):
    img2img, inpaint = sdexplore.as_img2img(tiny), sdexplore.as_inpaint(tiny)
    assert img2img.unet is tiny.unet and inpaint.vae is tiny.vae


def test_a_pipeline_with_another_text_encoder_shares_everything_else(tiny):
    """with_text_encoder: the same pipeline class and weights, reading a deeper copy of the text encoder."""
    config = tiny.text_encoder.config
    deeper = type(tiny.text_encoder)(type(config)(**{**config.to_dict(), "num_hidden_layers": 3})).eval()
    other = models.with_text_encoder(tiny, deeper)
    assert type(other) is type(tiny) and other.text_encoder is deeper and tiny.text_encoder is not deeper
    assert other.unet is tiny.unet and other.vae is tiny.vae and other.tokenizer is tiny.tokenizer
    run = sdexplore.trace(other, "a cat", seed=0, num_inference_steps=2, clip_skip=2)
    assert run.params["clip_skip"] == 2 and torch.isfinite(run.latents).all()
    with pytest.raises(ValueError, match="clip_skip"):  # the original is as deep as before
        sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=2, clip_skip=config.num_hidden_layers)


@pytest.mark.parametrize("kind, pipeline_class, denoiser, latent_channels", [
    ("tiny-sdxl", "StableDiffusionXLPipeline", "unet", 4),
    ("tiny-sd3", "StableDiffusion3Pipeline", "transformer", 16),
    ("tiny-flux", "FluxPipeline", "transformer", 16),
])
def test_tiny_families_run_save_and_load_back(tmp_path, kind, pipeline_class, denoiser, latent_channels):
    pipe = sdexplore.tiny_pipeline(kind)
    assert type(pipe).__name__ == pipeline_class
    assert hasattr(pipe, denoiser) and pipe.vae.config.latent_channels == latent_channels

    def run(p):
        return p("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images

    before = run(pipe)
    pipe.save_pretrained(tmp_path / kind)
    loaded = sdexplore.load_pipeline(tmp_path / kind)
    assert type(loaded).__name__ == pipeline_class
    np.testing.assert_allclose(run(loaded), before, atol=1e-5)
    assert not np.allclose(run(sdexplore.tiny_pipeline(kind, seed=1)), before, atol=1e-3)


def test_tiny_t5_tokenizer_speaks_t5():
    from sdexplore.tiny import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()
    ids = tokenizer("a cat by the zzq").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁cat", "▁by", "▁the", "▁z", "z", "q", "</s>"]
    assert tokenizer.pad_token == "<pad>" and tokenizer.unk_token_id not in ids
