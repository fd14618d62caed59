"""Previews: the linear approximation (built-in and fitted), the VAE, and a tiny autoencoder."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

import sdexplore
from sdexplore.decode import SD1_LATENT_RGB, LatentRGB, decode, fit_latent_rgb, to_pil


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
