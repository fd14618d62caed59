"""Previews: the linear approximation (per latent format, shipped with a model, or fitted), the VAE, and a
tiny autoencoder, on every family's tiny pipeline."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, FluxPipeline

import sdexplore
from sdexplore.decode import (
    LATENT_FORMATS,
    LATENT_RGB_FILE,
    SD1_LATENT_RGB,
    LatentRGB,
    ModelFacts,
    decode,
    fit_latent_rgb,
    latent_format,
    latent_rgb_for,
    load_latent_rgb,
    save_latent_rgb,
    to_pil,
    vae_decode,
)

FAMILIES = {"tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(kind, pipeline) for each of the SDXL, SD3 and Flux tiny pipelines."""
    return request.param, sdexplore.tiny_pipeline(request.param)


def pipeline_latents_and_pixels(pipe, seed: int = 0):
    """The same seeded run twice: its final latents [1, C, h, w] (unpacked for Flux) and its picture [1, 3, H, W]
    in [0, 1] (output_type="np")."""
    call = dict(prompt="a cat", num_inference_steps=2, height=64, width=64)
    latents = pipe(**call, generator=torch.Generator().manual_seed(seed), output_type="latent").images
    pixels = pipe(**call, generator=torch.Generator().manual_seed(seed), output_type="np").images
    if latents.ndim == 3:  # Flux packs 2x2 latent patches into tokens: [B, h*w/4, 4C]
        latents = FluxPipeline._unpack_latents(latents, 64, 64, pipe.vae_scale_factor)
    return latents, torch.from_numpy(pixels).permute(0, 3, 1, 2)


class LinearVae:
    """A stand-in VAE whose decoder is exactly a per-pixel linear map, upsampled 8x."""

    class config:
        scaling_factor = 0.5

    def __init__(self, weights, bias):
        self.weights, self.bias = weights, bias
        self._param = torch.zeros(1)

    def parameters(self):
        yield self._param

    def decode(self, z):
        rgb = torch.einsum("bchw,cr->brhw", z * self.config.scaling_factor, self.weights) + self.bias[:, None, None]
        return type("Out", (), {"sample": F.interpolate(rgb, scale_factor=8, mode="nearest")})


def test_fit_recovers_a_known_linear_decoder():
    torch.manual_seed(0)
    weights, bias = torch.randn(4, 3) * 0.2, torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(3, 4, 8, 8) * 0.5  # decodes inside [-1, 1], where a VAE's output is not clamped
    fitted = fit_latent_rgb(LinearVae(weights, bias), latents)
    torch.testing.assert_close(fitted.weights, weights, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-4, rtol=1e-4)


def test_fitted_map_beats_the_sd1_coefficients_on_a_vae_it_was_fitted_for(tiny):
    run = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=4)
    latents = torch.cat([run.x0[-1], run.latents[0]])
    fitted = fit_latent_rgb(tiny.vae, latents)
    target = F.adaptive_avg_pool2d(decode(latents, "vae", pipe=tiny), (8, 8))
    fitted_error = (decode(latents, latent_rgb=fitted) - target).abs().mean()
    sd1_error = (decode(latents, latent_rgb=SD1_LATENT_RGB) - target).abs().mean()
    assert fitted_error < sd1_error


def test_three_methods_give_pictures_of_the_right_size(tiny):
    run = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=3)
    assert run.preview(-1)[0].size == (64, 64)  # approx at latent resolution, enlarged 8x
    vae_picture = run.preview(-1, method="vae", pipe=tiny)[0]
    assert vae_picture.size == (64, 64)
    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8))
    assert run.preview(-1, which="x_t", method="taesd", taesd=taesd)[0].size == (64, 64)


def test_vae_preview_of_the_last_latents_is_the_pipelines_image(tiny):
    run = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=3)
    preview = torch.tensor(list(run.preview(-1, which="x_prev", method="vae", pipe=tiny)[0].getdata())).float()
    final = torch.tensor(list(run.images[0].getdata())).float()
    assert (preview - final).abs().max() <= 1  # same decode, rounding aside


def test_bad_preview_requests_are_clear():
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="choose one of: approx, vae, taesd"):
        decode(latents, "magic")
    with pytest.raises(ValueError, match="needs pipe="):
        decode(latents, "vae")
    with pytest.raises(ValueError, match="needs taesd="):
        decode(latents, "taesd")
    with pytest.raises(ValueError, match="expects 4"):
        LatentRGB(torch.zeros(4, 3), torch.zeros(3))(torch.zeros(1, 3, 8, 8))


def test_to_pil_maps_minus_one_to_black_and_one_to_white():
    black, white = to_pil(torch.stack([-torch.ones(3, 2, 2), torch.ones(3, 2, 2)]))
    assert black.getpixel((0, 0)) == (0, 0, 0) and white.getpixel((1, 1)) == (255, 255, 255)


# --- every family ------------------------------------------------------------------------------------


def test_vae_preview_is_the_pipelines_own_decoding(family):
    kind, pipe = family
    latents, pixels = pipeline_latents_and_pixels(pipe)
    assert latents.shape[1] == pipe.vae.config.latent_channels
    preview = (decode(latents, "vae", pipe=pipe) + 1) / 2
    assert (preview - pixels).abs().max() <= 1e-6
    if pipe.vae.config.shift_factor:  # SD3 and Flux: without the shift the picture would be another one
        unshifted = (vae_decode(pipe.vae, latents, shift_factor=0.0) + 1) / 2
        assert (unshifted - pixels).abs().max() > 1e-3


def test_approx_preview_uses_the_familys_published_map(family):
    kind, pipe = family
    expected = LATENT_FORMATS[FAMILIES[kind]]
    assert latent_rgb_for(pipe) is expected.latent_rgb
    assert expected.channels == pipe.vae.config.latent_channels
    assert expected.scaling_factor == pipe.vae.config.scaling_factor
    latents, _ = pipeline_latents_and_pixels(pipe)
    preview = decode(latents, "approx", pipe=pipe)
    assert preview.shape == (1, 3, 8, 8)
    torch.testing.assert_close(preview, (latents.float().permute(0, 2, 3, 1) @ expected.latent_rgb.weights
                                         + expected.latent_rgb.bias).permute(0, 3, 1, 2).clamp(-1, 1))


def test_sdxl_previews_are_not_coloured_with_sd1s_map():
    pipe = sdexplore.tiny_pipeline("tiny-sdxl")
    run = sdexplore.trace(pipe, "a cat", seed=0, num_inference_steps=2)
    sdxl = to_pil(LATENT_FORMATS["sdxl"].latent_rgb(run.x0[-1]), upscale=8)[0]
    sd1 = to_pil(SD1_LATENT_RGB(run.x0[-1]), upscale=8)[0]
    assert run.preview(-1)[0].tobytes() == sdxl.tobytes() != sd1.tobytes()


def test_the_format_is_found_by_class_then_by_vae_factors():
    assert latent_format(ModelFacts("StableDiffusionPipeline", "", 4, 0.18215, None)).name == "sd1"
    assert latent_format(ModelFacts("StableDiffusionXLImg2ImgPipeline", "", 4, 0.13025, None)).name == "sdxl"
    assert latent_format(ModelFacts("StableDiffusion3Pipeline", "", 16, 1.5305, 0.0609)).name == "sd3"
    assert latent_format(ModelFacts("FluxImg2ImgPipeline", "", 16, 0.3611, 0.1159)).name == "flux"
    assert latent_format(ModelFacts("MyOwnPipeline", "", 16, 0.3611, 0.1159)).name == "flux"  # by the VAE


def test_an_unknown_latent_format_says_what_to_do():
    for facts in (ModelFacts("MyOwnPipeline", "", 8, 1.0, None),  # neither the class nor the VAE is known
                  ModelFacts("StableDiffusionXLPipeline", "", 16, 1.0, None)):  # an SDXL class, not SDXL latents
        with pytest.raises(ValueError, match=r"no approx latent->RGB map is known .*method='vae'.*fit_latent_rgb"):
            latent_format(facts)
    with pytest.raises(ValueError, match="needs to know which model made these latents"):
        decode(torch.zeros(1, 4, 8, 8), "approx")


def test_a_model_folder_can_ship_its_own_map(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    torch.manual_seed(0)
    own = LatentRGB(torch.randn(4, 3) * 0.3, torch.tensor([0.1, 0.0, -0.1]))
    save_latent_rgb(own, tmp_path / LATENT_RGB_FILE, fitted={"how": "by hand"})
    loaded = load_latent_rgb(tmp_path / LATENT_RGB_FILE)
    torch.testing.assert_close(loaded.weights, own.weights, atol=1e-6, rtol=0)
    pipe = sdexplore.load_pipeline(tmp_path)
    run = sdexplore.trace(pipe, "a cat", seed=0, num_inference_steps=2)
    expected = to_pil(loaded(run.x0[-1]), upscale=8)[0]
    assert run.preview(-1)[0].tobytes() == expected.tobytes()
    torch.testing.assert_close(latent_rgb_for(pipe).weights, loaded.weights)
    (tmp_path / LATENT_RGB_FILE).write_text('{"weights": [[1, 2]], "bias": [0, 0, 0]}')
    with pytest.raises(ValueError, match="weights must be \\[C\\]\\[3\\]"):
        load_latent_rgb(tmp_path / LATENT_RGB_FILE)
