"""The notebook widgets, used as a person would, without a browser: set a control's value in Python (what a
move in the browser does) and check what the widget then shows."""

import contextlib
import html

import numpy as np
import pytest
import torch
from PIL import Image

import sdexplore
from sdexplore.prompts import token_groups
from sdexplore.studies.attention import tokens_map
from sdexplore.widgets import (
    AttentionExplorer,
    InterpolationSlider,
    SamplingExplorer,
    StepScrubber,
    TokenPicker,
    interpolation_slider,
    sampling_explorer,
)
from sdexplore.widgets.common import LRU

PROMPT = "a bozuman cat on the sea"


@pytest.fixture(scope="module")
def attention_run(tiny):
    return sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=4, attention=True)


@pytest.fixture
def trace_calls(monkeypatch):
    """Counts the pipeline runs the SamplingExplorer makes (its calls of sdexplore.trace)."""
    calls = []
    real = sampling_explorer.trace

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_explorer, "trace", counting)
    return calls


@contextlib.contextmanager
def forward_calls(*modules):
    """Counts forward calls of the given modules while active: [count]."""
    count = [0]
    handles = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in modules]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def picture_of(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# --- SamplingExplorer -------------------------------------------------------------------------------


def test_the_guidance_slider_remakes_the_picture_with_its_value(tiny):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    first = explorer.picture.value
    assert first[:4] == b"\x89PNG" and explorer.last_run.params["guidance_scale"] == 7.5
    assert explorer.strength not in explorer.widget.children[3].children  # no image, no strength slider
    explorer.guidance.value = 1.0  # what moving the slider does
    assert explorer.last_run.params["guidance_scale"] == 1.0 and explorer.last_run.seed == 0
    assert explorer.picture.value != first
    assert "guidance 1.0" in explorer.caption.value and explorer.error.value == ""
    assert np.array_equal(picture_of(explorer.picture.value), np.asarray(explorer.last_run.images[0]))


def test_every_control_reaches_the_run(tiny):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    pictures = {explorer.picture.value}
    explorer.prompt.value = "a kitten on the sea"
    explorer.negative_prompt.value = "ball"
    explorer.steps.value = 4
    explorer.seed.value = " 7 "
    pictures |= {explorer.picture.value}
    run = explorer.last_run
    assert run.prompt == "a kitten on the sea" and run.params["negative_prompt"] == "ball"
    assert run.num_steps == 4 and run.seed == 7 and len(pictures) == 2
    caption = html.unescape(explorer.caption.value)
    assert "'a kitten on the sea'" in caption and "negative 'ball'" in caption
    assert "4 of 4 steps run · seed 7" in explorer.caption.value


def test_the_strength_slider_sets_how_many_steps_run(tiny):
    image = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=2).images[0]
    explorer = SamplingExplorer(tiny, "a kitten", seed=1, image=image, num_inference_steps=10, strength=0.5)
    assert explorer.last_run.num_steps == 5
    explorer.strength.value = 0.8
    assert explorer.last_run.num_steps == 8 and "8 of 10 steps run" in explorer.caption.value
    assert "strength 0.80" in explorer.caption.value


def test_values_seen_before_come_from_the_cache_without_a_run(tiny, trace_calls):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    first, first_run = explorer.picture.value, explorer.last_run
    explorer.guidance.value = 2.0
    explorer.seed.value = "3"
    assert len(trace_calls) == 3
    explorer.seed.value = "0"  # seed 0 with guidance 2.0: seen
    explorer.guidance.value = 7.5  # back to the first values: seen
    assert len(trace_calls) == 3 and explorer.cache.hits == 2
    assert explorer.picture.value == first and explorer.last_run is first_run
    assert "guidance 7.5" in explorer.caption.value and "seed 0" in explorer.caption.value


def test_the_cache_is_bounded_and_forgets_the_oldest(tiny, trace_calls):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=2, cache_size=2)
    explorer.guidance.value = 1.0
    explorer.guidance.value = 2.0  # three values seen, two kept: 7.5 is forgotten
    assert len(explorer.cache) == 2 and len(trace_calls) == 3
    explorer.guidance.value = 1.0
    assert len(trace_calls) == 3
    explorer.guidance.value = 7.5
    assert len(trace_calls) == 4


def test_the_progress_bar_follows_the_steps(tiny):
    image = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=2).images[0]
    explorer = SamplingExplorer(tiny, "a kitten", seed=1, image=image, num_inference_steps=10, strength=0.5)
    assert explorer.progress.value == explorer.progress.max == 5
    seen = []
    explorer.progress.observe(lambda change: seen.append(change["new"]), names="value")
    explorer.strength.value = 0.7
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7] and explorer.progress.max == 7
    assert explorer.progress.bar_style == "success"


@pytest.mark.parametrize("control, value, message", [
    ("prompt", "   ", "prompt is empty"),
    ("steps", 0, "steps must be at least 1, got 0"),
    ("seed", "1.5", "seed must be a whole number in 0..2**63-1, got &#x27;1.5&#x27;"),
    ("seed", "cat", "seed must be a whole number"),
    ("seed", "-1", "seed must be in 0..2**63-1, got -1"),
    ("steps", 5000, "5000"),  # diffusers refuses more steps than the model was trained with
])
def test_bad_input_shows_its_error_and_keeps_the_last_good_picture(tiny, trace_calls, control, value, message):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    picture, caption, run = explorer.picture.value, explorer.caption.value, explorer.last_run
    getattr(explorer, control).value = value
    assert message in explorer.error.value and "not run" in explorer.error.value
    assert explorer.picture.value == picture and explorer.caption.value == caption and explorer.last_run is run
    assert explorer.progress.bar_style == "danger"
    explorer.guidance.value = 3.0  # still bad: still the old picture, still the message
    assert explorer.picture.value == picture and message in explorer.error.value
    explorer.prompt.value, explorer.steps.value, explorer.seed.value = "a cat", 3, "0"  # fixed
    assert explorer.error.value == "" and explorer.picture.value != picture
    assert "guidance 3.0" in explorer.caption.value and "seed 0" in explorer.caption.value


def test_a_strength_that_runs_no_step_is_refused_in_the_widget(tiny, trace_calls):
    image = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=2).images[0]
    explorer = SamplingExplorer(tiny, "a kitten", seed=1, image=image, num_inference_steps=4, strength=0.5)
    picture, caption = explorer.picture.value, explorer.caption.value
    explorer.strength.value = 0.1
    assert "strength 0.10 with 4 steps runs int(4 × 0.10) = 0 steps" in explorer.error.value
    assert explorer.picture.value == picture and explorer.caption.value == caption
    assert "strength 0.50" in explorer.caption.value  # the caption still says which values the picture is for
    assert len(trace_calls) == 1  # nothing ran


def test_a_run_that_raises_shows_its_message(tiny, monkeypatch):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=2)
    picture = explorer.picture.value

    def broken(*args, **kwargs):
        raise RuntimeError("the UNet <melted>")

    monkeypatch.setattr(sampling_explorer, "trace", broken)
    explorer.guidance.value = 4.0
    assert "RuntimeError: the UNet &lt;melted&gt;" in explorer.error.value
    assert explorer.picture.value == picture and "guidance 7.5" in explorer.caption.value
    assert len(explorer.cache) == 1  # the failure is not cached


def test_the_lru_keeps_the_newest():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now "b" is the oldest
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and cache.get("b") is None
    assert (cache.hits, cache.misses) == (3, 1)
    with pytest.raises(ValueError, match="maxsize must be a positive int, got 0"):
        LRU(0)


# --- StepScrubber -------------------------------------------------------------------------------------


def test_the_scrubber_shows_each_step_and_decodes_each_once(tiny, attention_run):
    run = attention_run
    with forward_calls(tiny.unet, tiny.text_encoder) as pipeline_calls, forward_calls(tiny.vae.decoder) as decodes:
        scrubber = StepScrubber(run, tiny, token="cat")
        assert scrubber.method == "vae" and decodes[0] == 1
        assert "step <b>0</b> of 4" in scrubber.caption.value
        assert f"timestep <b>{float(run.timesteps[0]):g}</b>" in scrubber.caption.value
        before = {which: picture.value for which, picture in scrubber.pictures.items()}
        attention_before = scrubber.attention_picture.value
        scrubber.slider.value = 2
        assert decodes[0] == 2 and scrubber.decodes == 2  # x_t and x0 of the new step in one decode
        assert all(scrubber.pictures[w].value != before[w] for w in before)
        assert scrubber.attention_picture.value != attention_before
        assert f"step <b>2</b> of 4 (0..3) · timestep <b>{float(run.timesteps[2]):g}</b>" in scrubber.caption.value
        scrubber.slider.value = 0  # seen: no decode
        assert decodes[0] == 2 and scrubber.pictures["x0"].value == before["x0"]
    assert pipeline_calls[0] == 0  # it reads the trace; nothing runs the model
    shown = picture_of(scrubber.pictures["x0"].value)
    assert np.array_equal(shown, np.asarray(run.preview(0, "x0", "vae", pipe=tiny)[0]))


def test_without_a_pipeline_the_scrubber_uses_the_approx_preview(attention_run):
    scrubber = StepScrubber(attention_run)
    assert scrubber.method == "approx"
    assert np.array_equal(picture_of(scrubber.pictures["x_t"].value),
                          np.asarray(attention_run.preview(0, "x_t", "approx")[0]))


def test_the_scrubber_shows_the_chosen_tokens_map(tiny, attention_run):
    scrubber = StepScrubber(attention_run, tiny, token="cat")
    cat = scrubber.attention_picture.value
    assert "attention to <b>&#x27;cat&#x27;</b> (this step)" in scrubber.caption.value
    scrubber.set_token("bozuman")
    assert scrubber.positions == (2, 3, 4, 5, 6) and scrubber.attention_picture.value != cat
    torch.testing.assert_close(scrubber.attention_map(0), attention_run.attention.token_maps(steps=0)[0, 2:7].sum(0))
    scrubber.set_token(0)
    assert "0 &lt;start&gt;" in scrubber.caption.value
    with pytest.raises(ValueError, match="word 'dog' is not in the prompt"):
        scrubber.set_token("dog")
    with pytest.raises(ValueError, match="token positions must be ints in 0..76, got 77"):
        scrubber.set_token(77)


def test_the_default_token_is_the_word_with_most_attention(attention_run):
    scrubber = StepScrubber(attention_run)
    shares = attention_run.attention.token_share()[0]
    words = [g for g in token_groups(attention_run.tokens[0]) if g.kind == "word"]
    best = max(words, key=lambda g: float(shares[list(g.positions)].sum()))
    assert scrubber.positions == best.positions


def test_a_run_without_attention_shows_the_latents_only(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3)
    scrubber = StepScrubber(run)
    scrubber.slider.value = 1
    assert "attention" not in scrubber.caption.value and scrubber.attention_picture.value == b""


# --- TokenPicker and AttentionExplorer ----------------------------------------------------------------


def test_the_token_table_is_grouped_for_the_chips(attention_run):
    groups = token_groups(attention_run.tokens[0])
    assert [g.kind for g in groups] == ["start", "word", "word", "word", "word", "word", "word", "end", "padding"]
    assert groups[2].label == "bozuman" and groups[2].positions == (2, 3, 4, 5, 6)
    assert "".join(groups[2].pieces) == "bozuman"
    assert sorted(p for g in groups for p in g.positions) == list(range(77))
    assert groups[-1].label == "<pad>" and groups[-1].positions == tuple(range(12, 77))


def test_the_picker_has_a_chip_for_every_token_and_shows_the_clicked_one(attention_run):
    picker = TokenPicker(attention_run)
    singles = {positions for _, _, positions in picker.chips if len(positions) == 1}
    assert singles == {(p,) for p in range(77)}  # every position has its own chip (padding folded away)
    assert picker.chip("bozuman") is not picker.chip("z")  # a word and its sub-words
    before = picker.picture.value
    picker.chip("<end>").click()
    assert picker.positions == (11,) and picker.picture.value != before
    assert picker.chip("<end>").button_style == "info" and picker.chip("cat").button_style == ""
    assert "attention to <b>&lt;end&gt;</b> (position 11) · mean over all steps" in picker.caption.value
    picker.chip("all padding").click()
    assert picker.positions == tuple(range(12, 77))
    picker.chip("bozuman").click()
    torch.testing.assert_close(tokens_map(attention_run.attention, picker.positions),
                               attention_run.attention.word_map("bozuman")[0])
    aggregated = picker.picture.value
    picker.show(step=1)
    assert picker.picture.value != aggregated and "step 1" in picker.caption.value
    with pytest.raises(KeyError, match="no chip 'dog'"):
        picker.chip("dog")


def test_the_picker_needs_attention(tiny):
    with pytest.raises(ValueError, match="trace it with attention=True"):
        TokenPicker(sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=2))


def test_a_chip_drives_the_scrubber_in_the_attention_explorer(tiny, attention_run):
    explorer = AttentionExplorer(attention_run, tiny)
    explorer.scrubber.slider.value = 3
    before = explorer.scrubber.attention_picture.value
    explorer.picker.chip("sea").click()
    assert explorer.scrubber.positions == (10,) and explorer.scrubber.attention_picture.value != before
    assert "attention to <b>&#x27;sea&#x27;</b> (this step)" in explorer.scrubber.caption.value
    assert "step <b>3</b>" in explorer.scrubber.caption.value


# --- InterpolationSlider ------------------------------------------------------------------------------


@pytest.fixture
def interpolation_runs(monkeypatch):
    calls = []
    real = interpolation_slider.trace_interpolation

    def counting(*args, **kwargs):
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(interpolation_slider, "trace_interpolation", counting)
    return calls


def test_the_alpha_slider_runs_each_alpha_once(tiny, interpolation_runs):
    slider = InterpolationSlider(tiny, "a photo of a cat", "cat", "kitten", seed=0, count=5, num_inference_steps=2)
    assert slider.judge is False and "α 0.000 (lerp)" in slider.caption.value and "judge" not in slider.caption.value
    start = slider.picture.value
    slider.slider.value = 1.0
    end = slider.picture.value
    assert end != start and slider.last_run.params["interpolation"]["alpha"] == 1.0
    slider.slider.value = 0.0
    assert slider.picture.value == start and interpolation_runs == [[0.0], [1.0]]  # cached, not re-run
    slider.mode.value = "slerp"
    assert interpolation_runs[-1] == [0.0] and slider.last_run.params["interpolation"]["mode"] == "slerp"
    assert "(slerp)" in slider.caption.value and slider.progress.value == 2


def test_the_slider_between_two_prompts(tiny):
    slider = InterpolationSlider(tiny, "a photo of a cat", target_prompt="a ball on the sand", seed=1,
                                 count=3, num_inference_steps=2)
    start = slider.picture.value
    slider.slider.value = 0.5
    assert slider.picture.value != start and slider.last_run.params["interpolation"]["alpha"] == 0.5
    assert slider.last_run.params["interpolation"]["target_prompt"] == "a ball on the sand"


def test_bad_interpolation_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match="single-token word"):
        InterpolationSlider(tiny, "a bozuman", "bozuman", "cat", seed=0)
    with pytest.raises(ValueError, match="word_a 'dog' is not a word of the prompt"):
        InterpolationSlider(tiny, "a photo of a cat", "dog", "cat", seed=0)
    with pytest.raises(ValueError, match="mode must be one of lerp, slerp"):
        InterpolationSlider(tiny, "a photo of a cat", "cat", "kitten", seed=0, mode="cubic")
    with pytest.raises(ValueError, match="not both"):
        InterpolationSlider(tiny, "a photo of a cat", "cat", "kitten", seed=0, target_prompt="a kitten")


def test_a_failed_alpha_keeps_the_picture(tiny, monkeypatch):
    slider = InterpolationSlider(tiny, "a photo of a cat", "cat", "kitten", seed=0, count=3, num_inference_steps=2)
    picture, caption = slider.picture.value, slider.caption.value

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(interpolation_slider, "trace_interpolation", broken)
    slider.slider.value = 0.5
    assert "RuntimeError: out of memory" in slider.error.value
    assert slider.picture.value == picture and slider.caption.value == caption


def test_on_the_toy_model_the_judge_names_what_it_sees():
    toy = sdexplore.load_pipeline("toy")
    slider = InterpolationSlider(toy, "a photo of a large grey cat at the center, plain white background", "cat",
                                 "kitten", seed=0, count=3, num_inference_steps=25)
    assert slider.judge is True
    assert "the judge sees: <b>cat (grey, center)</b>" in slider.caption.value
    slider.slider.value = 1.0
    assert "the judge sees: <b>kitten (grey, center)</b>" in slider.caption.value


def test_values_that_cannot_run_from_the_start_show_their_error_and_no_picture(tiny, trace_calls):
    explorer = SamplingExplorer(tiny, "", seed=0, num_inference_steps=2)
    assert "prompt is empty" in explorer.error.value and explorer.picture.value == b"" and explorer.last_run is None
    explorer.prompt.value = "a cat"
    assert explorer.error.value == "" and explorer.picture.value[:4] == b"\x89PNG" and len(trace_calls) == 1


def test_a_small_scrubber_cache_forgets_old_steps_and_decodes_them_again(attention_run):
    scrubber = StepScrubber(attention_run, cache_size=2)  # room for one step's x_t and x0
    for step in (1, 2, 0):
        scrubber.slider.value = step
    assert scrubber.decodes == 4 and len(scrubber._previews) == 2
    assert np.array_equal(picture_of(scrubber.pictures["x_t"].value),
                          np.asarray(attention_run.preview(0, "x_t", "approx")[0]))


def test_the_scrubber_reads_runs_made_from_embeddings_by_position(tiny):
    from sdexplore.studies.interpolation import trace_interpolation

    run = trace_interpolation(tiny, "a photo of a cat", "cat", "kitten", [0.5], seed=0, num_inference_steps=2,
                              attention=True)[0]
    scrubber = StepScrubber(run)
    assert scrubber.positions == (1,) and "position 1" in scrubber.caption.value
    scrubber.set_token([4, 5])
    assert "position 4 + position 5" in scrubber.caption.value
    with pytest.raises(ValueError, match="tokens are not known"):
        scrubber.set_token("cat")
