"""The shipped toy model: SD-shaped, loadable with plain diffusers, and clearing its quality gates.

The gates are measured on what the model generates now (about two minutes on 2 CPU cores), with the
thresholds the issue set (``gates.THRESHOLDS``). Speed is a benchmark (``python -m sdexplore.toy.gates``),
not a test.
"""

from pathlib import Path

import numpy as np
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
    """README: the shipped weights (v3) score 0.763 on the gate's 32 scenes; the goal is 0.75."""
    mean_iou = gates.attention_iou(toy, n=32)["mean_iou"]
    assert mean_iou >= gates.THRESHOLDS["mean_iou"], mean_iou


def test_two_object_prompts_find_both_objects_at_their_places(toy):
    """Issue 14's gate (>= 0.80): the shipped model finds both objects at their places in 44 of 48 prompts that
    no training scene shows (v2: 34, v1: 27). Its misses are binding, not drawing: both kinds in each other's
    places (1) or one kind in both halves (3)."""
    scores = gates.two_object_following(toy, n=48)
    assert scores["n"] == 48 and scores["both"] >= gates.THRESHOLDS["two_objects"], scores
    outcomes = scores["outcomes"]
    missed = 48 - outcomes["both at their places"]
    assert outcomes["kinds swapped"] + outcomes["one kind twice"] >= 0.75 * missed, outcomes


def test_img2img_at_half_strength_keeps_both_objects(toy):
    scores = gates.img2img_keeps_both(toy, n=48)
    assert scores["both"] >= gates.THRESHOLDS["img2img_keeps_both"], scores


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


def test_on_validation_scenes_the_gates_50_percent_scores_near_the_best_threshold_45(toy):
    """README and notebook 02: on the shipped weights the 32 validation scenes score 0.771 at 45%, 0.765 at the
    gate's 50% (chosen on v1), less at 40% and 55% (v2: 0.776 and 0.768)."""
    sweep = gates.threshold_sweep(toy, thresholds=(0.4, 0.45, 0.5, 0.55), n=32)
    assert max(sweep, key=sweep.get) == 0.45, sweep
    assert sweep[0.45] - 0.02 <= sweep[0.5] and min(sweep[0.4], sweep[0.55]) < sweep[0.5], sweep


def _daam_heat(maps, index: int, positions: list[int]) -> torch.Tensor:
    """DAAM's word map written out here from its description (castorini/daam, compute_global_heat_map):
    every head of every layer summed over the steps at its own grid, upsampled bicubically to the latent
    grid, clamped at 0, averaged over layers and heads; the mean of the word's tokens."""
    merged = []
    for name in maps.layer_names:
        hl, wl = maps.layer_sizes[name]
        summed = sum(maps.head_maps(name, step)[index] for step in range(maps.num_steps))  # [heads, hl, wl, T]
        grids = summed.permute(0, 3, 1, 2).reshape(-1, 1, hl, wl).float()
        up = torch.nn.functional.interpolate(grids, size=maps.latent_size, mode="bicubic").clamp(min=0)
        merged.append(up.reshape(summed.shape[0], summed.shape[-1], *maps.latent_size))
    return torch.cat(merged).mean(0)[positions].mean(0)


def test_the_default_word_map_is_at_least_as_faithful_as_daams_aggregation(toy):
    """On the gate's first 8 scenes, the default map's IoU with the object's mask against DAAM's of the same runs.

    Measured on the gate's 32 scenes (python -m sdexplore.toy.gates --attention-only): sdexplore 0.763, DAAM 0.764
    at 50%; at 40% 0.719 against 0.723 (DAAM clips each head after summing the steps, which a per-step map bounded
    in memory cannot do). On these 8 scenes: 0.812 against 0.812 at 50%, 0.766 against 0.771 at 40%. On v1, with
    the maps upsampled bilinearly: 0.714 (0.638 at 40%)."""
    from sdexplore.studies.attention import ATTENTION_THRESHOLD, attended_region, iou

    n = 8
    default = list(gates.object_word_heats(toy, n=n))
    scenes = world.held_out_prompts(n, seed=1)  # the gate's scenes and seed (object_word_heats, seed=0)
    run = sdexplore.trace(toy, [world.canonical_prompt(s) for s in scenes], seed=0, attention="per_layer",
                          attention_options={"per_head": True}, num_inference_steps=gates.STEPS,
                          guidance_scale=gates.GUIDANCE)
    daam = []
    for index, scene in enumerate(scenes):
        words = gates.object_words(scene.objects[0].kind)  # one token each (the world's vocabulary)
        positions = [p for word in words for p in run.attention.word_positions(word, index)]
        daam.append(_daam_heat(run.attention, index, positions))
        printed = gates.daam_word_heat(run.attention, index, words)  # what the gates print (mean over steps)
        torch.testing.assert_close(printed / printed.sum(), daam[-1] / daam[-1].sum())

    def mean_iou(heats):
        return np.mean([iou(attended_region(heat, mask.shape, ATTENTION_THRESHOLD), mask)
                        for heat, (_, mask) in zip(heats, default)])

    ours, theirs = mean_iou([heat for heat, _ in default]), mean_iou(daam)
    assert ours >= theirs - 0.01, (ours, theirs)
    assert theirs > 0.5  # the comparison is between two maps that find the object
