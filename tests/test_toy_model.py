"""The shipped toy model: SD-shaped, loadable with plain diffusers, and clearing its quality gates.

The gates are measured on what the model generates now (about two minutes on 2 CPU cores), with the
thresholds the issue set (``gates.THRESHOLDS``). Speed is a benchmark (``python -m sdexplore.toy.gates``),
not a test.
"""

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import sdexplore
from sdexplore.models import TOY_WEIGHTS
from sdexplore.toy import gates, world


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline("toy")


def test_the_weights_ship_as_a_small_safetensors_diffusers_folder():
    files = [p for p in Path(TOY_WEIGHTS).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_plain_diffusers_loads_it_and_it_is_sd_shaped():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_WEIGHTS)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.in_channels == 4
    cross_attention_levels = [b for b in pipe.unet.config.down_block_types if b.startswith("CrossAttn")]
    assert len(cross_attention_levels) >= 2
    start, end = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
    ids = pipe.tokenizer("a cat", padding="max_length").input_ids
    assert ids[0] == start and ids[-1] == end and len(ids) == 77  # the end token pads, as in CLIP


def test_prompt_following_gate(toy):
    scores = gates.prompt_following(toy, n=100)
    for name in ("kind", "color", "position", "cat_vs_kitten"):
        assert scores[name] >= gates.THRESHOLDS[name], (name, scores[name])


def test_attention_faithfulness_gate(toy):
    assert gates.attention_iou(toy, n=32)["mean_iou"] >= gates.THRESHOLDS["mean_iou"]


def test_sliding_cat_toward_kitten_turns_cats_into_kittens(toy):
    rates = gates.cat_kitten_interpolation(toy)["kitten_rate"]
    assert rates[0] <= 0.2 and rates[-1] >= 0.8, rates


def test_words_the_world_never_saw_are_tokenised_not_fatal(toy):
    run = sdexplore.trace(toy, "a bozuman xylophone under the moon, in edvard munch style", seed=0,
                          num_inference_steps=2)
    words = {t.word for t in run.tokens[0] if t.kind == "word"}
    assert {"bozuman", "xylophone"} <= words
    assert torch.isfinite(run.latents).all()
    bozuman = [t for t in run.tokens[0] if t.word == "bozuman"]
    assert len(bozuman) > 1  # split into sub-words, like the notes' "bozuman" in SD


def test_the_world_vocabulary_is_one_token_per_word(toy):
    for word in world.WORDS:
        assert len(toy.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_the_threshold_sweep_scores_validation_scenes_like_the_gate_does(toy):
    sweep = gates.threshold_sweep(toy, thresholds=(0.3, 0.5, 0.7), n=8)
    assert list(sweep) == [0.3, 0.5, 0.7] and all(0.0 <= v <= 1.0 for v in sweep.values())
    same = gates.attention_iou(toy, n=8, seed=gates.VALIDATION_SEED, threshold=0.5)["mean_iou"]
    assert sweep[0.5] == pytest.approx(same)
    assert sweep[0.5] > sweep[0.3]  # a too-low threshold spills over the background
