"""Every claim notebooks 05-07 make about the model, checked on the toy model's actual behaviour.

Same prompts, seeds, settings and cache keys as the notebooks, so the sweeps both need are computed once per
test run (sdexplore.cache), and a claim that stops being true (new weights, a new diffusers) fails here.
"""

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.cache import cached
from sdexplore.studies import guidance, inpaint, schedule, vae
from sdexplore.toy import world
from sdexplore.toy.judge import get_judge

MODEL = "toy"
STEPS = 25
PROMPT_05 = "a photo of a large orange tabby cat with green eyes on the left, sea background"
PLAIN_CAT = "a photo of a cat on the left, sea background"
SCALES = [0, 0.5, 1, 2, 4, 7.5, 12, 20, 30]
RESCALES, HIGH_W = [0.0, 0.5, 1.0], 20
IMAGES = 16


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline(MODEL)


# --- notebook 05: guidance and negative prompts ----------------------------------------------------


@pytest.fixture(scope="module")
def sweep_05(toy):
    return cached("05_guidance_sweep", lambda: guidance.guidance_sweep(toy, PROMPT_05, SCALES, seed=0,
                                                                        num_inference_steps=STEPS),
                  model=MODEL, prompt=PROMPT_05, scales=SCALES, seed=0, steps=STEPS)


@pytest.fixture(scope="module")
def rescale_05(toy):
    return cached("05_guidance_rescale", lambda: guidance.rescale_sweep(toy, PROMPT_05, RESCALES, seed=0,
                                                                         guidance_scale=HIGH_W,
                                                                         num_inference_steps=STEPS),
                  model=MODEL, prompt=PROMPT_05, rescales=RESCALES, guidance_scale=HIGH_W, seed=0, steps=STEPS)


@pytest.fixture(scope="module")
def negative_05(toy):
    return cached("05_negative_prompt", lambda: guidance.negative_prompt_effect(
        toy, PLAIN_CAT, "white", seed=0, images=IMAGES, num_inference_steps=STEPS, guidance_scale=7.5),
        model=MODEL, prompt=PLAIN_CAT, negative_prompt="white", seed=0, images=IMAGES, steps=STEPS)


def test_05_the_recorded_guided_prediction_is_the_formula(toy):
    run = sdexplore.trace(toy, PROMPT_05, seed=0, num_inference_steps=STEPS, guidance_scale=7.5)
    parts = guidance.decompose(run)
    assert parts["formula_error"].max() < 1e-4
    torch.testing.assert_close(guidance.guided(run.noise_pred_uncond, run.noise_pred_text, 1.0), run.noise_pred_text)
    torch.testing.assert_close(guidance.guided(run.noise_pred_uncond, run.noise_pred_text, 0.0),
                               run.noise_pred_uncond)
    # CLAIM_PARTS


def test_05_diffusers_ignores_w_at_or_below_one(sweep_05):
    pictures = sweep_05["pictures"]
    assert sweep_05["cfg_used"].tolist() == [float(w > 1) for w in SCALES]
    assert torch.equal(pictures[0], pictures[2]) and torch.equal(pictures[1], pictures[2])
    assert not torch.equal(pictures[2], pictures[3])


# CLAIMS_05


# --- notebook 06: inpainting ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_06():
    drawing = world.render(world.SceneSpec([world.ObjectSpec("cat", "orange", "plain", "green", "left", "large")],
                                           "sea"))
    ys, xs = np.nonzero(drawing.masks[0])
    repaint = np.zeros(drawing.image.shape[:2], bool)
    repaint[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True
    return drawing.image, inpaint.as_mask(repaint, drawing.image)


PROMPT_06 = "a photo of a large red ball on the left, sea background"
SEEDS_06 = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def results_06(toy, scene_06):
    original, repaint = scene_06
    return cached("06_inpaint_seeds", lambda: inpaint.inpaint_seeds(toy, original, repaint, PROMPT_06, SEEDS_06,
                                                                     num_inference_steps=STEPS, guidance_scale=7.5),
                  model=MODEL, prompt=PROMPT_06, seeds=SEEDS_06, steps=STEPS, mask=repaint.tolist())


def test_06_the_blend_puts_the_noised_original_back_and_ends_on_its_latents(toy, scene_06):
    original, repaint = scene_06
    run = inpaint.inpaint(toy, original, repaint, PROMPT_06, seed=0, num_inference_steps=STEPS, guidance_scale=7.5)
    blend = inpaint.blend_steps(toy, run, original, repaint)
    kept = blend["mask"] == 0
    torch.testing.assert_close(run.latents[0, 0], blend["noise"])
    for i in range(run.num_steps):
        torch.testing.assert_close(blend["blended"][i][:, kept], blend["noised_original"][i][:, kept],
                                   rtol=1e-4, atol=1e-4)
    assert torch.equal(blend["blended"][-1][:, kept], blend["original"][:, kept])


def test_06_the_kept_region_changes_at_least_as_much_as_the_vae_round_trip(results_06):
    assert (results_06["inpainted"] > 0).all()
    assert (results_06["inpainted"] >= results_06["vae_floor"]).all()
    # CLAIM_KEPT


def test_06_masking_again_restores_the_original_exactly_outside_the_mask(results_06, scene_06):
    original, repaint = scene_06
    for pasted in results_06["recomposited"].numpy():
        assert np.array_equal(pasted[~repaint], original[~repaint])
    # CLAIM_SEAM


def test_06_the_masked_region_follows_the_prompt(results_06):
    verdicts = get_judge().predict(results_06["pictures"].numpy())
    # CLAIM_JUDGE


# --- notebook 07: the schedule, the step count and the VAE -------------------------------------------


@pytest.fixture(scope="module")
def picture_07():
    return world.render(world.SceneSpec([world.ObjectSpec("cat", "orange", "plain", "green", "left"),
                                         world.ObjectSpec("palm tree", "green", position="right")], "sea")).image


PROMPT_07 = PROMPT_05
SCHEDULERS, COUNTS, REFERENCE = ["ddim", "euler", "dpm++", "euler_a"], [5, 10, 20, 50], ("ddim", 100)
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def sweep_07(toy):
    return cached("07_steps_sweep", lambda: schedule.steps_sweep(toy, PROMPT_07, SCHEDULERS, COUNTS, seed=0,
                                                                  reference=REFERENCE, guidance_scale=7.5),
                  model=MODEL, prompt=PROMPT_07, schedulers=SCHEDULERS, counts=COUNTS, reference=list(REFERENCE),
                  seed=0)


# CLAIMS_07
