"""Prompt space on the tiny models: the prompt tensor, CLIP skip, A1111 prompt syntax, chunking, arithmetic."""

import pytest
import torch

import sdexplore
from sdexplore import conditioning, prompt_syntax
from sdexplore.prompt_syntax import PromptSyntaxError, schedule, weighted_chunks
from sdexplore.prompts import PromptTruncatedWarning
from sdexplore.studies import arithmetic, prompt_tensor

PROMPT = "a photo of an orange cat on the left, sea background"


# --- the prompt tensor ---------------------------------------------------------------------------------


def test_prompt_tensor_parts_add_up_and_end_in_what_the_unet_gets(tiny):
    parts = prompt_tensor.prompt_tensor(tiny, PROMPT)
    layers, width = tiny.text_encoder.config.num_hidden_layers, tiny.text_encoder.config.hidden_size
    assert parts["token"].shape == parts["position"].shape == parts["output"].shape == (77, width)
    assert parts["hidden"].shape == (layers + 1, 77, width)
    torch.testing.assert_close(parts["input"], parts["token"] + parts["position"])
    torch.testing.assert_close(parts["hidden"][0], parts["input"])
    expected = tiny.encode_prompt(PROMPT, "cpu", 1, False)[0][0]
    torch.testing.assert_close(parts["output"], expected)
    norm = conditioning.final_layer_norm(tiny.text_encoder)
    torch.testing.assert_close(norm(parts["hidden"][-1]), expected)


def test_stripe_share_is_one_for_identical_rows_and_zero_without_column_structure():
    row = torch.randn(16)
    assert prompt_tensor.stripe_share(row.expand(77, 16)) == pytest.approx(1.0)
    noise = torch.randn(77, 16)
    assert prompt_tensor.stripe_share(noise - noise.mean(0)) == pytest.approx(0.0, abs=1e-6)


def test_stripe_sources_shares_are_fractions_and_padding_rows_counted(tiny):
    sources = prompt_tensor.stripe_sources(tiny, PROMPT)
    for key in ("stripe_share_input", "stripe_share_output", "position_share_input"):
        assert 0.0 <= sources[key] <= 1.0
    words = len(tiny.tokenizer(PROMPT, add_special_tokens=False).input_ids)
    assert sources["padding_rows"] == 77 - 2 - words


# --- CLIP skip --------------------------------------------------------------------------------------


def test_trace_records_clip_skip_and_the_unet_gets_the_earlier_layer(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=2, clip_skip=1)
    assert run.params["clip_skip"] == 1
    parts = prompt_tensor.prompt_tensor(tiny, PROMPT)
    norm = conditioning.final_layer_norm(tiny.text_encoder)
    torch.testing.assert_close(run.prompt_embeds[0], norm(parts["hidden"][-2]))  # diffusers: hidden[-(k + 1)]
    plain = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=2)
    assert (run.prompt_embeds - plain.prompt_embeds).abs().max() > 1e-3


def test_layer_embeddings_rows_are_the_clip_skip_embeddings(tiny):
    rows = prompt_tensor.layer_embeddings(tiny, PROMPT)
    depth = conditioning.encoder_depth(tiny)
    assert rows.shape[0] == depth + 1
    for skip in range(depth):
        torch.testing.assert_close(rows[depth - skip], prompt_tensor.clip_skip_embeddings(tiny, PROMPT, skip)[0])


@pytest.mark.parametrize("bad", [2, 5, -1, 1.0, True])
def test_clip_skip_beyond_the_encoder_depth_is_refused(tiny, bad):
    with pytest.raises(ValueError, match=r"clip_skip must be an int in \[0, 1\] for this 2-layer"):
        conditioning.check_clip_skip(tiny, bad)
    with pytest.raises(ValueError, match="clip_skip"):
        conditioning.trace_prompt(tiny, PROMPT, seed=0, num_inference_steps=2, clip_skip=bad)


# --- prompt syntax: A1111's grammar ----------------------------------------------------------------

S = 1 / 1.1
# (prompt, A1111's parse_prompt_attention result). The first five are A1111's own doctests.
WEIGHT_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3))) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.0), ("on", S), (" a ", 1.0), ("hill", 0.5),
      (", sun, ", 1.0), ("sky", 1.1 ** 3), (".", 1.0)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 1.3 )", [("word", 1.3)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("[word]", [("word", S)]),
    ("[[word]]", [("word", S * S)]),
    ("(a [b] c)", [("a ", 1.1), ("b", 1.1 * S), (" c", 1.1)]),
    ("(red cat:0.5) on sand", [("red cat", 0.5), (" on sand", 1.0)]),
    ("((big:1.5))", [("big", 1.5 * 1.1)]),
    ("(x:0)", [("x", 0.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("time: 5pm", [("time: 5pm", 1.0)]),
    ("\\(not weighted:2\\)", [("(not weighted:2)", 1.0)]),
    ("", [("", 1.0)]),
]

# (prompt, steps, A1111's get_learned_conditioning_prompt_schedules result as (end_at_step, runs)).
SCHEDULE_CASES = [
    ("test", 10, [(10, [("test", 1.0)])]),
    ("a [b:3]", 10, [(3, [("a ", 1.0)]), (10, [("a b", 1.0)])]),
    ("a [b: 3]", 10, [(3, [("a ", 1.0)]), (10, [("a b", 1.0)])]),
    ("a [[[b]]:2]", 10, [(2, [("a ", 1.0)]), (10, [("a ", 1.0), ("b", S * S)])]),
    ("[(a:2):3]", 10, [(3, [("", 1.0)]), (10, [("a", 2.0)])]),
    ("a [b : c : 1] d", 10, [(1, [("a b  d", 1.0)]), (10, [("a  c  d", 1.0)])]),
    ("a[b:[c:d:2]:1]e", 10, [(1, [("abe", 1.0)]), (2, [("ace", 1.0)]), (10, [("ade", 1.0)])]),
    ("a [b:.5] c", 10, [(5, [("a  c", 1.0)]), (10, [("a b c", 1.0)])]),
    ("a [cat:kitten:0.5]", 25, [(12, [("a cat", 1.0)]), (25, [("a kitten", 1.0)])]),
    ("a [cat::0.25] b", 8, [(2, [("a cat b", 1.0)]), (8, [("a  b", 1.0)])]),
    ("[cat:dog:40]", 10, [(10, [("cat", 1.0)])]),
    ("([cat:kitten:5]:1.3)", 10, [(5, [("cat", 1.3)]), (10, [("kitten", 1.3)])]),
]


@pytest.mark.parametrize("prompt,expected", WEIGHT_CASES, ids=[c[0] or "empty" for c in WEIGHT_CASES])
def test_weighting_follows_a1111(prompt, expected):
    got = weighted_chunks(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize("prompt,steps,expected", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_editing_schedule_follows_a1111(prompt, steps, expected):
    got = schedule(prompt, steps)
    assert [end for end, _ in got] == [end for end, _ in expected]
    for (_, runs), (_, want) in zip(got, expected):
        assert [t for t, _ in runs] == [t for t, _ in want]
        assert [w for _, w in runs] == pytest.approx([w for _, w in want])


def test_the_table_has_at_least_twenty_cases():
    assert len(WEIGHT_CASES) + len(SCHEDULE_CASES) >= 20


def test_a1111_step_counting_uses_the_old_text_through_the_switch_step():
    entries = schedule("a [cat:kitten:3]", 6)
    assert [prompt_syntax.conditioning_index(entries, step) for step in range(6)] == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("prompt,problem", [
    ("(unbalanced", r"'\(' is never closed"),
    ("a [unbalanced", r"'\[' is never closed"),
    ("a cat)", r"'\)' closes a bracket that was never opened"),
    ("a ]", r"'\]' closes a bracket that was never opened"),
    ("(cat:heavy)", "weight after ':' must be a number"),
    ("(cat:1.2.3)", "weight after ':' must be a number"),
    ("(cat:-1)", "must not be negative"),
    ("[cat:dog]", "a switch needs a step"),
    ("[cat:dog:soon]", "switch step after ':' must be a number"),
    ("[cat:dog:-2]", "switch step must be >= 0"),
    ("[cat|dog]", "alternation"),
    ("trailing \\", "backslash at the end"),
])
def test_bad_prompt_syntax_is_refused_saying_what_and_where(prompt, problem):
    with pytest.raises(PromptSyntaxError, match=problem) as error:
        schedule(prompt, 10)
    assert prompt in str(error.value)  # the prompt is shown with a pointer under the place


def test_weighted_chunks_sends_switches_to_schedule():
    with pytest.raises(ValueError, match="use schedule"):
        weighted_chunks("a [cat:dog:3]")


# --- weighted conditioning ----------------------------------------------------------------------------


def test_unweighted_prompt_encodes_exactly_as_diffusers(tiny):
    torch.testing.assert_close(conditioning.encode(tiny, PROMPT), tiny.encode_prompt(PROMPT, "cpu", 1, False)[0])


def test_weights_scale_the_rows_and_the_mean_is_restored_as_a1111_does():
    embeds = torch.rand(1, 77, 8) + 0.5
    weights = torch.ones(1, 77)
    weights[0, 5] = 1.5
    weighted = conditioning.apply_weights(embeds, weights)
    assert weighted.mean().item() == pytest.approx(embeds.mean().item())
    rescale = embeds.sum() / (embeds.sum() + 0.5 * embeds[0, 5].sum())
    torch.testing.assert_close(weighted[0, 5], embeds[0, 5] * 1.5 * rescale)
    torch.testing.assert_close(weighted[0, 4], embeds[0, 4] * rescale)


def test_a_weighted_word_is_weighted_in_what_the_pipeline_gets(tiny):
    plain = conditioning.encode(tiny, "a photo of an orange cat")[0]
    weighted = conditioning.encode(tiny, "a photo of an (orange:1.5) cat")[0]
    ratio = weighted / plain  # one factor per row: 1.5 x on "orange" (position 5), the same elsewhere
    torch.testing.assert_close(ratio[5], 1.5 * ratio[4])
    torch.testing.assert_close(ratio[6], ratio[4])


def test_rows_of_zero_mean_are_not_rescaled_by_noise():
    embeds = torch.randn(1, 77, 8)
    embeds = embeds - embeds.mean(dim=-1, keepdim=True)  # a LayerNorm without bias: every row has mean 0
    weights = torch.ones(1, 77)
    weights[0, 3] = 2.0
    weighted = conditioning.apply_weights(embeds, weights)
    torch.testing.assert_close(weighted[0, 3], 2 * embeds[0, 3])


def test_weights_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"weights \[1, 76\] must match"):
        conditioning.apply_weights(torch.zeros(1, 77, 8), torch.ones(1, 76))


# --- editing through the step callback ----------------------------------------------------------------


def test_the_switch_happens_at_exactly_the_asked_step(tiny):
    received = []
    handle = tiny.unet.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        run = conditioning.trace_prompt(tiny, "a photo of a [cat:dog:3] on the left", seed=0,
                                        num_inference_steps=8, guidance_scale=7.5)
    finally:
        handle.remove()
    cat = conditioning.encode(tiny, "a photo of a cat on the left")
    dog = conditioning.encode(tiny, "a photo of a dog on the left")
    negative = conditioning.encode(tiny, "")
    used = []
    for hidden in received:
        torch.testing.assert_close(hidden[:1], negative)  # CFG: [negative; positive]
        used.append("cat" if torch.equal(hidden[1:], cat) else "dog" if torch.equal(hidden[1:], dog) else "?")
    assert used == ["cat"] * 4 + ["dog"] * 4  # A1111: "cat" at steps 0..3, "dog" from step 4
    assert run.params["conditioning_per_step"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [e["prompt"] for e in run.params["prompt_schedule"]] == ["a photo of a cat on the left",
                                                                    "a photo of a dog on the left"]


def test_switching_without_guidance_and_with_a_user_callback(tiny):
    seen_steps = []

    def user(pipe, step, timestep, kwargs):
        seen_steps.append(step)
        return {}

    run = conditioning.trace_prompt(tiny, "[cat:dog:0.5]", seed=0, num_inference_steps=4, guidance_scale=1.0,
                                    callback_on_step_end=user)
    assert seen_steps == [0, 1, 2, 3]
    assert run.params["conditioning_per_step"] == [0, 0, 0, 1]
    assert run.noise_pred_uncond is None


def test_a_weighted_prompt_changes_the_picture_and_records_its_schedule(tiny):
    plain = conditioning.trace_prompt(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    weighted = conditioning.trace_prompt(tiny, "a photo of a (cat:1.4)", seed=0, num_inference_steps=3)
    assert weighted.params["prompt_schedule"] == [{"end_at_step": 3, "prompt": "a photo of a (cat:1.4)"}]
    assert (plain.latents[-1] - weighted.latents[-1]).abs().max() > 1e-4


# --- long prompts: truncation vs chunking ----------------------------------------------------------------

LONG = ", ".join(["a photo of an orange cat on the left"] * 12)  # 12 x 9 + 11 commas = 119 tokens


def test_truncation_warns_and_says_what_was_cut(tiny):
    with pytest.warns(PromptTruncatedWarning, match="cut"):
        embeds = conditioning.encode(tiny, LONG)
    assert embeds.shape[1] == 77
    torch.testing.assert_close(embeds, tiny.encode_prompt(LONG, "cpu", 1, False)[0])


def test_chunking_encodes_75_token_chunks_each_wrapped_in_start_and_end(tiny):
    embeds = conditioning.encode(tiny, LONG, chunking=True)
    assert embeds.shape[1] == 2 * 77
    with pytest.warns(PromptTruncatedWarning):
        torch.testing.assert_close(embeds[:, :77], conditioning.encode(tiny, LONG))
    ids, _ = conditioning.weighted_tokens(tiny.tokenizer, weighted_chunks(LONG))
    rows, _ = conditioning.chunk_ids(tiny.tokenizer, ids, [1.0] * len(ids), chunking=True)
    assert rows[1, 0] == tiny.tokenizer.bos_token_id and rows[1, len(ids) - 75 + 1] == tiny.tokenizer.eos_token_id
    assert rows[1, 1:len(ids) - 75 + 1].tolist() == ids[75:]


def test_chunked_trace_pads_the_negative_prompt_to_the_same_length(tiny):
    run = conditioning.trace_prompt(tiny, LONG, seed=0, num_inference_steps=2, chunking=True)
    assert run.prompt_embeds.shape[1] == run.negative_prompt_embeds.shape[1] == 154


# --- word-vector arithmetic ----------------------------------------------------------------------------


def test_parse_expression():
    assert arithmetic.parse_expression("cat - orange + black") == [(1.0, "cat"), (-1.0, "orange"), (1.0, "black")]
    assert arithmetic.parse_expression("0.5 cat + 0.5 * kitten") == [(0.5, "cat"), (0.5, "kitten")]
    assert arithmetic.parse_expression("- palm tree + x-ray") == [(-1.0, "palm tree"), (1.0, "x-ray")]


def test_input_arithmetic_puts_the_word_vector_in_the_slot(tiny):
    prompt = "a photo of a cat on the left"
    vector = arithmetic.word_vector(tiny, "cat - orange + black")
    table = tiny.text_encoder.get_input_embeddings().weight
    ids = tiny.tokenizer
    expected_vector = table[ids.convert_tokens_to_ids("cat</w>")] - table[ids.convert_tokens_to_ids("orange</w>")] \
        + table[ids.convert_tokens_to_ids("black</w>")]
    torch.testing.assert_close(vector, expected_vector)
    embeds = arithmetic.arithmetic_embeds(tiny, prompt, "cat", "cat - orange + black", where="input")
    replaced = {}

    def put_vector(module, args, output):
        output = output.clone()
        output[0, 5] = vector  # position 5: "cat"
        replaced["done"] = True
        return output

    handle = tiny.text_encoder.get_input_embeddings().register_forward_hook(put_vector)
    try:
        expected = tiny.encode_prompt(prompt, "cpu", 1, False)[0]
    finally:
        handle.remove()
    torch.testing.assert_close(embeds, expected)


def test_output_arithmetic_combines_the_encoder_outputs(tiny):
    embeds = arithmetic.arithmetic_embeds(tiny, "a photo of a cat", "cat", "cat - orange + black", where="output")
    encode = lambda text: tiny.encode_prompt(text, "cpu", 1, False)[0]  # noqa: E731
    torch.testing.assert_close(embeds, encode("a photo of a cat") - encode("a photo of a orange")
                               + encode("a photo of a black"))


def test_arithmetic_bad_input(tiny):
    with pytest.raises(ValueError, match="slot 'dog' is not in the prompt"):
        arithmetic.arithmetic_embeds(tiny, "a photo of a cat", "dog", "cat - orange + black")
    with pytest.raises(ValueError, match="'bozuman' is .* tokens .* needs a single-token word"):
        arithmetic.word_vector(tiny, "cat - bozuman")
    with pytest.raises(ValueError, match="same number of tokens"):
        arithmetic.arithmetic_embeds(tiny, "a photo of a cat", "cat", "cat - palm tree", where="input")
    with pytest.raises(ValueError, match="where must be one of"):
        arithmetic.arithmetic_embeds(tiny, "a photo of a cat", "cat", "cat", where="middle")
    with pytest.raises(ValueError, match=r"one shape, got \[\(77, 8\), \(76, 8\)\]"):
        arithmetic.combine([torch.zeros(77, 8), torch.zeros(76, 8)], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        arithmetic.parse_expression("  ")


def test_editing_sweep_needs_a_when_field_and_reports_the_switch_step(tiny):
    from sdexplore.studies.prompt_editing import editing_pictures

    with pytest.raises(ValueError, match="must contain '{when}'"):
        editing_pictures(tiny, "a [cat:dog:0.5]", [0.5], [0])
    result = editing_pictures(tiny, "a [cat:dog:{when}]", [0, 2], [0], num_inference_steps=4)
    assert result["pictures"].shape[:2] == (2, 1)
    assert result["switch_step"].tolist() == [1, 3]  # A1111: the old text through step `when`
