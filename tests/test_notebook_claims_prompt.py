"""Every claim notebook 08 (prompt tensor, CLIP skip, prompt syntax, arithmetic) makes, checked on the toy model.

Same prompts, seeds, settings and cache keys as the notebook, so a sweep both need is computed once per run.
"""

import numpy as np
import pytest

import sdexplore
from sdexplore.cache import cached
from sdexplore.studies.arithmetic import arithmetic_sweep
from sdexplore.studies.prompt_editing import editing_pictures
from sdexplore.studies.prompt_tensor import first_layer_right, layer_sweep, layer_sweep_scores, stripe_sources
from sdexplore.toy import world
from sdexplore.toy.judge import get_judge

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
    assert sources["position_share_input"] < 0.25  # "a fifth (toy) or less (tiny)"
    assert sources["position_share_output"] < 0.25
    assert sources["corr_token_stripes_padding"] > 0.99  # the token part's stripes are the padding token's
    assert sources["stripe_share_output"] > sources["stripe_share_input"]  # the encoder adds stripes


def test_08_fifty_eight_rows_are_padding(toy):
    assert stripe_sources(toy, PROMPT)["padding_rows"] == 58


# --- CLIP skip / Diffusion Lens ----------------------------------------------------------------------------


def test_08_kind_colour_and_position_come_out_right_from_the_first_layer_on(toy):
    sweep = cached("08_layer_sweep", lambda: layer_sweep(toy, 8, seed=0, num_inference_steps=STEPS),
                   model=MODEL, n_prompts=8, seed=0, steps=STEPS)
    scores = layer_sweep_scores(sweep["pictures"].numpy(), world.held_out_prompts(8, seed=0))
    for field in ("kind", "color", "position"):
        assert scores[field][0] < 0.5, (field, scores[field])  # the embeddings alone: mostly wrong
        assert first_layer_right(scores[field]) == 1, (field, scores[field])


# --- word arithmetic ---------------------------------------------------------------------------------------

BASE, SLOT = "a photo of a large cat at the center, plain white background", "cat"
EXPRESSIONS, SEEDS = ["cat - orange + black", "cat - grey + orange"], [0, 1, 2, 3]


@pytest.fixture(scope="module")
def arith(toy):
    return cached("08_arithmetic", lambda: arithmetic_sweep(toy, BASE, SLOT, EXPRESSIONS, SEEDS,
                                                            num_inference_steps=STEPS),
                  model=MODEL, prompt=BASE, slot=SLOT, expressions=EXPRESSIONS, seeds=SEEDS, steps=STEPS)


@pytest.mark.parametrize("where", ["input", "output"])
def test_08_cat_minus_orange_plus_black_is_a_black_cat(arith, where):
    for expression, colour, pictures in zip(EXPRESSIONS, ["black", "orange"], arith[where].numpy()):
        judged = get_judge().predict(list(pictures))
        assert [(p["kind"], p["color"]) for p in judged] == [("cat", colour)] * len(SEEDS), (where, expression, judged)


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


def test_08_switching_cat_to_kitten_as_late_as_step_11_of_20_still_gives_a_kitten(toy):
    def compute():
        return editing_pictures(toy, TEMPLATE, WHENS, EDIT_SEEDS, num_inference_steps=STEPS)

    editing = cached("08_editing", compute, model=MODEL, template=TEMPLATE, whens=WHENS, seeds=EDIT_SEEDS, steps=STEPS)
    assert editing["switch_step"].tolist() == [1, 6, 11, 16]  # A1111: the old text through step int(when * 20)
    kinds = [[p["kind"] for p in get_judge().predict(list(row))] for row in editing["pictures"].numpy()]
    assert kinds[:3] == [["kitten", "kitten"]] * 3  # kitten from step 1, 6 or 11 on: a kitten
    assert kinds[3] == ["cat", "cat"]  # kitten only from step 16 on: the cat stays


LONG = ", ".join(["a photo of a small yellow ball"] * 10) + ", a large black cat on the left, grass background"


def test_08_a_long_prompt_is_cut_before_the_cat_and_the_toy_draws_no_black_cat_either_way(toy):
    import warnings

    from sdexplore.conditioning import trace_prompt
    from sdexplore.prompts import PromptTruncatedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = trace_prompt(toy, LONG, seed=0, num_inference_steps=STEPS)
    message = next(str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning))
    assert "black cat" in message  # the warning says what was cut
    chunked = trace_prompt(toy, LONG, seed=0, num_inference_steps=STEPS, chunking=True)
    assert (cut.prompt_embeds.shape[1], chunked.prompt_embeds.shape[1]) == (77, 154)
    for run in (cut, chunked):
        judged = get_judge().predict([np.asarray(run.images[0])])[0]
        assert (judged["kind"], judged["color"]) != ("cat", "black"), judged
