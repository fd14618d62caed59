"""The trace of a denoising run: shapes, x0 for every scheduler, img2img/inpaint, determinism, hooks restored."""

import numpy as np
import pytest
import torch
from PIL import Image

import sdexplore
from sdexplore.capture.steps import alpha_bar_at

PROMPT = "a photo of a cat"


def run_tiny(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 5)
    return sdexplore.trace(pipe, kwargs.pop("prompt", PROMPT), seed=kwargs.pop("seed", 0), **kwargs)


def test_public_shapes_follow_the_issue(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=8, guidance_scale=7.5)
    n = 8
    assert run.timesteps.shape == (n,)
    assert run.latents.shape == (n + 1, 1, 4, 8, 8)
    for name in ("x0", "noise_pred", "noise_pred_text", "noise_pred_uncond"):
        tensor = getattr(run, name)
        assert tensor.shape == (n, 1, 4, 8, 8), name
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and not tensor.requires_grad
    assert len(run.images) == 1 and run.images[0].size == (64, 64)
    assert run.prompt_embeds.shape == (1, 77, 32) and run.negative_prompt_embeds.shape == (1, 77, 32)
    assert run.params["seed"] == 0 and run.params["num_inference_steps"] == 8 and run.params["guidance_scale"] == 7.5
    assert len(run.tokens[0]) == 77


def test_guided_prediction_is_the_cfg_combination(tiny):
    run = run_tiny(tiny, guidance_scale=5.0)
    expected = run.noise_pred_uncond + 5.0 * (run.noise_pred_text - run.noise_pred_uncond)
    torch.testing.assert_close(run.noise_pred, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run.noise_pred_text, run.noise_pred_uncond)


def test_without_cfg_there_is_no_unconditional_prediction(tiny):
    run = run_tiny(tiny, guidance_scale=1.0)
    assert run.noise_pred_uncond is None and run.negative_prompt_embeds is None
    torch.testing.assert_close(run.noise_pred, run.noise_pred_text)


def test_latents_chain_step_to_step(tiny):
    run = run_tiny(tiny)
    step = run.step(2)
    assert torch.equal(step["x_t"], run.latents[2]) and torch.equal(step["x_prev"], run.latents[3])
    assert not torch.equal(run.latents[0], run.latents[-1])


@pytest.mark.parametrize("pipe_name", ["tiny", "tiny_sd2"])
@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "euler", "euler_a"])
def test_x0_matches_the_schedulers_own_pred_original_sample(request, pipe_name, scheduler):
    base = request.getfixturevalue(pipe_name)
    pipe = sdexplore.load_pipeline("tiny-sd2" if pipe_name == "tiny_sd2" else "tiny", scheduler=scheduler)
    assert pipe.scheduler.config.prediction_type == base.scheduler.config.prediction_type
    run = run_tiny(pipe)
    assert run.scheduler_x0 is not None
    torch.testing.assert_close(run.x0, run.scheduler_x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_x0_with_zero_terminal_snr_matches_the_scheduler(scheduler):
    """The toy model's schedule: betas rescaled to zero SNR, v-prediction, sampling starts at t=999."""
    pipe = sdexplore.load_pipeline("tiny-sd2")
    pipe.scheduler = sdexplore.SCHEDULERS[scheduler].from_config(
        pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    run = run_tiny(pipe)
    assert run.timesteps[0] == 999 and torch.isfinite(run.x0).all()
    torch.testing.assert_close(run.x0, run.scheduler_x0, atol=1e-4, rtol=1e-4)
    # no signal left at t=999, so x0 = -v (Euler keeps alpha_bar = 2**-24 there, not 0)
    torch.testing.assert_close(run.x0[0], -run.noise_pred[0], atol=2e-3, rtol=0)


def test_x0_for_dpm_solver_matches_its_own_data_prediction():
    pipe = sdexplore.load_pipeline("tiny", scheduler="dpm++")
    run = run_tiny(pipe)
    assert run.scheduler_x0 is None  # DPM++ does not report x0: sdexplore computes it
    scheduler = sdexplore.load_pipeline("tiny", scheduler="dpm++").scheduler
    scheduler.set_timesteps(5)
    for i in range(run.num_steps):
        scheduler._step_index = i
        expected = scheduler.convert_model_output(run.noise_pred[i], sample=run.latents[i])
        torch.testing.assert_close(run.x0[i], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny-sd2"])
def test_x0_for_pndm_from_the_closed_form(name):
    pipe = sdexplore.load_pipeline(name, scheduler="pndm")
    run = run_tiny(pipe)
    for i, t in enumerate(run.timesteps.tolist()):
        a = torch.tensor(alpha_bar_at(pipe.scheduler, t))
        x_t, prediction = run.latents[i], run.noise_pred[i]
        if pipe.scheduler.config.prediction_type == "epsilon":
            expected = (x_t - (1 - a).sqrt() * prediction) / a.sqrt()
        else:
            expected = a.sqrt() * x_t - (1 - a).sqrt() * prediction
        torch.testing.assert_close(run.x0[i], expected.float(), atol=1e-4, rtol=1e-4)


def test_alpha_bar_computed_where_the_timestep_lives_is_the_tables():
    """alpha_bar_of_tensor (no read of the timestep: no GPU sync per step) equals alpha_bar_at: exactly at the
    integer timesteps DDIM-type schedulers use, to float64 rounding between them, 0 where SNR is zero."""
    from diffusers import DDIMScheduler

    from sdexplore.capture.steps import alpha_bar_of_tensor, training_sigmas
    from sdexplore.toy.model import training_scheduler

    for scheduler in (DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                      training_scheduler("v_prediction", True)):  # the toy's: zero terminal SNR, sigma = inf
        sigmas = training_sigmas(scheduler)
        table = torch.from_numpy(sigmas)
        for t in range(len(sigmas)):
            assert float(alpha_bar_of_tensor(torch.tensor(t), table)) == alpha_bar_at(scheduler, t, sigmas)
        for t in np.random.default_rng(0).uniform(-3, len(sigmas) + 3, 500):
            expected = alpha_bar_at(scheduler, float(t), sigmas)
            assert float(alpha_bar_of_tensor(torch.tensor([t, 0.0], dtype=torch.float64), table)) == \
                pytest.approx(expected, rel=1e-14, abs=1e-300)
    assert float(alpha_bar_of_tensor(torch.tensor(999.0), table)) == 0.0


def test_same_seed_is_bitwise_identical_and_seeds_differ(tiny):
    first, second = run_tiny(tiny, seed=3), run_tiny(tiny, seed=3)
    for name in ("latents", "x0", "noise_pred", "noise_pred_text", "noise_pred_uncond", "prompt_embeds"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    assert not torch.equal(first.latents[0], run_tiny(tiny, seed=4).latents[0])


def test_seed_is_required_and_checked(tiny):
    with pytest.raises(TypeError):
        sdexplore.trace(tiny, PROMPT, num_inference_steps=2)
    with pytest.raises(TypeError, match="seed must be an int"):
        sdexplore.trace(tiny, PROMPT, seed=1.5, num_inference_steps=2)
    with pytest.raises(TypeError, match="generator"):
        sdexplore.trace(tiny, PROMPT, seed=0, generator=torch.Generator(), num_inference_steps=2)


def test_batched_prompts(tiny):
    run = sdexplore.trace(tiny, ["a cat", "a dog on the grass"], seed=0, num_inference_steps=3)
    assert run.latents.shape[1] == 2 and len(run.images) == 2 and len(run.tokens) == 2
    assert [t.word for t in run.tokens[1][1:6]] == ["a", "dog", "on", "the", "grass"]


def make_image(color=(200, 120, 40), size=64):
    array = np.zeros((size, size, 3), np.uint8)
    array[:] = color
    array[size // 4: size // 2, size // 4: size // 2] = (20, 60, 220)
    return Image.fromarray(array)


@pytest.mark.parametrize("strength,expected", [(1.0, 10), (0.75, 7), (0.5, 5), (0.25, 2)])
def test_img2img_runs_int_steps_times_strength(tiny, strength, expected):
    run = run_tiny(tiny, image=make_image(), strength=strength, num_inference_steps=10)
    assert run.num_steps == expected == int(10 * strength)
    assert run.params["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert run.inputs["image"].shape == (64, 64, 3)


def test_img2img_starts_from_the_noised_image_not_pure_noise(tiny):
    weak = run_tiny(tiny, image=make_image(), strength=0.3, num_inference_steps=10)
    txt = run_tiny(tiny, num_inference_steps=10)
    image_latents = tiny.vae.encode(torch.from_numpy(np.array(make_image())).permute(2, 0, 1)[None].float() / 127.5 - 1)
    mean = image_latents.latent_dist.mean * tiny.vae.config.scaling_factor
    # at strength 0.3 x_T is mostly image: closer to the image latents than a pure-noise start is
    assert (weak.latents[0] - mean).norm() < (txt.latents[0] - mean).norm()


def inpaint_inputs(size=64):
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255  # white = repaint the right half, keep the left
    return make_image(size=size), Image.fromarray(mask)


def test_inpaint_with_4_channel_unet_records_the_blended_latents(tiny):
    image, mask = inpaint_inputs()
    kwargs = dict(image=image, mask_image=mask, num_inference_steps=6, strength=1.0)
    cat, dog = run_tiny(tiny, **kwargs), run_tiny(tiny, prompt="a dog", **kwargs)
    assert cat.params["pipeline"] == "StableDiffusionInpaintPipeline" and cat.num_steps == 6
    kept, repainted = slice(0, 3), slice(5, 8)  # latent columns well inside each half
    # after the last step, the kept half is the original image's latents whatever the prompt...
    torch.testing.assert_close(cat.latents[-1][..., kept], dog.latents[-1][..., kept])
    # ... while the repainted half follows the prompt
    assert not torch.allclose(cat.latents[-1][..., repainted], dog.latents[-1][..., repainted])
    # and the recorded latents are the blended ones, not the scheduler's own output
    inpaint = sdexplore.as_inpaint(tiny)
    with sdexplore.tracing(inpaint) as rec:
        inpaint(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs)  # no rec.callback: scheduler output
    unblended = rec.to_trace(prompt=PROMPT, seed=0)
    torch.testing.assert_close(unblended.latents[-1][..., repainted], cat.latents[-1][..., repainted])
    assert not torch.allclose(unblended.latents[-1][..., kept], cat.latents[-1][..., kept])


def test_inpaint_with_9_channel_unet(tiny_inpaint):
    image, mask = inpaint_inputs()
    run = run_tiny(tiny_inpaint, image=image, mask_image=mask, num_inference_steps=4)
    assert run.params["unet_in_channels"] == 9
    assert run.latents.shape == (5, 1, 4, 8, 8) and run.x0.shape == (4, 1, 4, 8, 8)
    torch.testing.assert_close(run.x0, run.scheduler_x0, atol=1e-4, rtol=1e-4)


def test_wrong_image_and_mask_sizes_are_clear_errors(tiny):
    image, _ = inpaint_inputs()
    with pytest.raises(ValueError, match="same size"):
        run_tiny(tiny, image=image, mask_image=Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="multiples of 8"):
        run_tiny(tiny, image=Image.new("RGB", (60, 60)), strength=0.5)
    with pytest.raises(ValueError, match="mask_image needs image"):
        run_tiny(tiny, mask_image=Image.new("L", (64, 64)))
    with pytest.raises(ValueError, match="strength"):
        run_tiny(tiny, image=image, strength=1.5)


def test_step_index_out_of_range_is_a_clear_error(tiny):
    run = run_tiny(tiny, num_inference_steps=3)
    assert torch.equal(run.step(-1)["x0"], run.x0[2])
    with pytest.raises(IndexError, match=r"step 3 does not exist: this trace has 3 steps \(0..2"):
        run.step(3)
    with pytest.raises(ValueError, match="choose one of"):
        run.latent(0, "noise")


def hooks_of(pipe):
    return (len(pipe.unet._forward_pre_hooks), len(pipe.unet._forward_hooks), "step" in vars(pipe.scheduler),
            dict(pipe.unet.attn_processors))


def test_pipeline_is_left_as_found_also_when_the_run_raises(tiny):
    before = hooks_of(tiny)
    step_method = type(tiny.scheduler).step

    def explode(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("boom")
        return {}

    with pytest.raises(RuntimeError, match="boom"):
        run_tiny(tiny, callback_on_step_end=explode)
    after = hooks_of(tiny)
    assert after[:3] == before[:3] == (0, 0, False)
    assert all(after[3][name] is processor for name, processor in before[3].items())
    assert tiny.scheduler.step.__func__ is step_method
    run_tiny(tiny, num_inference_steps=2)  # still works
    assert hooks_of(tiny)[:3] == (0, 0, False)


def test_user_callback_runs_and_its_changes_are_recorded(tiny):
    seen = []

    def halve(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": kwargs["latents"] * 0.5} if i == 0 else {}

    run = run_tiny(tiny, num_inference_steps=3, callback_on_step_end=halve)
    plain = run_tiny(tiny, num_inference_steps=3)
    assert seen == [0, 1, 2]
    torch.testing.assert_close(run.latents[1], plain.latents[1] * 0.5)
    torch.testing.assert_close(run.step(1)["x_t"], run.latents[1])


def test_context_manager_form_equals_trace(tiny):
    with sdexplore.tracing(tiny) as rec:
        out = tiny(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
                   callback_on_step_end=rec.callback)
    by_hand = rec.to_trace(out, prompt=PROMPT, seed=0)
    by_trace = run_tiny(tiny)
    assert torch.equal(by_hand.latents, by_trace.latents) and torch.equal(by_hand.x0, by_trace.x0)
    assert "step" not in vars(tiny.scheduler)


def test_long_prompt_warns_and_the_table_shows_what_was_cut(tiny):
    prompt = " ".join(["cat"] * 80)
    with pytest.warns(sdexplore.PromptTruncatedWarning, match="5 were cut"):
        run = run_tiny(tiny, prompt=prompt, num_inference_steps=2)
    table = run.tokens[0]
    assert sum(t.truncated for t in table) == 5 and all(t.position >= 77 for t in table if t.truncated)
