"""Walks (prompt, noise, both), seed variation, circular noise, where paths split: on the tiny pipeline."""

import math

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.plot.walks import plot_along_path, plot_split_map, plot_walk_strip
from sdexplore.studies import walks

STEPS = 4


def gaussians(seed=0, shape=(1, 4, 32, 32)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_lerp_of_two_gaussians_shrinks_the_norm_to_one_over_root_two_and_slerp_does_not():
    a, b = gaussians()
    rms = walks.noise_norms(torch.stack([walks.lerp(a, b, 0.5), walks.slerp(a, b, 0.5)]))
    assert abs(rms[0] - 1 / math.sqrt(2)) < 0.03
    assert abs(rms[1] - 1.0) < 0.03


def test_slerp_ends_at_its_endpoints_and_follows_the_great_circle():
    a, b = gaussians(1)
    assert torch.allclose(walks.slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(walks.slerp(a, b, 1.0), b, atol=1e-5)
    unit_a, unit_b = a / a.norm(), b / a.norm() * (a.norm() / b.norm())  # equal norms
    middle = walks.slerp(unit_a, unit_b, 0.5)
    assert abs(float(middle.norm()) - 1.0) < 1e-4
    angle = lambda u, v: float(torch.arccos((u.flatten() @ v.flatten()) / (u.norm() * v.norm())))  # noqa: E731
    assert abs(angle(unit_a, middle) - angle(middle, unit_b)) < 1e-4


def test_slerp_of_parallel_tensors_falls_back_to_lerp():
    a = torch.ones(3, 4)
    assert torch.allclose(walks.slerp(a, 2 * a, 0.5), 1.5 * a)


def test_alpha_outside_0_1_needs_extrapolate():
    a, b = gaussians()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*extrapolate=True"):
        walks.lerp(a, b, 1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        walks.slerp(a, b, -0.1)
    assert torch.allclose(walks.lerp(a, b, 2.0, extrapolate=True), 2 * b - a, atol=1e-5)


def test_mismatched_shapes_and_unknown_methods_are_refused():
    with pytest.raises(ValueError, match=r"same shape.*\(1, 77, 32\) and \(1, 77, 16\)"):
        walks.slerp(torch.zeros(1, 77, 32), torch.zeros(1, 77, 16), 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        walks.interpolate(torch.zeros(2), torch.ones(2), 0.5, "cubic")


def test_seed_noise_is_the_noise_trace_starts_from_and_latents_reproduce_the_run(tiny):
    noise = walks.seed_noise(tiny, 3)
    run = sdexplore.trace(tiny, "a cat", seed=3, num_inference_steps=STEPS)
    assert torch.equal(run.latents[0], noise * tiny.scheduler.init_noise_sigma)
    again = sdexplore.trace(tiny, "a cat", seed=3, num_inference_steps=STEPS, latents=noise)
    assert torch.equal(again.x0, run.x0)


def test_a1111_seed_variation_ends_at_both_seeds_and_keeps_the_norm(tiny):
    base, other = walks.seed_noise(tiny, 0), walks.seed_noise(tiny, 1)
    assert torch.allclose(walks.seed_variation(tiny, 0, 1, 0.0), base, atol=1e-5)
    assert torch.allclose(walks.seed_variation(tiny, 0, 1, 1.0), other, atol=1e-5)
    half = walks.seed_variation(tiny, 0, 1, 0.5)
    # A1111 slerps every (channel, column) vector along the height on its own circle: each keeps its norm
    columns = lambda x: x[0].norm(dim=1)  # noqa: E731  [C, w]
    expected = torch.sqrt(columns(base) * columns(other))  # equal weights: between the two norms
    assert ((columns(half) - expected).abs() / expected).max() < 0.2
    assert not torch.allclose(half, walks.slerp(base, other, 0.5), atol=1e-3)  # not the whole-tensor slerp
    with pytest.raises(ValueError, match="seed and variation_seed must differ"):
        walks.seed_variation(tiny, 4, 4, 0.5)


def test_circle_noise_closes_and_keeps_every_point_a_unit_gaussian():
    a, b = gaussians(2)
    angles = np.linspace(0, 2 * np.pi, 9)
    loop = walks.circle_noise(a, b, angles)
    assert loop.shape == (9, *a.shape)
    assert torch.allclose(loop[0], loop[-1], atol=1e-5) and torch.allclose(loop[0], a)
    assert (walks.noise_norms(loop) - 1).abs().max() < 0.05
    with pytest.raises(ValueError, match="at least 2 points"):
        walks.circle_noise(a, b, [0.0])


def test_prompt_path_interpolates_the_encoder_outputs(tiny):
    path = walks.prompt_path(tiny, "a cat", "a dog", [0, 0.5, 1], "lerp")
    a, b = walks.encode(tiny, "a cat"), walks.encode(tiny, "a dog")
    assert path.shape == (3, *a.shape)
    assert torch.allclose(path[0], a) and torch.allclose(path[2], b) and torch.allclose(path[1], (a + b) / 2)
    with pytest.raises(ValueError, match="at least 2 points"):
        walks.prompt_path(tiny, "a cat", "a dog", [0.5])
    with pytest.raises(ValueError, match="must differ"):
        walks.prompt_path(tiny, "a cat", "a cat", [0, 1])


def test_noise_path_refuses_the_same_seed_twice(tiny):
    with pytest.raises(ValueError, match="seed_a and seed_b must differ.*got 5 twice"):
        walks.noise_path(tiny, 5, 5, [0, 1])


def test_walk_over_prompts_gives_one_trace_per_point_whose_ends_are_the_plain_runs(tiny):
    path = walks.prompt_path(tiny, "a cat", "a dog", [0, 0.5, 1])
    runs = walks.walk(tiny, seed=0, prompts=path, num_inference_steps=STEPS)
    assert len(runs) == 3 and runs[1].params["walk"] == {"point": 1, "points": 3}
    plain = sdexplore.trace(tiny, "a dog", seed=0, num_inference_steps=STEPS)
    assert torch.allclose(runs[2].x0, plain.x0, atol=1e-5)
    assert not torch.allclose(runs[0].x0, runs[2].x0)


def test_walk_over_noise_and_both_with_pictures_only(tiny):
    noises = walks.noise_path(tiny, 0, 1, [0, 1])
    pictures = walks.walk(tiny, seed=7, prompts="a cat", noises=noises, keep="picture", num_inference_steps=STEPS)
    seed_0 = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=STEPS).images[0]
    assert np.array_equal(np.asarray(pictures[0]), np.asarray(seed_0))
    both = walks.walk(tiny, seed=0, prompts=["a cat", "a dog"], noises=noises, keep="picture",
                      num_inference_steps=STEPS)
    assert len(both) == 2 and both[0].size == (64, 64)


def test_walk_refuses_bad_paths(tiny):
    noises = walks.noise_path(tiny, 0, 1, [0, 0.5, 1])
    with pytest.raises(ValueError, match="same number of points"):
        walks.walk(tiny, seed=0, prompts=["a", "b"], noises=noises)
    with pytest.raises(ValueError, match="at least 2 points"):
        walks.walk(tiny, seed=0, prompts=["a cat"])
    with pytest.raises(ValueError, match="nothing to walk"):
        walks.walk(tiny, seed=0, prompts="a cat")
    with pytest.raises(ValueError, match=r"\[A, 1, C, h, w\]"):
        walks.walk(tiny, seed=0, prompts="a cat", noises=noises[:, 0])
    with pytest.raises(ValueError, match="keep must be"):
        walks.walk(tiny, seed=0, prompts=["a", "b"], keep="movie")
    with pytest.raises(TypeError, match="latents="):
        walks.walk(tiny, seed=0, prompts=["a", "b"], latents=noises[0])


def test_split_step_on_a_synthetic_pair_is_where_the_distance_first_crosses():
    x0 = torch.ones(10, 4, 4, 4)  # [N, C, h, w]
    other = x0.clone()
    other[6:] += 0.5  # 50% apart from step 6 on
    assert walks.split_step(other, x0, 0.2) == 6
    rejoined = other.clone()
    rejoined[2] += 0.5  # apart at step 2 for a moment: not yet split
    assert walks.split_step(rejoined, x0, 0.2) == 6
    assert walks.split_step(other[:-1].clone().fill_(3), x0[:-1], 0.2) == 0  # apart from the start
    assert walks.split_step(x0, x0.clone(), 0.2) == 10  # never: N
    back = other.clone()
    back[-1] = 1.0
    assert walks.split_step(back, x0, 0.2) == 10  # together again at the end: never split
    grid = torch.stack([x0, x0, other])[:, None]  # [A=3, S=1, N, ...]
    assert walks.split_steps(grid, 0.2).tolist() == [[10], [6]]
    with pytest.raises(ValueError, match="threshold must be > 0"):
        walks.split_step(x0, other, 0)


@pytest.mark.parametrize("k", [1, 3])
def test_split_step_of_a_run_perturbed_at_step_k_is_k_plus_one(tiny, k):
    """The constructed case: a callback kicks one run's latents at the end of step k; the guesses part at k+1."""
    def kick(pipe, step_index, timestep, callback_kwargs):
        if step_index == k:
            callback_kwargs["latents"] = callback_kwargs["latents"] + 3.0
        return callback_kwargs

    steps = 6
    plain = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=steps)
    kicked = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=steps, callback_on_step_end=kick)
    assert torch.equal(plain.x0[: k + 1], kicked.x0[: k + 1])
    assert walks.split_step(kicked.x0[:, 0], plain.x0[:, 0], 0.05) == k + 1


def test_grid_x0_and_its_split_map(tiny):
    grid = walks.grid_x0(tiny, "a cat", "a dog", [0, 0.5, 1], [0, 1], num_inference_steps=STEPS)
    assert grid["x0"].shape == (3, 2, STEPS, 4, 8, 8) and grid["pictures"].shape == (3, 2, 64, 64, 3)
    steps = walks.split_steps(grid["x0"], 1e-6)
    assert steps.shape == (2, 2) and (steps == 0).all()  # different prompts differ from the first guess
    figure = plot_split_map(steps, [0, 0.5, 1], [0, 1], STEPS, title="t")
    assert len(figure.axes) == 2
    with pytest.raises(ValueError, match="seeds must be distinct"):
        walks.grid_x0(tiny, "a cat", "a dog", [0, 1], [0, 0])


def test_picture_helpers():
    pictures = [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    stacked = walks.as_pictures(pictures)
    assert stacked.dtype == torch.uint8 and stacked.shape == (2, 4, 4, 3)
    assert walks.picture_gap(stacked, stacked.flip(0)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="same shape"):
        walks.picture_gap(stacked, stacked[:1])


def test_contrast_and_saturation_of_pictures():
    grey = np.full((1, 8, 8, 3), 128, np.uint8)
    vivid = np.zeros((1, 8, 8, 3), np.uint8)
    vivid[0, :4, :, 0] = 255
    both = np.concatenate([grey, vivid])
    assert walks.picture_contrast(both)[0] == 0 and walks.picture_contrast(both)[1] > 0.1
    assert walks.picture_saturation(both).tolist() == pytest.approx([0.0, 0.5])


def test_walk_figures_have_one_panel_per_point():
    pictures = [np.zeros((8, 8, 3), np.uint8)] * 3
    strip = plot_walk_strip({"lerp": pictures, "slerp": pictures}, ["0", "0.5", "1"])
    assert len(strip.axes) == 6
    lines = plot_along_path([0, 0.5, 1], {"lerp": [1, 0.7, 1]}, ylabel="RMS")
    assert len(lines.axes[0].lines) == 1
