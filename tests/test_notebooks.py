"""The notebooks run top to bottom on the toy model and write their figures (executed in a scratch copy)."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

SAVE_CALLS = ("savefig(FIGURES /", "save_figure(fig, FIGURES /")  # the figure's file name is the first "..."
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_saves_its_figures(source, tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook_path = shutil.copy(source, folder)
    notebook = nbformat.read(notebook_path, as_version=4)
    resources = {"metadata": {"path": str(folder)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    saved = {p.name for p in (tmp_path / "figures").glob("*.png")}
    promised = {line.split('"')[1] for c in notebook.cells if c.cell_type == "code"
                for line in c.source.splitlines() if any(call in line for call in SAVE_CALLS)}
    assert promised and promised <= saved
    for name in promised:
        assert (tmp_path / "figures" / name).stat().st_size > 5_000
