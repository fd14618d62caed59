"""The `sdexplore` command: trace, show, figures, demo; one-line errors with exit status 2 (bad input) or 1."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import sdexplore
from sdexplore.cli import main
from sdexplore.export import read_parameters
from sdexplore.notebook import code_hash


def one_error_line(capsys) -> str:
    """The command's stderr, asserted to be exactly one "sdexplore: error: ..." line with no traceback
    (besides the progress bar of `figures`)."""
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not line.startswith("notebooks:")]
    assert len(lines) == 1 and lines[0].startswith("sdexplore: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def saved_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "cat.safetensors"
    assert main(["trace", "a photo of a cat", "--seed", "2", "--steps", "3", "--model", "tiny", "--attention",
                 "--negative-prompt", "blurry", "--out", str(path)]) == 0
    return path


def test_trace_saves_what_was_asked(saved_trace):
    run = sdexplore.Trace.load(saved_trace)
    assert run.seed == 2 and run.num_steps == 3 and run.prompt == "a photo of a cat"
    assert run.params["negative_prompt"] == "blurry" and run.attention is not None


def test_trace_refuses_to_replace_a_file_unless_told(saved_trace, capsys):
    before = saved_trace.read_bytes()
    code = main(["trace", "a photo of a dog", "--seed", "5", "--steps", "2", "--model", "tiny",
                 "--out", str(saved_trace)])
    line = one_error_line(capsys)
    assert code == 2 and "already exists" in line and "--overwrite" in line
    assert saved_trace.read_bytes() == before
    copy = saved_trace.with_name("copy.safetensors")
    copy.write_bytes(before)
    assert main(["trace", "a photo of a dog", "--seed", "5", "--steps", "2", "--model", "tiny",
                 "--out", str(copy), "--overwrite"]) == 0
    assert sdexplore.Trace.load(copy).seed == 5


def test_show_prints_the_trace_and_writes_its_strip_with_parameters(saved_trace, tmp_path, capsys):
    assert main(["show", str(saved_trace), "--out", str(tmp_path), "--animation", "gif"]) == 0
    out = capsys.readouterr().out
    assert "'a photo of a cat'" in out and "seed:        2" in out and "steps:       3" in out
    assert "attention:   yes" in out and "latents [4, 1, 4, 8, 8]" in out and '"negative_prompt": "blurry"' in out
    strip = tmp_path / "cat_denoising.png"
    record = read_parameters(strip)
    assert record["seed"] == 2 and record["prompt"] == "a photo of a cat" and record["negative_prompt"] == "blurry"
    assert json.loads(strip.with_suffix(".json").read_text()) == record
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "cat_animation.gif", index=None).shape[0] == 3  # one frame per step

    before = strip.read_bytes()
    assert main(["show", str(saved_trace), "--out", str(tmp_path)]) == 2
    assert "cat_denoising.png" in one_error_line(capsys)
    assert strip.read_bytes() == before
    assert main(["show", str(saved_trace), "--out", str(tmp_path), "--overwrite"]) == 0


def test_show_without_attention_says_so(tmp_path, capsys):
    path = tmp_path / "plain.safetensors"
    assert main(["trace", "a cat", "--seed", "0", "--steps", "2", "--model", "tiny", "--out", str(path)]) == 0
    assert main(["show", str(path)]) == 0
    assert "attention:   no" in capsys.readouterr().out
    with Image.open(tmp_path / "plain_denoising.png") as strip:
        assert strip.width > 300


@pytest.mark.parametrize("argv, status, says", [
    (["trace", "a cat", "--out", "x.safetensors"], 2, "--seed"),
    (["trace", "a cat", "--seed", "one", "--out", "x.safetensors"], 2, "invalid int value: 'one'"),
    (["trace", "a cat", "--seed", "0", "--steps", "0", "--out", "x.safetensors"], 2, "must be an integer >= 1"),
    (["trace", "a cat", "--seed", "0", "--guidance", "inf", "--out", "x.safetensors"], 2, "finite number"),
    (["trace", "a cat", "--seed", "0", "--out", "x.pt"], 2, ".safetensors file"),
    (["trace", "a cat", "--seed", "0", "--model", "tiny", "--scheduler", "fast", "--out", "x.safetensors"], 2,
     "unknown scheduler 'fast'"),
    (["show", "missing.safetensors"], 2, "no trace file at missing.safetensors"),
    (["figures", "--only", "99_nothing"], 2, "01_noise_to_cat"),
    (["nonsense"], 2, "invalid choice: 'nonsense'"),
    (["demo", "--model", "tiny", "--save-trace", "run.pkl"], 2, "--save-trace must be a .safetensors file"),
])
def test_bad_input_is_one_line_and_status_2(argv, status, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == status
    assert says in one_error_line(capsys)
    assert not list(tmp_path.glob("x.*"))


def test_a_file_that_is_not_a_trace_is_refused(tmp_path, capsys):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a trace")
    assert main(["show", str(path)]) == 2
    assert "not a readable trace file" in one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a trace")
    assert main(["show", str(path), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("sdexplore: error:")


def test_the_installed_command_exits_non_zero_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sdexplore", "show", str(tmp_path / "none.safetensors")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"sdexplore: error: no trace file at {tmp_path / 'none.safetensors'}"
                                                " (give the .safetensors file `sdexplore trace` wrote)"]


def test_demo_writes_a_figure_sidecar_and_trace_and_does_not_replace_them(tmp_path, capsys):
    argv = ["demo", "--model", "tiny", "--steps", "3", "--out", str(tmp_path),
            "--save-trace", str(tmp_path / "run.safetensors")]
    assert main(argv) == 0
    figure = tmp_path / "demo_tiny_seed0.png"
    with Image.open(figure) as picture:
        assert picture.width > 300 and picture.height > 200
    sidecar = json.loads((tmp_path / "demo_tiny_seed0.json").read_text())
    assert sidecar["seed"] == 0 and sidecar["num_inference_steps"] == 3 and sidecar["figure"] == figure.name
    assert sidecar["model"] == "tiny"  # the name asked for, not a path on this machine
    assert read_parameters(figure) == sidecar  # through save_figure: the PNG carries the same record
    assert sdexplore.Trace.load(tmp_path / "run.safetensors").num_steps == 3
    assert main(argv) == 2 and "already exist" in one_error_line(capsys)
    assert main(argv + ["--overwrite"]) == 0


# --- sdexplore figures, on a small notebooks folder of its own (the real ones run in test_notebooks.py) ---

GOOD = [
    "import os\nfrom pathlib import Path\n\nimport sdexplore\nfrom sdexplore.export import save_figure\n"
    "from sdexplore.plot.steps import denoising_previews, plot_denoising\n\n"
    'MODEL = os.environ.get("SDEXPLORE_MODEL", "toy")\n'
    'FIGURES = Path(os.environ.get("SDEXPLORE_FIGURES", "../figures"))\npipe = sdexplore.load_pipeline(MODEL)',
    'run = sdexplore.trace(pipe, "a cat", seed=1, num_inference_steps=2)\n'
    "fig = plot_denoising(denoising_previews(run))\n"
    'save_figure(fig, FIGURES / "aa_strip.png", run=run)\nfig',
]
BROKEN = ["x = 1", 'raise ValueError("this notebook is broken on purpose")']


def _notebook(folder: Path, name: str, sources: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def test_figures_runs_the_notebooks_and_stores_them_with_outputs(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    good, broken = _notebook(folder, "aa_good", GOOD), _notebook(folder, "bb_broken", BROKEN)

    assert main(["figures", "--notebooks", str(folder), "--model", "tiny", "--only", "aa"]) == 0
    record = read_parameters(tmp_path / "figures" / "aa_strip.png")
    assert record["seed"] == 1 and record["num_inference_steps"] == 2
    stored = nbformat.read(good, as_version=4)
    assert stored.metadata["sdexplore"]["code_hash"] == code_hash(stored)
    assert stored.metadata["sdexplore"]["version"] == sdexplore.__version__
    assert any("image/png" in o.get("data", {}) for o in stored.cells[1].outputs)  # the figure as a picture
    assert "1 figures in" in capsys.readouterr().out

    before = broken.read_bytes()
    assert main(["figures", "--notebooks", str(folder), "--model", "tiny", "--only", "bb_broken",
                 "--out", str(tmp_path / "elsewhere")]) == 1
    line = one_error_line(capsys)
    assert "bb_broken.ipynb failed" in line and "broken on purpose" in line
    assert broken.read_bytes() == before  # a failed run leaves the notebook as it was
