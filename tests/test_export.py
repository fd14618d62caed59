"""Figures go out with the parameters that made them: PNG text chunks and a JSON sidecar."""

import json

import pytest
from matplotlib.figure import Figure
from PIL import Image

import sdexplore
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
