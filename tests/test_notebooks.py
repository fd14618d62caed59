"""The notebooks run top to bottom on the toy model as a reader sees them, and the committed ones are current.

Each notebook is executed once, in a scratch copy, the way `sdexplore figures` runs it (sdexplore.notebook):
no errors, every figure drawn as a picture (never the text ``<Figure ...>``), no stderr (no wall of warnings),
and every figure it promises saved through save_figure with its parameters.
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest

import sdexplore
from sdexplore.export import read_parameters
from sdexplore.notebook import code_hash, run_notebooks

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
PROMISE = re.compile(r'save_figure\(fig, FIGURES / "([^"]+\.png)"')


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


def promised_figures(notebook) -> set[str]:
    return {name for cell in notebook.cells if cell.cell_type == "code" for name in PROMISE.findall(cell.source)}


def draws_a_figure(cell) -> bool:
    """A code cell that saves a figure or ends by showing ``fig``."""
    lines = [line for line in cell.source.strip().splitlines() if line.strip()]
    return "save_figure(fig" in cell.source or (bool(lines) and lines[-1].strip() == "fig")


def pictures(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_shows_its_figures_as_pictures_and_saves_them(source, tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    path = Path(shutil.copy(source, folder))
    figures = tmp_path / "figures"
    run_notebooks([path], model="toy", figures=figures, store_outputs=True)
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]

    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    stderr = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"the notebook prints to stderr (warnings?): {stderr}"
    for cell in code:
        as_text = [o for o in cell.outputs if o.get("data", {}).get("text/plain", "").startswith("<Figure")
                   and "image/png" not in o.get("data", {})]
        assert not as_text, f"a figure shows as text, not a picture, in:\n{cell.source}"
        if draws_a_figure(cell):
            assert pictures(cell), f"no picture shown by:\n{cell.source}"

    promised = promised_figures(notebook)
    assert promised, "the notebook saves no figure through save_figure(fig, FIGURES / ...)"
    for name in promised:
        assert (figures / name).stat().st_size > 5_000
        record = read_parameters(figures / name)
        assert record["figure"] == name and record["versions"]["sdexplore"] == sdexplore.__version__
        assert (figures / name).with_suffix(".json").exists()
    assert notebook.metadata["sdexplore"]["code_hash"] == code_hash(notebook)


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_outputs_are_current(source):
    """Committed notebooks carry their outputs (`sdexplore figures` / `make figures` writes them), made by the
    code cells they hold now: the code hash recorded at execution matches the code cells."""
    notebook = nbformat.read(source, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert any(c.outputs for c in code), f"{source.name} has no outputs: run `make figures` (sdexplore figures)"
    recorded = notebook.metadata.get("sdexplore", {})
    assert recorded.get("version"), f"{source.name} records no sdexplore version: run `make figures`"
    assert recorded.get("code_hash") == code_hash(notebook), (
        f"{source.name}'s outputs are older than its code: run `make figures` (sdexplore figures)")
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
