"""Sliding one word's token embedding toward another (the notes' cat <-> kitten experiment)."""

import pytest
import torch

from sdexplore.studies.interpolation import interpolated_prompt_embeds, single_token_id, trace_interpolation


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
    assert runs[1].params["interpolation"] == {"word": "cat", "target": "kitten", "alpha": 1.0}


def test_bad_words_are_clear(tiny):
    with pytest.raises(ValueError, match="not in the prompt"):
        interpolated_prompt_embeds(tiny, "a photo of a dog", "cat", "kitten", [0.5])
    with pytest.raises(ValueError, match="single-token words"):
        single_token_id(tiny.tokenizer, "bozuman")
