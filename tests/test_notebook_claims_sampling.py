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
    ratio = parts["difference"] / parts["text"]
    assert ratio[0] > 0.9 and ratio[-1] < 0.15  # large at the first step (0.97), about a tenth by the end (0.11)
    assert parts["guided"][0] > 7 * parts["text"][0] and parts["guided"][STEPS // 2] < 1.5 * parts["text"][STEPS // 2]
    assert parts["uncond"][0] < 0.5 * parts["text"][0]  # the unconditional prediction starts small (0.29 vs 0.99)
    assert ((parts["uncond"] - parts["text"]).abs()[1:] < 0.3).all()  # then the two are alike in size


def test_05_diffusers_ignores_w_at_or_below_one(sweep_05):
    pictures = sweep_05["pictures"]
    assert sweep_05["cfg_used"].tolist() == [float(w > 1) for w in SCALES]
    assert torch.equal(pictures[0], pictures[2]) and torch.equal(pictures[1], pictures[2])
    assert not torch.equal(pictures[2], pictures[3])


def test_05_a_negative_prompt_enlarges_the_difference_and_looks_away_from_the_cat(toy):
    from sdexplore.studies.attention import attended_region
    from sdexplore.toy.judge import foreground_mask

    with_negative = sdexplore.trace(toy, PLAIN_CAT, seed=0, num_inference_steps=STEPS, guidance_scale=7.5,
                                    negative_prompt="white", attention=True, attention_options={"keep_negative": True})
    without = sdexplore.trace(toy, PLAIN_CAT, seed=0, num_inference_steps=STEPS, guidance_scale=7.5)
    plain, negative = guidance.decompose(without), guidance.decompose(with_negative)
    assert negative["difference"].mean() > 1.5 * plain["difference"].mean()
    assert negative["formula_error"].max() < 1e-4  # the same formula, with the negative prediction as "uncond"
    cat = foreground_mask(np.asarray(with_negative.images[0]))
    region = attended_region(with_negative.attention.word_map("white", negative=True)[0], cat.shape)
    assert region[cat].mean() < 0.5 * region[~cat].mean()


def test_05_the_negative_prompt_white_makes_fewer_white_cats(negative_05):
    judge = get_judge()
    plain = judge.predict(negative_05["plain"].numpy())
    negative = judge.predict(negative_05["negative"].numpy())
    assert all(v["kind"] == "cat" for v in plain + negative)
    assert guidance.share_judged(plain, "color", "white") == 1.0
    assert guidance.share_judged(negative, "color", "white") == 0.0  # none of the 16 is white
    assert guidance.share_judged(negative, "color", "brown") == 1.0  # all 16 judged brown


SEA = np.zeros((64, 64), bool)
SEA[:, 40:] = True  # the right third of notebook 05's picture: only sea


def test_05_high_guidance_does_not_burn_the_picture_but_thins_the_sea(sweep_05):
    """Measured instead of SD's "burnt" pictures: on the toy model high w clips under 1% of the values, and it
    thins the sea's waves (18% less texture than at w = 7.5 at w = 20, 30% less at w = 30) without wiping them out."""
    clipped = sweep_05["clipped"].numpy()
    assert (clipped < 0.01).all()  # 0.11% at w <= 1, 0.12% at 7.5, 0.37% at w = 30
    assert clipped[-1] > 3 * clipped[2]  # but w = 30 clips more than no guidance
    saturation = sweep_05["saturation"].numpy()
    assert saturation.max() - saturation.min() < 0.03  # 0.725 to 0.746
    sea = guidance.detail(sweep_05["pictures"].numpy(), SEA)
    at = {w: sea[SCALES.index(w)] for w in (1, 7.5, 20, 30)}
    assert at[7.5] > 0.9 * at[1]  # the default keeps the waves
    assert 0.6 * at[7.5] < at[30] < at[20] < 0.9 * at[7.5]  # high guidance thins them (-18%, -30%), keeps most
    assert (np.diff(sea[2:]) <= 1e-3).all()


def test_05_guidance_rescale_brings_the_std_back_but_hardly_the_waves(rescale_05, sweep_05):
    """At w = 20, phi = 1 gives the text prediction's std at every step; in the picture it gives back only ~5% of
    the sea's texture (still below w = 7.5's), lowers saturation below w <= 1's, and clipping stays tiny."""
    ratio = rescale_05["std_ratio"].numpy()
    torch.testing.assert_close(rescale_05["std_ratio"][-1], torch.ones(STEPS), rtol=1e-3, atol=1e-3)
    assert ratio[0, 0] > 10 and ratio[0].min() > 1  # w = 20 inflates the prediction's std, most at the start
    assert ratio[1].mean() < ratio[0].mean()
    sea = guidance.detail(rescale_05["pictures"].numpy(), SEA)
    sea_default = guidance.detail(sweep_05["pictures"].numpy(), SEA)[SCALES.index(7.5)]
    assert sea[0] < sea[1:].min() and sea.max() < 1.1 * sea[0]  # phi gives back a little texture (0.035 -> 0.037)
    assert sea.max() < 0.9 * sea_default  # not what w = 7.5 keeps (0.043)
    saturation = rescale_05["saturation"]
    assert saturation[2] < saturation[0] - 0.02  # phi = 1: 0.746 -> 0.715
    assert saturation[2] < sweep_05["saturation"][SCALES.index(1)]  # below w <= 1's 0.725
    assert (rescale_05["clipped"] < 0.003).all()  # 0.12%, 0.08%, 0.25%


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
    assert (results_06["inpainted"] <= 1.5 * results_06["vae_floor"]).all()  # most of it is the VAE's
    assert (results_06["repainted"] >= 4 * results_06["inpainted"]).all()


def test_06_masking_again_restores_the_original_exactly_outside_the_mask(results_06, scene_06):
    original, repaint = scene_06
    for pasted in results_06["recomposited"].numpy():
        assert np.array_equal(pasted[~repaint], original[~repaint])
    assert (results_06["seam_inpainted"] < 1.05).all()  # the model's own picture has no edge at the mask (0.93-0.96)
    assert (results_06["seam_recomposited"] > 1.2).all()  # pasting the original back makes one (1.27-1.31)
    assert (results_06["seam_recomposited"] > results_06["seam_inpainted"]).all()
    assert inpaint.seam(original, repaint) < 1


def test_06_the_masked_region_follows_the_prompt(results_06):
    verdicts = get_judge().predict(results_06["pictures"].numpy())
    assert [(v["kind"], v["color"]) for v in verdicts] == [("ball", "red")] * len(SEEDS_06)


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


def test_07_forward_noising_leaves_nothing_of_the_picture_at_the_last_timestep(toy, picture_07):
    noised = schedule.forward_noising(toy, picture_07, [-1, 250, 500, 750, 999], seed=0)
    signal = noised["signal"].numpy()
    assert signal[0] == 1 and (np.diff(signal) < 0).all() and signal[-1] == 0
    assert 0.45 < signal[2] < 0.55  # half way through the timesteps, about half of the picture is left


def test_07_the_schedules_and_the_timesteps_they_visit(toy, tiny):
    assert float(schedule.schedule_curves(toy.scheduler)["signal"][-1]) == 0  # zero terminal SNR
    assert 0.06 < float(schedule.schedule_curves(tiny.scheduler)["signal"][-1]) < 0.075  # SD 1.5 keeps ~7%
    leading = schedule.picked_timesteps(tiny.scheduler, "ddim", 20, "leading").int().tolist()
    trailing = schedule.picked_timesteps(tiny.scheduler, "ddim", 20, "trailing").int().tolist()
    assert (leading[0], leading[-1]) == (951, 1) and (trailing[0], trailing[-1]) == (999, 49)
    assert int(schedule.picked_timesteps(tiny.scheduler, "ddim", 1000, "leading")[0]) == 1000  # not a training t
    fifty = schedule.picked_timesteps(tiny.scheduler, "ddim", 50, "leading")
    assert (fifty[:-1] - fifty[1:] == 20).all()  # the notes' "50 steps of 20"


def test_07_ten_steps_are_enough_for_the_deterministic_schedulers(sweep_07):
    distance = sweep_07["distance"].numpy()
    for row in distance[:3]:  # ddim, euler, dpm++
        assert schedule.practical_steps(COUNTS, row, TOLERANCE) == 10
        assert (np.diff(row) <= 0).all() and row[-1] < 0.005
    assert distance[:3, 0].min() > TOLERANCE  # 5 steps are not


def test_07_euler_ancestral_never_comes_within_tolerance_of_the_reference(sweep_07):
    """Euler a's fresh noise: more steps bring it closer (0.096 at 10, 0.048 at 50), never within 2%, and at 50
    steps it is still 16 times as far as DDIM, Euler and DPM++."""
    distance = sweep_07["distance"].numpy()
    assert (distance[3] > TOLERANCE).all() and schedule.practical_steps(COUNTS, distance[3], TOLERANCE) is None
    assert distance[3, -1] < distance[3, 1]  # closer at 50 steps than at 10
    assert distance[3, -1] > 10 * distance[:3, -1].max()


def test_07_the_first_guess_is_far_from_the_end_and_late_guesses_are_close(sweep_07):
    curves = sweep_07["x0_to_final"].numpy()
    assert int(sweep_07["x0_steps"][0]) == 50
    for curve in curves[:3]:
        assert curve[0] > 3 and curve[len(curve) // 5] < 0.75 and curve[len(curve) // 2] < 0.3
    assert curves[3, len(curves[3]) // 2] > curves[:3, len(curves[3]) // 2].max()


def test_07_the_vae_round_trip_loses_detail_and_compresses_12x(toy, picture_07):
    back = vae.round_trip_pictures(toy, picture_07[None])
    assert 18 < float(vae.psnr(back, picture_07[None])[0]) < 25
    assert 0.7 < float(vae.ssim(back, picture_07[None])[0]) < 0.85
    assert vae.compression_ratio(toy, 64, 64) == 12


def test_07_five_bits_per_latent_value_are_enough(toy, picture_07):
    bits = vae.quantisation_sweep(toy, picture_07)
    assert vae.invisible_from(bits["bits"], bits["psnr_to_decode"]) == 5
    to_picture = bits["psnr_to_picture"][:, 0].numpy()
    assert abs(to_picture[3] - float(bits["round_trip_psnr"][0])) < 0.3  # from 4 bits on, the VAE's loss dominates
