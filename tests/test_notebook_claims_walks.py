"""Every claim notebooks 09 (walks, where paths split) and 10 (textual inversion) make, on the toy model.

Same prompts, seeds, settings and cache keys as the notebooks: within one test run a sweep is computed once,
by whichever of the notebook and this file asks first (sdexplore.cache).
"""

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.cache import cached
from sdexplore.studies import inversion, walks
from sdexplore.textual_inversion import load_textual_inversion, save_textual_inversion, train_textual_inversion
from sdexplore.toy import world
from sdexplore.toy.judge import get_judge

MODEL = "toy"
SETTINGS = dict(num_inference_steps=20, guidance_scale=7.5)
CAT = "a photo of a large grey cat at the center, plain white background"
KITTEN = "a photo of a large grey kitten at the center, plain white background"
ALPHAS = [i / 6 for i in range(7)]
SEEDS = [0, 1, 2, 3]
PROMPT = "a photo of a large orange cat on the left, sea background"
NOISE_ALPHAS = [0, 0.25, 0.4, 0.5, 0.6, 0.75, 1]
STRENGTHS = [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1]
ANGLES = np.linspace(0, 2 * np.pi, 13)
THRESHOLD = 0.2


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline(MODEL)


def judged(pictures):
    return [p["kind"] for p in get_judge().predict(np.asarray(pictures))]


# --- notebook 09: walks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid(toy):
    return cached("09_prompt_grid", lambda: walks.grid_x0(toy, CAT, KITTEN, ALPHAS, SEEDS, "slerp", **SETTINGS),
                  model=MODEL, a=CAT, b=KITTEN, alphas=ALPHAS, seeds=SEEDS, method="slerp", **SETTINGS)


@pytest.fixture(scope="module")
def lerp_row(toy):
    return cached("09_prompt_lerp", lambda: {"pictures": walks.as_pictures(walks.walk(
        toy, seed=0, prompts=walks.prompt_path(toy, CAT, KITTEN, ALPHAS, "lerp"), keep="picture", **SETTINGS))},
        model=MODEL, a=CAT, b=KITTEN, alphas=ALPHAS, seed=0, method="lerp", **SETTINGS)["pictures"]


@pytest.fixture(scope="module")
def noise(toy):
    def noise_walk(method):
        noises = walks.noise_path(toy, 0, 1, NOISE_ALPHAS, method)
        pictures = walks.as_pictures(walks.walk(toy, seed=0, prompts=PROMPT, noises=noises, keep="picture",
                                                **SETTINGS))
        return {"pictures": pictures, "rms": walks.noise_norms(noises[:, 0])}

    return {method: cached("09_noise_walk", lambda method=method: noise_walk(method), model=MODEL, prompt=PROMPT,
                           seeds=[0, 1], alphas=NOISE_ALPHAS, method=method, **SETTINGS) for method in walks.METHODS}


def test_09_two_prompts_one_word_apart_are_close_so_lerp_and_slerp_draw_the_same_pictures(toy, grid, lerp_row):
    """The pictures differ by at most 0.1% of the pixel range; the judge still names them alike at every alpha
    but 0.67, the first smaller cat, which sits on its cat/kitten border (lerp: cat, slerp: kitten)."""
    a, b = walks.encode(toy, CAT), walks.encode(toy, KITTEN)
    assert torch.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9
    slerp_row = grid["pictures"][:, 0]
    assert walks.picture_gap(lerp_row, slerp_row).max() < 0.001
    by_lerp, by_slerp = judged(lerp_row), judged(slerp_row)
    border = ALPHAS.index(4 / 6)
    assert [i for i in range(len(ALPHAS)) if by_lerp[i] != by_slerp[i]] == [border], (by_lerp, by_slerp)
    assert (by_lerp[border], by_slerp[border]) == ("cat", "kitten")


def test_09_lerp_between_two_seeds_shrinks_the_noise_to_one_over_root_two_slerp_keeps_it(noise):
    middle = NOISE_ALPHAS.index(0.5)
    lerp_rms, slerp_rms = noise["lerp"]["rms"], noise["slerp"]["rms"]
    assert abs(lerp_rms[middle] / lerp_rms[[0, -1]].mean() - 1 / math.sqrt(2)) < 0.05
    assert (slerp_rms / slerp_rms[[0, -1]].mean() - 1).abs().max() < 0.05


def test_09_on_the_toy_model_the_shrunken_noise_does_not_wash_the_picture_out(noise):
    """The measurement that disagrees with the usual story (told for SD 1.5): contrast and saturation hold."""
    middle = NOISE_ALPHAS.index(0.5)
    for method in walks.METHODS:
        pictures = noise[method]["pictures"]
        for measure in (walks.picture_contrast, walks.picture_saturation):
            values = measure(pictures)
            assert abs(values[middle] / values[[0, -1]].mean() - 1) < 0.1, (method, measure.__name__)


@pytest.fixture(scope="module")
def varied(toy):
    variation = torch.stack([walks.seed_variation(toy, 0, 1, strength) for strength in STRENGTHS])
    return cached("09_seed_variation", lambda: {"pictures": walks.as_pictures(walks.walk(
        toy, seed=0, prompts=PROMPT, noises=variation, keep="picture", **SETTINGS))},
        model=MODEL, prompt=PROMPT, seed=0, variation_seed=1, strengths=STRENGTHS, **SETTINGS)["pictures"]


def test_09_a_small_variation_strength_keeps_the_picture_and_a_large_one_moves_it(varied):
    moved = walks.picture_gap(varied, varied[:1].expand_as(varied))
    assert moved[STRENGTHS.index(0.05)] < 0.5 * moved[-1]
    assert moved[STRENGTHS.index(0.75)] < 0.035 and moved[-1] > 0.05  # kept up to 0.75 (3.2%), then moved (8.2%)
    jumps = moved[1:] - moved[:-1]
    assert int(jumps.argmax()) == STRENGTHS.index(0.75) and jumps.max() > 0.5 * moved[-1]  # in one jump (0.75 -> 1)
    assert judged(varied) == ["cat"] * len(STRENGTHS)


@pytest.fixture(scope="module")
def circle(toy):
    loop = walks.circle_noise(walks.seed_noise(toy, 0), walks.seed_noise(toy, 1), ANGLES)
    return cached("09_circle_walk", lambda: {"pictures": walks.as_pictures(walks.walk(
        toy, seed=0, prompts=PROMPT, noises=loop, keep="picture", **SETTINGS))},
        model=MODEL, prompt=PROMPT, seeds=[0, 1], frames=len(ANGLES), **SETTINGS)["pictures"], loop


def test_09_the_circular_walk_keeps_the_noise_on_the_sphere_and_comes_back(circle):
    pictures, loop = circle
    rms = walks.noise_norms(loop)
    assert (rms / rms[0] - 1).abs().max() < 0.1
    assert walks.picture_gap(pictures[-1:], pictures[:1])[0] < 0.01  # t = 2π draws what t = 0 drew
    steps_apart = walks.picture_gap(pictures[1:], pictures[:-1])
    assert (steps_apart <= 0.03).sum() >= len(steps_apart) - 2  # ten of twelve steps move it by 3% or less ...
    assert (steps_apart >= 0.05).sum() >= 2  # ... and the picture jumps twice around the loop


def test_09_neighbouring_runs_split_early_at_the_same_alpha_in_every_seed(grid):
    """The ridge is the pair alpha 0.50 -> 0.67: it parts at the start in every seed; in seeds 0, 1 and 3 it is
    the only pair that parts and the picture changes most across it; in seed 2 the two pairs before it part too
    (the ridge three pairs wide) and the picture changes most at the first of them; the judge flips on the ridge
    (seeds 0, 2) or one or two alpha later (seeds 1, 3), on pairs that stay together."""
    split = walks.split_steps(grid["x0"], THRESHOLD)
    steps = SETTINGS["num_inference_steps"]
    ridge = ALPHAS.index(0.5)  # the pair (0.50, 0.67)
    assert (split[ridge] <= steps // 10).all(), split  # parts in every seed, in the first tenth of the steps
    assert (split[0] == steps).all() and (split[ridge + 1:] == steps).all(), split  # the ends stay together
    wide = ridge - 2  # seed 2: the pairs 0.17 -> 0.33 and 0.33 -> 0.50 part early too; seeds 0, 1, 3: they do not
    assert split[wide:ridge].tolist() == [[steps, steps, 2, steps]] * 2, split
    gaps = torch.stack([walks.picture_gap(grid["pictures"][i], grid["pictures"][i + 1])
                        for i in range(len(ALPHAS) - 1)])  # [pairs, S]
    assert gaps.argmax(0).tolist() == [ridge, ridge, wide, ridge], gaps  # where each seed's picture changes most
    assert set(gaps[:, 2].topk(3).indices.tolist()) == {wide, wide + 1, ridge}, gaps  # seed 2: in three steps
    flips = []
    for s in range(len(SEEDS)):
        kinds = judged(grid["pictures"][:, s])
        flip = kinds.index("kitten")
        assert kinds == ["cat"] * flip + ["kitten"] * (len(kinds) - flip)  # the judge flips once
        flips.append(flip - 1)  # the pair across the judge's flip
    assert flips == [ridge, ridge + 1, ridge, ridge + 2], flips
    together = (split == steps).nonzero().tolist()
    drift = torch.stack([walks.x0_distance(grid["x0"][i, s], grid["x0"][i + 1, s]) for i, s in together])  # [pairs, N]
    assert drift.amax(-1).max() > THRESHOLD and drift[:, -1].max() < THRESHOLD  # drift apart, come back


# --- notebook 10: textual inversion -------------------------------------------------------------------

TRAINING = dict(steps=100, learning_rate=2e-2, seed=0)
TI_SEEDS = list(range(8))


def _train(pictures, captions, token, initializer):
    fresh = sdexplore.load_pipeline(MODEL)
    log = Path(tempfile.mkdtemp()) / f"{token.strip('<>')}.jsonl"
    learned = train_textual_inversion(fresh, pictures, captions, token=token, initializer=initializer,
                                      log_path=log, **TRAINING)
    return {key: learned[key] for key in ("embedding", "initial", "losses")}


@pytest.fixture(scope="module")
def learned():
    concept_pictures, concept_captions = inversion.concept_training_set("<orange-cat>")
    mark_pictures, mark_captions = inversion.mark_training_set("<badge>")
    return {
        "<orange-cat>": cached("10_concept", lambda: _train(concept_pictures, concept_captions, "<orange-cat>",
                                                            "ball"),
                               model=MODEL, token="<orange-cat>", initializer="ball", **TRAINING),
        "<badge>": cached("10_badge", lambda: _train(mark_pictures, mark_captions, "<badge>", "fish"),
                          model=MODEL, token="<badge>", initializer="fish", **TRAINING),
    }


@pytest.fixture(scope="module")
def inverted(learned):
    pipe = sdexplore.load_pipeline(MODEL)
    folder = Path(tempfile.mkdtemp())
    for token, result in learned.items():
        load_textual_inversion(pipe, save_textual_inversion(folder / f"{token.strip('<>')}.safetensors", token,
                                                            result["embedding"]))

    def drawn(prompt):
        def draw():
            generators = [torch.Generator().manual_seed(seed) for seed in TI_SEEDS]
            images = pipe([prompt] * len(TI_SEEDS), generator=generators, output_type="np", **SETTINGS).images
            return {"pictures": torch.from_numpy((images * 255).round().astype(np.uint8))}

        return cached("10_drawn", draw, model=MODEL, prompt=prompt, seeds=TI_SEEDS, training=TRAINING,
                      **SETTINGS)["pictures"].numpy()

    return drawn


def test_10_the_loss_comes_down_with_one_vector_trained(learned):
    for token, result in learned.items():
        losses = result["losses"]
        assert len(losses) == TRAINING["steps"]
        assert losses[-30:].mean() < losses[:30].mean(), token
        assert not torch.allclose(result["embedding"], result["initial"])


def test_10_the_concept_with_words_is_learned_and_reproduced(inverted):
    before = inversion.judge_concept(inverted(inversion.concept_prompt("ball")))
    after = inversion.judge_concept(inverted(inversion.concept_prompt("<orange-cat>")))
    assert after["both"] >= 0.8, after
    assert before["both"] <= 0.25, before


def test_10_the_badge_with_no_words_is_not_reproduced(inverted):
    marked, _ = inversion.mark_training_set("<badge>")
    scene = world.SceneSpec([world.ObjectSpec("cat", "orange", "tabby", "green", "right")], "sea")
    with_badge = inverted(inversion.mark_prompt("<badge>", scene))
    without = inverted(world.canonical_prompt(scene))
    assert inversion.mark_presence(marked).mean() == 1.0
    assert inversion.mark_presence(with_badge).mean() < 0.1
    assert inversion.mark_colour_share(with_badge).mean() < 0.1
    assert abs(inversion.mark_presence(with_badge).mean() - inversion.mark_presence(without).mean()) < 0.1
