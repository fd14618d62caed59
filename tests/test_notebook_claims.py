"""Every claim the notebooks make about the model, checked on the toy model's actual behaviour.

Same prompts, seeds and settings as the notebooks, so a claim that stops being true (new weights, a new
diffusers) fails here, not silently in a study session.
"""

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.cache import cached
from sdexplore.studies.attention import attended_region, iou, slide_attention, token_kind_shares
from sdexplore.studies.denoising import first_step_within, prompt_effect, settling
from sdexplore.studies.img2img import (
    distance_to,
    neighbour_changes,
    seed_spread,
    signal_left,
    strength_grid,
)
from sdexplore.studies.interpolation import divergence, picture_changes, trace_interpolation
from sdexplore.toy import world
from sdexplore.toy.judge import foreground_mask, get_judge

CAT = "a photo of a large orange tabby cat with green eyes on the left, sea background"  # notebook 01
CAT_02 = "a photo of a large orange cat on the left, sea background"  # notebook 02
SLIDE = "a photo of a large grey cat at the center, plain white background"


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline("toy")


@pytest.fixture(scope="module")
def run_01(toy):
    return sdexplore.trace(toy, CAT, seed=0, num_inference_steps=25, guidance_scale=7.5)


@pytest.fixture(scope="module")
def run_02(toy):
    return sdexplore.trace(toy, CAT_02, seed=0, num_inference_steps=25, guidance_scale=7.5, attention=True)


# --- notebook 01: from noise to a cat ------------------------------------------------------------


def test_01_the_latent_is_four_cards_of_16x16_for_a_64x64_picture(run_01):
    assert tuple(run_01.latents.shape[2:]) == (4, 16, 16)
    assert run_01.images[0].size == (64, 64)


def test_01_the_guess_settles_long_before_the_noise_is_gone(run_01):
    curves = settling(run_01)
    guess, sampler = first_step_within(curves["x0"], 0.25), first_step_within(curves["x_t"], 0.25)
    assert guess <= run_01.num_steps // 2 + 1, guess  # about halfway: step 13 of 25 (the notebook's printout)
    assert sampler - guess >= run_01.num_steps // 4, (guess, sampler)  # the sampler's latent only at step 22


def test_01_the_first_guess_is_a_blur_of_the_final_picture(toy, run_01):
    """The HN question "why not jump straight to the final prediction?": the first jump is a blur."""
    first, final = run_01.preview(0, "x0", "vae", pipe=toy)[0], run_01.images[0]

    def detail(image):  # mean absolute difference between neighbouring pixels
        pixels = np.asarray(image, dtype=np.float32)
        return np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean()

    assert detail(first) < 0.5 * detail(final)


def test_01_padding_rows_of_the_prompt_embedding_are_not_zeros(run_01):
    last_word = max(t.position for t in run_01.tokens[0] if t.kind == "word")
    padding_rows = run_01.prompt_embeds[0, last_word + 2:]
    assert len(padding_rows) > 40 and padding_rows.norm(dim=-1).min() > 1.0


def test_01_the_prompt_decides_the_first_step_then_guidance_multiplies_a_small_difference(run_01):
    effect = prompt_effect(run_01)
    assert effect.argmax() == 0 and effect[0] > 1.0  # from pure noise, the prompt decides the picture
    assert effect[run_01.num_steps // 4:].max() < 0.2  # later, a small difference...
    guided_shift = (run_01.noise_pred - run_01.noise_pred_uncond).norm()
    prompt_shift = (run_01.noise_pred_text - run_01.noise_pred_uncond).norm()
    torch.testing.assert_close(guided_shift / prompt_shift, torch.tensor(7.5))  # ...multiplied by the scale


# --- notebook 02: where words look -----------------------------------------------------------------


def test_02_the_words_take_less_attention_than_start_end_and_padding(run_02):
    shares = token_kind_shares(run_02)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert shares["word"] < 0.5 < shares["start"] + shares["end"] + shares["padding"]


def test_02_the_cat_map_lies_on_the_cat(run_02):
    image = np.asarray(run_02.images[0])
    region = attended_region(run_02.attention.word_map("cat")[0], image.shape[:2])
    assert iou(region, foreground_mask(image)) >= 0.6


def test_02_the_cat_map_moves_with_the_picture_along_the_slide(toy):
    """The notes guessed the attention "hasn't changed much" while the picture jumped. Measured: the word's map
    changes most exactly where the picture changes most; it follows the picture it is computed from."""
    slide = slide_attention(toy, SLIDE, "cat", "kitten", [i / 8 for i in range(9)], seed=0,
                            num_inference_steps=25, guidance_scale=7.5)
    assert np.argmax(slide["map_change"]) == np.argmax(slide["image_change"])
    assert slide["image_change"].max() >= 2 * np.median(slide["image_change"])  # a peak mid-slide, not a steady morph


# --- notebook 03: cat <-> kitten, where the picture branches ---------------------------------------


@pytest.fixture(scope="module")
def slide_03(toy):
    alphas = [i / 16 for i in range(17)]
    return trace_interpolation(toy, SLIDE, "cat", "kitten", alphas, seed=0, num_inference_steps=25, guidance_scale=7.5)


def test_03_the_picture_changes_mid_slide_in_several_steps_and_the_judge_flips_once_later(slide_03):
    """Measured: most of the change (0.066 of 0.086) between α 0.31 and 0.69, the largest step (0.02, α 0.56 to
    0.62) not alone (0.015 at α 0.38 to 0.44); the judge flips once, at α 0.81 to 0.88, where the picture barely
    moves (0.002)."""
    kinds = [p["kind"] for p in get_judge().predict(np.stack([np.asarray(r.images[0]) for r in slide_03]))]
    flip = kinds.index("kitten")
    assert flip > 0 and kinds == ["cat"] * flip + ["kitten"] * (len(kinds) - flip)
    changes = picture_changes(slide_03)  # [16]: between alphas k/16 and (k + 1)/16
    assert changes[5:11].sum() >= 0.7 * changes.sum()  # the middle of the slide, α 0.31 to 0.69, carries most
    largest, second = changes.sort(descending=True).values[:2]
    assert largest < 0.5 * changes.sum() and second >= 0.5 * largest  # in several steps, not one jump
    assert changes[flip - 1] < 0.25 * largest  # the judge's flip is not where the picture changes most


def test_03_the_runs_branch_in_the_first_third_and_never_rejoin(slide_03):
    jump = int(picture_changes(slide_03).argmax())
    near = divergence(slide_03[jump], slide_03[jump + 1])["x0"]
    far = divergence(slide_03[2], slide_03[3])["x0"]
    steps = len(near)
    assert int(near.argmax()) <= steps // 3 and near.max() >= 5 * near[0]  # amplified, early
    assert near[-1] >= 0.5 * near.max() and near[-1] >= 5 * far[-1]  # and never closed again
    assert far.max() < 0.05  # far from the jump, nothing is amplified


# --- notebook 04: img2img strength, the seed, and what survives at 0.99 ----------------------------

STRENGTHS = [0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]


@pytest.fixture(scope="module")
def sweep_04(toy):
    from PIL import Image

    drawing = world.render(world.SceneSpec([world.ObjectSpec("cat", "orange", "plain", "green", "left"),
                                            world.ObjectSpec("palm tree", "green", position="right")], "sea"))
    source = Image.fromarray(drawing.image)
    prompt, seeds, settings = "cat, sea, wave, palm tree", list(range(len(STRENGTHS))), {"num_inference_steps": 25,
                                                                                           "guidance_scale": 7.5}
    sweep = cached("04_strength_sweep", lambda: strength_grid(toy, source, prompt, STRENGTHS, seeds, **settings),
                   model="toy", prompt=prompt, strengths=STRENGTHS, seeds=seeds, **settings)  # the notebook's key
    return {"drawing": drawing, "source": source, "first_timestep": sweep["first_timestep"],
            "images": sweep["pictures"].numpy().astype(np.float32)}


def test_04_the_judge_names_a_cat_in_most_pictures_and_a_palm_tree_in_a_few(sweep_04):
    """Measured: cat or kitten in 43 of the 49 pictures, palm tree in 6. By eye (and by the foreground's T shape)
    about 23 show a palm tree alone: the judge, which reads one object, takes many of those for cats, as the
    notebook says."""
    images = sweep_04["images"].reshape(-1, 64, 64, 3).astype(np.uint8)
    kinds = [p["kind"] for p in get_judge().predict(images)]
    assert kinds.count("cat") + kinds.count("kitten") >= 0.8 * len(kinds)
    assert 1 <= kinds.count("palm tree") <= 0.2 * len(kinds)


def test_04_a_row_changes_in_jumps_mostly_between_0_7_and_0_8(sweep_04):
    jumps = neighbour_changes(sweep_04["images"])  # [seed, strength - 1]
    top_two = np.sort(jumps, axis=1)[:, -2:].sum(axis=1)
    # one or two jumps carry most of the row's change for six of the seven seeds (seed 3's: 58%)
    assert (top_two >= 0.6 * jumps.sum(axis=1)).sum() >= len(jumps) - 1
    biggest = jumps.argmax(axis=1)  # measured: 0.7-0.8 for seeds 0, 1, 2, 3, 5; 0.95-0.99 for 4; 0.6-0.7 for 6
    assert len(jumps) // 2 < (biggest == STRENGTHS.index(0.7)).sum() < len(jumps)  # most seeds, not all


def test_04_change_and_the_seeds_disagreement_step_up_at_0_8_and_then_stay(sweep_04):
    change = distance_to(sweep_04["images"], sweep_04["source"]).mean(axis=0)  # 0.099 0.109 0.134 ... 0.14
    assert change[-1] > change[0] and (np.diff(change) >= -0.005).all()
    assert change[2:].min() > change[:2].max() and np.ptp(change[2:]) < 0.02  # grows up to 0.8, then hardly moves
    spread = seed_spread(sweep_04["images"])  # 0.048 0.044 0.08 0.079 0.08 0.078 0.077
    assert spread[2:].min() >= 1.5 * spread[:2].max()  # smallest at 0.6 and 0.7, up at 0.8...
    assert np.ptp(spread[2:]) < 0.25 * spread[2:].min()  # ...and it stays there


def test_04_sd15s_schedule_keeps_some_of_the_drawing_even_at_strength_1(toy, tiny, sweep_04):
    toy_left = [signal_left(toy.scheduler, t) for t in sweep_04["first_timestep"][0]]
    sd15_left = [signal_left(tiny.scheduler, sdexplore.trace(tiny, "a cat", seed=0, image=sweep_04["source"],
                                                             strength=s, num_inference_steps=50).timesteps[0])
                 for s in (0.99, 1.0)]
    assert 0.07 < sd15_left[1] < sd15_left[0] < 0.1  # ~8% at 0.99, ~7.6% at 1.0
    assert toy_left[-2] < 0.03 and toy_left[-1] == 0  # the toy model: 2% at 0.99, nothing at 1.0


def test_04_on_the_toy_model_strength_0_99_paints_what_1_0_paints(sweep_04):
    images = sweep_04["images"]
    assert (distance_to(images[:, -2], images[:, -1]) < 0.02).all()
    background = ~np.logical_or.reduce(sweep_04["drawing"].masks)
    kept = distance_to(images[:, 0], sweep_04["source"], where=background)
    assert (distance_to(images[:, -2], sweep_04["source"], where=background) > kept).mean() >= 0.8
