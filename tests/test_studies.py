"""The study functions the notebooks use: shapes, edge cases and errors, on the tiny model."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import sdexplore
from sdexplore.plot.attention import plot_slide
from sdexplore.plot.steps import plot_settling
from sdexplore.studies.attention import attended_region, iou, slide_attention, token_kind_shares
from sdexplore.studies.denoising import first_step_within, prompt_effect, settling

PROMPT = "a photo of a cat on the sea"


def test_settling_starts_far_and_ends_at_zero(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=6)
    curves = settling(run)
    assert curves["x_t"].shape == curves["x0"].shape == (6,)
    assert curves["x_t"][0] > curves["x_t"][-1] >= 0
    assert curves["x0"][-1] < 0.1 < curves["x0"][0]  # DDIM's last step lands (almost) on its last guess
    assert isinstance(plot_settling(curves, tolerance=0.25), Figure)


def test_first_step_within_is_the_step_after_the_last_excursion():
    distances = torch.tensor([0.9, 0.2, 0.5, 0.2, 0.1])
    assert first_step_within(distances, 0.25) == 3
    assert first_step_within(torch.tensor([0.9, 0.8]), 0.25) == 2
    assert first_step_within(torch.tensor([0.1, 0.1]), 0.25) == 0


def test_prompt_effect_needs_guidance(tiny):
    guided = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=7.5)
    assert prompt_effect(guided).shape == (3,) and (prompt_effect(guided) > 0).all()
    plain = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=3, guidance_scale=1.0)
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        prompt_effect(plain)


def test_token_kind_shares_add_up_to_one(tiny):
    run = sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=2, attention=True)
    shares = token_kind_shares(run)
    assert set(shares) == {"start", "word", "end", "padding"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3) and min(shares.values()) > 0


def test_attended_region_and_iou():
    heat = torch.zeros(4, 4)
    heat[:2, :2] = 1.0
    region = attended_region(heat, (8, 8))
    assert region.shape == (8, 8) and region[0, 0] and not region[7, 7]
    square = np.zeros((8, 8), bool)
    square[:4, :4] = True
    assert iou(square, square) == 1.0 and iou(square, ~square) == 0.0
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0


def test_slide_attention_records_a_picture_and_a_map_per_alpha(tiny):
    slide = slide_attention(tiny, PROMPT, "cat", "kitten", [0.0, 0.5, 1.0], seed=0, num_inference_steps=2)
    assert slide["images"].shape == (3, 64, 64, 3) and slide["images"].dtype == np.uint8
    assert slide["maps"].shape == (3, 8, 8)
    torch.testing.assert_close(slide["maps"].sum(dim=(-2, -1)), torch.ones(3))
    assert slide["image_change"].shape == slide["map_change"].shape == (2,)
    assert ((0 <= slide["map_change"]) & (slide["map_change"] <= 1)).all()
    assert isinstance(plot_slide(slide), Figure)
    with pytest.raises(ValueError, match="not in the prompt"):
        slide_attention(tiny, PROMPT, "dog", "kitten", [0.0], seed=0, num_inference_steps=2)


def test_divergence_is_zero_for_the_same_seed_and_grows_apart_for_another(tiny):
    from sdexplore.plot.interpolation import plot_branching, plot_divergence, plot_slide_row
    from sdexplore.studies.interpolation import divergence, picture_changes

    a, same = (sdexplore.trace(tiny, PROMPT, seed=0, num_inference_steps=4) for _ in range(2))
    other = sdexplore.trace(tiny, PROMPT, seed=1, num_inference_steps=4)
    assert divergence(a, same)["x0"].shape == (4,) and divergence(a, same)["x_t"].shape == (5,)
    assert divergence(a, same)["x0"].abs().max() == 0 and divergence(a, other)["x_t"][0] > 0.5
    changes = picture_changes([a, same, other])
    assert changes.shape == (2,) and changes[0] == 0 and changes[1] > 0
    assert isinstance(plot_divergence({"seed 0 vs 1": divergence(a, other)["x0"]}), Figure)
    assert isinstance(plot_slide_row([r.images[0] for r in (a, other)], [0.0, 1.0], ["a", "b"]), Figure)
    assert isinstance(plot_branching({"a": [a.images[0]] * 2, "b": [other.images[0]] * 2}, [0, 3]), Figure)


def test_strength_sweep_separates_the_seed_from_the_strength(tiny):
    from PIL import Image

    from sdexplore.plot.img2img import plot_strength_curves, plot_strength_grid
    from sdexplore.studies.img2img import (
        distance_to,
        neighbour_changes,
        pictures,
        seed_spread,
        signal_left,
        strength_sweep,
    )

    source = Image.fromarray(np.full((64, 64, 3), 120, np.uint8))
    runs = strength_sweep(tiny, source, PROMPT, [0.5, 1.0], [0, 0, 1], num_inference_steps=4)
    assert [[run.num_steps for run in row] for row in runs] == [[2, 4]] * 3  # int(4 * strength) steps run
    images = pictures(runs)
    assert images.shape == (3, 2, 64, 64, 3)
    assert distance_to(images, source).shape == (3, 2) and distance_to(images[:, 0], images[0, 0])[1] == 0
    half = np.zeros((64, 64), bool)
    half[:, :32] = True
    assert distance_to(images[0], source, where=half).shape == (2,)
    with pytest.raises(ValueError, match="selects no pixel"):
        distance_to(images, source, where=np.zeros((64, 64), bool))
    changes = neighbour_changes(images)
    assert changes.shape == (3, 1) and changes[0, 0] == pytest.approx(distance_to(images[0, 1], images[0, 0]))
    assert seed_spread(images[:2]).max() == 0 and (seed_spread(images) > 0).all()  # same seed twice: no spread
    signal = [signal_left(tiny.scheduler, row_run.timesteps[0]) for row_run in runs[0]]
    assert 1 > signal[0] > signal[1] > 0  # more strength, less of the input left at the start
    assert signal_left(tiny.scheduler, 0) > 0.99
    assert isinstance(plot_strength_grid({"seed 0": images[0] / 255}, [0.5, 1.0], source=source), Figure)
    assert isinstance(plot_strength_curves([0.5, 1.0], {"distance": distance_to(images[0], source)}), Figure)
