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
    plain = tmp_path / "plain.txt"
    plain.write_text("")  # written atomically, yet with the permissions of a file written the ordinary way
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("fig.png", "fig.json", "fig.svg")} == {
        plain.stat().st_mode & 0o777}


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


def test_overwrite_false_refuses_before_writing_anything(tmp_path):
    first = save_figure(_figure(), tmp_path / "fig.png", params={"seed": 1})
    before = first.read_bytes()
    with pytest.raises(FileExistsError, match="fig.png"):
        save_figure(_figure(), tmp_path / "fig.png", params={"seed": 2}, overwrite=False)
    assert first.read_bytes() == before and read_parameters(first)["seed"] == 1
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(FileExistsError, match="other.json"):  # an earlier sidecar alone is enough to refuse
        save_figure(_figure(), tmp_path / "other.png", overwrite=False)
    assert not (tmp_path / "other.png").exists()
    assert save_figure(_figure(), tmp_path / "fig.png", params={"seed": 2}, overwrite=True) == first
    assert read_parameters(first)["seed"] == 2


def test_records_are_strict_json_and_name_the_model_as_loaded(tmp_path):
    import numpy as np

    from sdexplore.models import TOY_WEIGHTS

    path = save_figure(_figure(), tmp_path / "fig.png",
                       params={"guidance_scale": float("inf"), "alpha": np.linspace(0, 1, 3), "step": np.int64(4),
                               "model": str(TOY_WEIGHTS), "where": tmp_path})
    text = (tmp_path / "fig.json").read_text()
    record = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert record["guidance_scale"] == "inf" and record["alpha"] == [0.0, 0.5, 1.0] and record["step"] == 4
    assert record["model"] == "toy" and record["where"] == str(tmp_path)
    assert read_parameters(path) == record
    with pytest.raises(TypeError, match=r"params\['thing'\] is a object"):
        save_figure(_figure(), tmp_path / "bad.png", params={"thing": object()})


def test_denoising_animation_has_one_frame_per_step_from_noise_to_picture(tiny, tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from sdexplore.export import save_denoising_animation
    from sdexplore.plot.steps import denoising_frames

    run = sdexplore.trace(tiny, "a photo of a cat", seed=0, num_inference_steps=4)
    frames = denoising_frames(run)
    assert len(frames) == 4 and frames[0].dtype == np.uint8 and frames[0].shape[0] >= 160
    assert not np.array_equal(frames[0], frames[-1])  # the pictures change over the steps
    x_t, x0 = run.preview(-1, "x_t")[0], run.preview(-1, "x0")[0]  # 64x64 approx previews, enlarged 3x
    size = 3 * x0.height
    assert np.array_equal(frames[-1][-size:, :size], np.asarray(x_t.resize((size, size), Image.NEAREST)))
    assert np.array_equal(frames[-1][-size:, -size:], np.asarray(x0.resize((size, size), Image.NEAREST)))

    gif = save_denoising_animation(run, tmp_path / "steps.gif", fps=4)
    assert iio.imread(gif, index=None).shape[0] == 4
    assert json.loads((tmp_path / "steps.json").read_text())["frames"] == 4
    mp4 = save_denoising_animation(run, tmp_path / "steps.mp4")
    assert mp4.read_bytes()[4:8] == b"ftyp"
    with pytest.raises(FileExistsError):
        save_denoising_animation(run, tmp_path / "steps.gif", overwrite=False)
    with pytest.raises(ValueError, match="gif"):
        save_denoising_animation(run, tmp_path / "steps.avi")


def test_figures_display_as_pictures_in_ipython():
    from IPython.core.interactiveshell import InteractiveShell

    from sdexplore.notebook import INLINE_DPI, show_figures_as_pictures

    assert not show_figures_as_pictures()  # no IPython running yet: nothing to register with
    shell = InteractiveShell.instance()
    assert show_figures_as_pictures(shell)
    data, _ = shell.display_formatter.format(_figure())
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(__import__("io").BytesIO(data["image/png"])) as picture:
        assert picture.mode == "P"  # 256 colours, to keep notebooks with outputs small
        assert 1.5 * INLINE_DPI < picture.width < 2.4 * INLINE_DPI  # a 2-inch figure at the inline dpi (+ margin)
