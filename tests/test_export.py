"""Figures go out with the parameters that made them: PNG text chunks and a JSON sidecar."""

import json

import pytest
from matplotlib.figure import Figure
from PIL import Image

import sdexplore
import sdexplore.export
from sdexplore.export import read_parameters, save_figure


def _figure():
    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    return figure


def test_a_saved_figure_carries_the_runs_parameters(tiny, tmp_path):
    run = sdexplore.trace(tiny, "a photo of a cat", seed=3, num_inference_steps=2, guidance_scale=5.0,
                          negative_prompt="blurry")
    path = save_figure(_figure(), tmp_path / "fig.png", run=run, params={"question": "why?"}, formats=("png", "svg"))
    record = read_parameters(path)
    assert record["prompt"] == "a photo of a cat" and record["seed"] == 3 and record["guidance_scale"] == 5.0
    assert record["negative_prompt"] == "blurry" and record["num_inference_steps"] == 2
    assert record["question"] == "why?" and record["versions"]["sdexplore"] == sdexplore.__version__
    assert json.loads((tmp_path / "fig.json").read_text()) == record
    with Image.open(path) as image:
        assert "seed: 3" in image.text["parameters"]
    assert (tmp_path / "fig.svg").read_text().lstrip().startswith("<?xml")


def test_bad_paths_and_formats_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"\.png path"):
        save_figure(_figure(), tmp_path / "fig.jpg")
    with pytest.raises(ValueError, match="allowed"):
        save_figure(_figure(), tmp_path / "fig.png", formats=("png", "bmp"))
    assert not list(tmp_path.iterdir())


def test_animations_are_written_as_gif_and_mp4_with_their_frames(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    frames = [np.full((16, 16, 3), 20 * i, dtype=np.uint8) for i in range(5)]
    gif = sdexplore.export.save_animation(frames, tmp_path / "walk.gif", fps=4, scale=2, params={"walk": "test"})
    read = iio.imread(gif, index=None)
    assert read.shape[0] == 5 and read.shape[1:3] == (32, 32)
    assert read[4].mean() > read[0].mean() + 50
    assert json.loads((tmp_path / "walk.json").read_text())["frames"] == 5
    mp4 = sdexplore.export.save_animation(frames, tmp_path / "walk.mp4", fps=4)
    assert mp4.read_bytes()[4:8] == b"ftyp"


def test_bad_animations_are_refused(tmp_path):
    import numpy as np

    with pytest.raises(ValueError, match="gif"):
        sdexplore.export.save_animation([np.zeros((8, 8, 3), np.uint8)], tmp_path / "a.avi")
    with pytest.raises(ValueError, match="at least one picture"):
        sdexplore.export.save_animation([], tmp_path / "a.gif")
    assert not list(tmp_path.iterdir())
