"""Every claim notebook 08 (prompt tensor, CLIP skip, prompt syntax, arithmetic) makes, checked on the toy model.

Same prompts, seeds, settings and cache keys as the notebook, so a sweep both need is computed once per run.
"""

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.cache import cached
from sdexplore.models import TOY_WEIGHTS, with_text_encoder
from sdexplore.studies.arithmetic import arithmetic_sweep
from sdexplore.studies.prompt_editing import editing_pictures
from sdexplore.studies.prompt_tensor import (
    clip_skip_embeddings,
    first_layer_right,
    layer_sweep,
    layer_sweep_scores,
    stripe_sources,
)
from sdexplore.toy import world
from sdexplore.toy.judge import get_judge
from sdexplore.toy.train import frozen_text_tower

MODEL = "toy"
PROMPT = "a photo of a large orange tabby cat with green eyes on the left, sea background"
STEPS = 20


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline(MODEL)


# --- the stripes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_08_the_stripes_do_not_come_from_the_position_embeddings(model, toy, tiny):
    sources = stripe_sources(toy if model == "toy" else tiny, PROMPT)
    assert sources["stripe_share_position"] < sources["stripe_share_token"]  # the least striped part
    assert sources["position_share_input"] < 0.05  # "under 1% (toy) or 4% (tiny)"
    assert sources["position_share_output"] < 0.15  # "2% (toy) or 12% (tiny)"
    assert sources["corr_token_stripes_padding"] > 0.99  # the token part's stripes are the padding token's
    if model == "toy":  # its one encoder layer leaves the stripes as they were
        assert abs(sources["stripe_share_output"] - sources["stripe_share_input"]) < 0.05
    else:  # the random encoder adds stripes
        assert sources["stripe_share_output"] > sources["stripe_share_input"] + 0.3


def test_08_fifty_eight_rows_are_padding(toy):
    assert stripe_sources(toy, PROMPT)["padding_rows"] == 58


# --- CLIP skip / Diffusion Lens ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tower(toy):
    """The toy pipeline reading its CLIP's whole text tower (3 layers) instead of the first layer it learned."""
    return with_text_encoder(toy, frozen_text_tower(TOY_WEIGHTS / "clip"))


def test_08_clip_skip_2_on_the_whole_tower_is_the_toys_own_text_encoder(toy, tower):
    own = clip_skip_embeddings(toy, PROMPT, None)
    assert tower.text_encoder.config.num_hidden_layers == 3 and toy.text_encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(clip_skip_embeddings(tower, PROMPT, 2), own)
    for skip, moved in ((1, 0.5), (0, 0.7)):  # "move the embeddings by 71% and 88% of their norm"
        other = clip_skip_embeddings(tower, PROMPT, skip)
        assert (other - own).norm() / own.norm() > moved, skip


def test_08_from_the_learned_layer_on_position_is_right_kind_and_colour_slip_a_little_after_it(tower):
    sweep = cached("08_layer_sweep", lambda: layer_sweep(tower, 8, seed=0, num_inference_steps=STEPS),
                   model=MODEL, text_encoder="whole tower", n_prompts=8, seed=0, steps=STEPS)
    scores = layer_sweep_scores(sweep["pictures"].numpy(), world.held_out_prompts(8, seed=0))
    for field in ("kind", "color", "position"):
        assert scores[field][0] < 0.5, (field, scores[field])  # the embeddings alone: mostly wrong
        assert scores[field][1] >= 0.8, (field, scores[field])  # the layer the UNet was trained on
    # the layers after it, which the UNet never saw: place stays right, kind and colour slip a little
    assert first_layer_right(scores["position"]) == 1, scores["position"]
    for field in ("kind", "color"):
        assert 0.5 <= scores[field][2:].min() < scores[field][1], (field, scores[field])


# --- word arithmetic ---------------------------------------------------------------------------------------

BASE, SLOT = "a photo of a large cat at the center, plain white background", "cat"
EXPRESSIONS, SEEDS = ["cat - orange + black", "cat - grey + orange"], [0, 1, 2, 3]


@pytest.fixture(scope="module")
def arith(toy):
    return cached("08_arithmetic", lambda: arithmetic_sweep(toy, BASE, SLOT, EXPRESSIONS, SEEDS,
                                                            num_inference_steps=STEPS),
                  model=MODEL, prompt=BASE, slot=SLOT, expressions=EXPRESSIONS, seeds=SEEDS, steps=STEPS)


@pytest.mark.parametrize("where", ["input", "output"])
def test_08_cat_minus_orange_plus_black_is_a_black_cat_and_cat_minus_grey_plus_orange_a_ball(arith, where):
    black, orange = ([(p["kind"], p["color"]) for p in get_judge().predict(list(pictures))]
                     for pictures in arith[where].numpy())
    assert black == [("cat", "black")] * len(SEEDS), (where, black)
    # the kind did not survive the sum: "an orange ball for all four seeds" at the input, a yellow one at the output
    assert orange == [("ball", {"input": "orange", "output": "yellow"}[where])] * len(SEEDS), (where, orange)


# --- weighting and editing ---------------------------------------------------------------------------------


def test_08_weighting_blue_down_to_zero_still_draws_a_blue_ball(toy):
    """The weight scales the word's own row of the encoder output, but every later row has already read the word
    (the encoder's causal self-attention), so even (blue:0) keeps the ball blue."""
    from sdexplore.conditioning import trace_prompt

    for weight in (0.0, 2.0):
        run = trace_prompt(toy, f"a photo of a small (blue:{weight}) ball at the center, sand background", seed=0,
                           num_inference_steps=STEPS)
        judged = get_judge().predict([np.asarray(run.images[0])])[0]
        assert (judged["kind"], judged["color"]) == ("ball", "blue"), (weight, judged)


TEMPLATE = "a photo of a large grey [cat:kitten:{when}] at the center, plain white background"
WHENS, EDIT_SEEDS = [0, 0.25, 0.5, 0.75], [0, 1]


def test_08_kitten_from_the_start_gives_kittens_from_step_6_of_20_one_seed_of_two_later_the_cat(toy):
    def compute():
        return editing_pictures(toy, TEMPLATE, WHENS, EDIT_SEEDS, num_inference_steps=STEPS)

    editing = cached("08_editing", compute, model=MODEL, template=TEMPLATE, whens=WHENS, seeds=EDIT_SEEDS, steps=STEPS)
    assert editing["switch_step"].tolist() == [1, 6, 11, 16]  # A1111: the old text through step int(when * 20)
    kinds = [[p["kind"] for p in get_judge().predict(list(row))] for row in editing["pictures"].numpy()]
    assert kinds[0] == ["kitten", "kitten"]  # kitten from step 1 on (from the start): a kitten
    assert kinds[1] == ["cat", "kitten"]  # kitten from step 6 on: one seed of the two
    assert kinds[2:] == [["cat", "cat"]] * 2  # kitten from step 11 or 16 on: the cat stays


LONG = ", ".join(["a photo of a small yellow ball"] * 10) + ", a large black cat on the left, grass background"


LONG_SEEDS = [0, 1, 2, 3]


def test_08_a_long_prompt_is_cut_before_the_black_cat_and_chunking_draws_both_chunks(toy):
    """Cut: a yellow ball in the center on plain pink, every seed. Chunked: grass every seed, and a black cat on
    the left with a yellow ball on the right (each half read alone) in seeds 0 and 2."""
    import warnings

    from sdexplore.conditioning import trace_prompt
    from sdexplore.prompts import PromptTruncatedWarning
    from sdexplore.studies.long_prompts import cut_and_chunked_pictures
    from sdexplore.toy.judge import find_background

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = trace_prompt(toy, LONG, seed=0, num_inference_steps=STEPS)
    message = next(str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning))
    assert "black cat" in message  # the warning says what was cut
    chunked = trace_prompt(toy, LONG, seed=0, num_inference_steps=STEPS, chunking=True)
    assert (cut.prompt_embeds.shape[1], chunked.prompt_embeds.shape[1]) == (77, 154)
    long = cached("08_long_prompt", lambda: cut_and_chunked_pictures(toy, LONG, LONG_SEEDS, num_inference_steps=STEPS),
                  model=MODEL, prompt=LONG, seeds=LONG_SEEDS, steps=STEPS)
    assert torch.equal(long["cut"][0], torch.from_numpy(np.array(cut.images[0])))  # the same pictures as alone
    judge = get_judge()

    def background(picture):
        return find_background(picture.astype(np.float32))[0]

    cut_pictures, chunked_pictures = long["cut"].numpy(), long["chunked"].numpy()
    assert [background(p) for p in cut_pictures] == ["plain pink"] * 4
    judged = judge.predict(list(cut_pictures))
    assert [(p["color"], p["position"]) for p in judged] == [("yellow", "center")] * 4, judged
    assert sum(p["kind"] == "ball" for p in judged) >= 3, judged
    assert [background(p) for p in chunked_pictures] == ["grass"] * 4
    halves = [judge.predict_pair(p, ("left", "right")) for p in chunked_pictures]
    both = [(left["color"], left["kind"], right["color"], right["kind"]) == ("black", "cat", "yellow", "ball")
            for left, right in halves]
    assert both == [True, False, True, False], halves
