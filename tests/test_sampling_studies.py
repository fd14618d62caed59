"""The sampling studies (guidance, inpainting, schedule, VAE) on the tiny random models: they compute what they
say, and bad input gets an error that says what is allowed."""

import numpy as np
import pytest
import torch
from PIL import Image

import sdexplore
from sdexplore.studies import guidance, inpaint, schedule, vae

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def cfg_run(tiny):
    return sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=4, guidance_scale=7.5)


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    base = np.zeros((64, 64, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None]
    base[16:48, 16:48] = (30, 200, 90)
    return np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def left_half():
    repaint = np.zeros((64, 64), bool)
    repaint[:, :32] = True
    return repaint


# --- guidance ---------------------------------------------------------------------------------------


def test_recorded_guided_prediction_is_the_formula(cfg_run):
    formula = guidance.guided(cfg_run.noise_pred_uncond, cfg_run.noise_pred_text, 7.5)
    torch.testing.assert_close(cfg_run.noise_pred, formula, rtol=1e-5, atol=1e-5)
    parts = guidance.decompose(cfg_run)
    assert parts["formula_error"].max() < 1e-5
    torch.testing.assert_close(parts["recorded"], parts["guided"])
    assert parts["difference"].min() > 0 and len(parts["timesteps"]) == 4


def test_w_one_gives_the_text_prediction_and_w_zero_the_unconditional(cfg_run):
    u, t = cfg_run.noise_pred_uncond, cfg_run.noise_pred_text
    torch.testing.assert_close(guidance.guided(u, t, 1.0), t)
    torch.testing.assert_close(guidance.guided(u, t, 0.0), u)
    assert not torch.allclose(u, t)


def test_diffusers_skips_guidance_at_or_below_one(tiny):
    """w <= 1 is not interpolated: diffusers runs no CFG batch and uses the text prediction alone."""
    runs = [sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=w) for w in (0.0, 0.5, 1.0)]
    assert all(run.noise_pred_uncond is None for run in runs)
    for run in runs[:2]:
        torch.testing.assert_close(run.latents, runs[2].latents)
    with pytest.raises(ValueError, match="no classifier-free guidance"):
        guidance.decompose(runs[0])


def test_rescaled_prediction_matches_diffusers_guidance_rescale(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5, guidance_rescale=0.7)
    torch.testing.assert_close(run.noise_pred, guidance.rescaled(run, 0.7), rtol=1e-5, atol=1e-5)
    assert guidance.decompose(run)["formula_error"].min() > 1e-4  # rescaled: no longer the plain formula
    full = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5, guidance_rescale=1.0)
    torch.testing.assert_close(guidance.std_ratio(full), torch.ones(3), rtol=1e-4, atol=1e-4)


def test_guidance_sweep_and_rescale_sweep_shapes(tiny):
    sweep = guidance.guidance_sweep(tiny, PROMPT, [0, 1, 3], seed=0, num_inference_steps=2)
    assert sweep["pictures"].shape == (3, 64, 64, 3) and sweep["pictures"].dtype == torch.uint8
    assert sweep["cfg_used"].tolist() == [0, 0, 1]
    assert ((0 <= sweep["clipped"]) & (sweep["clipped"] <= 1)).all()
    assert torch.equal(sweep["pictures"][0], sweep["pictures"][1])  # w = 0 paints what w = 1 paints
    rescale = guidance.rescale_sweep(tiny, PROMPT, [0.0, 1.0], seed=0, guidance_scale=5, num_inference_steps=2)
    assert rescale["std_ratio"].shape == (2, 2)
    torch.testing.assert_close(rescale["std_ratio"][1], torch.ones(2), rtol=1e-4, atol=1e-4)


def test_clipping_and_saturation_measure_what_they_say(tiny, cfg_run):
    raw = guidance.raw_decode(tiny, cfg_run.latents[-1])
    assert guidance.clipped_fraction(tiny, cfg_run) == pytest.approx(float((raw.abs() > 1).float().mean()))
    grey, red = np.full((2, 2, 3), 128, np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    assert guidance.mean_saturation(grey) == 0 and guidance.mean_saturation(red) == pytest.approx(1.0)


def test_negative_prompt_fills_the_unconditional_half(tiny):
    plain = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5)
    negative = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5,
                               negative_prompt="dog", attention=True, attention_options={"keep_negative": True})
    torch.testing.assert_close(negative.noise_pred_text[0], plain.noise_pred_text[0])  # same x_T, same prompt
    assert not torch.allclose(negative.noise_pred_uncond[0], plain.noise_pred_uncond[0])
    dog = negative.attention.word_map("dog", negative=True)
    assert dog.shape[0] == 1 and dog.sum() > 0
    effect = guidance.negative_prompt_effect(tiny, PROMPT, "dog", seed=0, images=2, num_inference_steps=2)
    assert effect["plain"].shape == effect["negative"].shape == (2, 64, 64, 3)
    assert not torch.equal(effect["plain"], effect["negative"])
    assert guidance.share_judged([{"color": "red"}, {"color": "blue"}], "color", "red") == 0.5


@pytest.mark.parametrize("bad", [-0.5, float("nan"), "7.5"])
def test_negative_or_non_numeric_guidance_is_refused(tiny, bad):
    with pytest.raises((ValueError, TypeError), match="guidance_scale|scales"):
        guidance.guidance_sweep(tiny, PROMPT, [bad], seed=0, num_inference_steps=2)


def test_bad_guidance_arguments_say_what_is_allowed(cfg_run):
    with pytest.raises(ValueError, match=r">= 0"):
        guidance.guided(cfg_run.noise_pred_uncond, cfg_run.noise_pred_text, -1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        guidance.rescaled(cfg_run, 1.5)
    with pytest.raises(ValueError, match="non-empty"):
        guidance.negative_prompt_effect(None, PROMPT, " ", seed=0, images=2)


# --- inpainting ---------------------------------------------------------------------------------------


def test_four_channel_blend_puts_the_noised_original_back_in_the_kept_region(tiny, picture, left_half):
    run = inpaint.inpaint(tiny, picture, left_half, PROMPT, seed=3, num_inference_steps=5, guidance_scale=7.5)
    steps = inpaint.blend_steps(tiny, run, picture, left_half)
    torch.testing.assert_close(run.latents[0, 0], steps["noise"])  # the noise is recomputed exactly
    kept = steps["mask"] == 0
    assert kept.any() and (~kept).any()
    for i in range(run.num_steps):
        torch.testing.assert_close(steps["blended"][i][:, kept], steps["noised_original"][i][:, kept],
                                   rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steps["blended"][-1][:, kept], steps["original"][:, kept])  # un-noised at the end
    assert not torch.allclose(steps["blended"][-1][:, ~kept], steps["original"][:, ~kept])


def test_kept_region_error_and_recomposite(tiny, picture, left_half):
    run = inpaint.inpaint(tiny, picture, left_half, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5)
    errors = inpaint.kept_region_error(tiny, run, picture, left_half)
    assert set(errors) == {"inpainted", "vae_floor", "repainted"}
    assert 0 < errors["vae_floor"] and 0 < errors["inpainted"]
    pasted = inpaint.recomposite(run.images[0], picture, left_half)
    assert np.array_equal(pasted[~left_half], picture[~left_half])
    assert np.array_equal(pasted[left_half], np.asarray(run.images[0])[left_half])


def test_nine_channel_inpainting_runs_and_has_no_blend(tiny_inpaint, picture, left_half):
    run = inpaint.inpaint(tiny_inpaint, picture, left_half, PROMPT, seed=0, num_inference_steps=3,
                          guidance_scale=7.5)
    assert run.params["unet_in_channels"] == 9
    assert inpaint.kept_region_error(tiny_inpaint, run, picture, left_half)["inpainted"] > 0
    with pytest.raises(ValueError, match="9-channel"):
        inpaint.blend_steps(tiny_inpaint, run, picture, left_half)


def test_seam_is_one_for_a_smooth_picture_and_large_for_a_hard_edge(left_half):
    ramp = np.arange(64)
    smooth = np.repeat(((ramp[:, None] + ramp[None, :]) * 2).astype(np.uint8)[..., None], 3, axis=-1)
    assert inpaint.seam(smooth, left_half) == pytest.approx(1.0)
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 200
    edge[::2, ::2] += 10  # some texture on both sides
    assert inpaint.seam(edge, left_half) > 5


def test_mask_errors_say_what_is_wrong(tiny, picture, left_half):
    with pytest.raises(ValueError, match="all black: nothing may be repainted"):
        inpaint.as_mask(np.zeros((64, 64)), picture)
    with pytest.raises(ValueError, match="all white: nothing is kept"):
        inpaint.as_mask(np.full((64, 64), 255, np.uint8), picture)
    with pytest.raises(ValueError, match="mask is 32x64"):
        inpaint.inpaint(tiny, picture, left_half[:, :32], PROMPT, seed=0)
    for strength in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
            inpaint.inpaint(tiny, picture, left_half, PROMPT, seed=0, strength=strength)
    assert inpaint.as_mask(Image.fromarray(np.where(left_half, 255, 0).astype(np.uint8))).sum() == 64 * 32


# --- schedule --------------------------------------------------------------------------------------------


def test_schedule_curves_and_picked_timesteps(tiny):
    curves = schedule.schedule_curves(tiny.scheduler)
    assert (np.diff(curves["alphas_cumprod"].numpy()) < 0).all()
    torch.testing.assert_close(curves["snr"], curves["alphas_cumprod"] / (1 - curves["alphas_cumprod"]))
    leading = schedule.picked_timesteps(tiny.scheduler, "ddim", 20, "leading")
    trailing = schedule.picked_timesteps(tiny.scheduler, "ddim", 20, "trailing")
    assert leading[0] == 951 and trailing[0] == 999  # steps_offset=1: leading starts at 50*19 + 1
    assert len(schedule.picked_timesteps(tiny.scheduler, "euler", 1000)) == 1000
    with pytest.raises(ValueError, match="unknown scheduler 'heun'; choose one of: ddim"):
        schedule.picked_timesteps(tiny.scheduler, "heun", 20)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        schedule.picked_timesteps(tiny.scheduler, "ddim", 20, "middle")


def test_forward_noising_mixes_the_picture_with_noise_as_alpha_bar_says(tiny, picture):
    noised = schedule.forward_noising(tiny, picture, [-1, 500, 999], seed=0)
    assert noised["signal"][0] == 1 and noised["signal"][2] < noised["signal"][1] < 1
    clean = vae.encode(tiny, picture[None])[0]
    torch.testing.assert_close(noised["latents"][0], clean)
    assert noised["pictures"].shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="timesteps must be in -1..999"):
        schedule.forward_noising(tiny, picture, [1000], seed=0)


def test_steps_sweep_measures_distance_to_the_reference(tiny):
    sweep = schedule.steps_sweep(tiny, PROMPT, ["ddim", "euler"], [2, 4], seed=0, reference=("ddim", 4),
                                 guidance_scale=7.5)
    assert sweep["pictures"].shape == (2, 2, 64, 64, 3)
    assert sweep["distance"][0, 1] == 0  # DDIM at 4 steps is the reference itself
    assert sweep["x0_to_final"].shape == (2, 4) and sweep["x0_to_final"][:, -1].abs().max() < 0.01
    assert schedule.practical_steps([2, 4, 8], [0.3, 0.05, 0.01], 0.1) == 4
    with pytest.raises(ValueError, match="unknown scheduler 'fast'"):
        schedule.steps_sweep(tiny, PROMPT, ["fast"], [2], seed=0)


# --- VAE -----------------------------------------------------------------------------------------------


def test_psnr_and_ssim(picture):
    assert vae.psnr(picture, picture) == np.inf
    assert vae.ssim(picture, picture)[0] == pytest.approx(1.0)
    noisy = np.clip(picture.astype(int) + np.random.default_rng(1).integers(-30, 30, picture.shape), 0, 255)
    worse = np.clip(picture.astype(int) + np.random.default_rng(1).integers(-90, 90, picture.shape), 0, 255)
    assert vae.psnr(noisy, picture) > vae.psnr(worse, picture) > 0
    assert 1 > vae.ssim(noisy, picture)[0] > vae.ssim(worse, picture)[0]
    shifted = np.clip(picture.astype(int) + 40, 0, 255)  # brightness alone keeps more structure than noise
    assert vae.ssim(shifted, picture)[0] > vae.ssim(worse, picture)[0]


def test_compression_ratio(tiny):
    assert vae.compression_ratio(tiny, 64, 64) == 48  # 3·64·64 / (4·8·8): SD's 8x VAE
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.compression_ratio(tiny, 60, 64)


def test_quantise_has_two_to_the_k_levels():
    latents = torch.randn(2, 4, 8, 8)
    for bits in (1, 3, 8):
        q = vae.quantise(latents, bits)
        assert all(len(torch.unique(q[b])) <= 2**bits for b in range(2))
        step = (latents[0].max() - latents[0].min()) / (2**bits - 1)
        assert (q - latents)[0].abs().max() <= step / 2 + 1e-6
    torch.testing.assert_close(vae.quantise(latents, 16), latents, atol=1e-3, rtol=0)


@pytest.mark.parametrize("bits", [0, 17, 2.5, True])
def test_bits_outside_1_to_16_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an int from 1 to 16"):
        vae.quantise(torch.zeros(1, 4, 2, 2), bits)


def test_quantisation_sweep_improves_with_bits(tiny, picture):
    sweep = vae.quantisation_sweep(tiny, picture, bits=[1, 4, 8, 16])
    psnr = sweep["psnr_to_decode"][:, 0].numpy()
    assert (np.diff(psnr) > 0).all() or psnr[-1] == np.inf
    assert sweep["decoded"].shape == (4, 1, 64, 64, 3)
    assert vae.invisible_from([1, 4, 8, 16], [10, 30, 45, np.inf]) == 8
    assert vae.invisible_from([1, 2], [10, 20]) is None
