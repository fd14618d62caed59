"""Sliding one word's token embedding toward another (the notes' cat <-> kitten experiment)."""

import pytest
import torch

from sdexplore.studies.interpolation import (
    interpolated_prompt_embeds,
    mix,
    prompts_interpolated,
    single_token_id,
    trace_interpolation,
    trace_prompt_interpolation,
)


def test_ends_of_the_slide_are_the_two_words_and_the_middle_is_between(tiny):
    embeds = interpolated_prompt_embeds(tiny, "a photo of a cat", "cat", "kitten", [0.0, 0.5, 1.0])
    cat = tiny.encode_prompt("a photo of a cat", "cpu", 1, False)[0][0]
    kitten = tiny.encode_prompt("a photo of a kitten", "cpu", 1, False)[0][0]
    torch.testing.assert_close(embeds[0], cat)
    torch.testing.assert_close(embeds[2], kitten)
    assert not torch.allclose(embeds[1], cat) and not torch.allclose(embeds[1], kitten)
    torch.testing.assert_close(embeds[1][:4], cat[:4])  # positions before the word are untouched (causal encoder)


def test_the_hook_is_removed_afterwards(tiny):
    interpolated_prompt_embeds(tiny, "a photo of a cat", "cat", "kitten", [0.5])
    assert not tiny.text_encoder.get_input_embeddings()._forward_hooks


def test_traces_share_the_seed_and_differ_only_through_the_word(tiny):
    runs = trace_interpolation(tiny, "a photo of a cat", "cat", "kitten", [0.0, 1.0], seed=3, num_inference_steps=3)
    assert torch.equal(runs[0].latents[0], runs[1].latents[0])
    assert not torch.equal(runs[0].latents[-1], runs[1].latents[-1])
    assert runs[1].params["interpolation"] == {"word": "cat", "target": "kitten", "mode": "lerp", "alpha": 1.0}


def test_bad_words_are_clear(tiny):
    with pytest.raises(ValueError, match="not in the prompt"):
        interpolated_prompt_embeds(tiny, "a photo of a dog", "cat", "kitten", [0.5])
    with pytest.raises(ValueError, match="single-token word"):
        single_token_id(tiny.tokenizer, "bozuman")


def test_slerp_keeps_the_ends_and_the_length_and_leaves_the_straight_line():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    torch.testing.assert_close(mix(a, b, 0.0, "slerp"), a)
    torch.testing.assert_close(mix(a, b, 1.0, "slerp"), b)
    middle = mix(a, b, 0.5, "slerp")
    torch.testing.assert_close(middle.norm(), torch.tensor(3.0))  # lerp's middle is shorter: 3 / sqrt(2)
    torch.testing.assert_close(middle, torch.tensor([1.0, 1.0, 0.0]) * 3 / 2**0.5)
    assert mix(a, b, 0.5, "lerp").norm() < 2.2
    torch.testing.assert_close(mix(a, 2 * a, 0.5, "slerp"), 1.5 * a)  # same direction: a straight line
    with pytest.raises(ValueError, match="mode must be one of lerp, slerp, got 'cubic'"):
        mix(a, b, 0.5, "cubic")


def test_slerp_slides_the_word_too(tiny):
    lerped = interpolated_prompt_embeds(tiny, "a photo of a cat", "cat", "kitten", [0.0, 0.5, 1.0])
    slerped = interpolated_prompt_embeds(tiny, "a photo of a cat", "cat", "kitten", [0.0, 0.5, 1.0], mode="slerp")
    torch.testing.assert_close(slerped[0], lerped[0])
    torch.testing.assert_close(slerped[2], lerped[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(slerped[1], lerped[1])


def test_two_prompts_mix_their_encoder_outputs(tiny):
    embeds = prompts_interpolated(tiny, "a photo of a cat", "a kitten on the sea", [0.0, 0.25, 1.0])
    cat = tiny.encode_prompt("a photo of a cat", "cpu", 1, False)[0][0]
    kitten = tiny.encode_prompt("a kitten on the sea", "cpu", 1, False)[0][0]
    torch.testing.assert_close(embeds[0], cat)
    torch.testing.assert_close(embeds[2], kitten)
    torch.testing.assert_close(embeds[1], 0.75 * cat + 0.25 * kitten)
    runs = trace_prompt_interpolation(tiny, "a photo of a cat", "a kitten on the sea", [0.0, 1.0], seed=2,
                                      num_inference_steps=2, mode="slerp")
    assert torch.equal(runs[0].latents[0], runs[1].latents[0]) and not torch.equal(runs[0].x0, runs[1].x0)
    assert runs[1].params["interpolation"] == {"target_prompt": "a kitten on the sea", "mode": "slerp", "alpha": 1.0}
