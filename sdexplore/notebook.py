"""Notebooks: figures show as pictures in Jupyter, and ``sdexplore figures`` runs every notebook.

The plot functions build ``matplotlib.figure.Figure`` objects without pyplot (nothing global, nothing shown
twice), and Jupyter draws a Figure that pyplot does not manage as the text ``<Figure size ... with N Axes>``.
``show_figures_as_pictures()`` registers a PNG formatter for every Figure with IPython's display system,
so a cell ending in ``fig`` shows the picture. ``sdexplore.plot`` calls it on import; outside IPython it
does nothing.

``run_notebooks`` executes notebooks with nbclient (the notebooks read SDEXPLORE_MODEL and SDEXPLORE_FIGURES)
and can store them back with their outputs, recording the sdexplore version and a hash of their code cells,
so a test can tell whether committed outputs are current.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

INLINE_DPI = 80  # small enough for notebooks committed with their outputs, sharp enough to read


def figure_png(figure, dpi: int = INLINE_DPI) -> bytes:
    """The PNG bytes of ``figure`` as a notebook shows it: tight bounding box, ``dpi``, 256 colours.

    The palette keeps notebooks committed with their outputs small (about half the bytes of full colour).
    """
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def show_figures_as_pictures(shell=None, dpi: int = INLINE_DPI) -> bool:
    """Register ``figure_png`` as the image/png formatter of matplotlib Figures in the running IPython.

    Returns True when registered, False outside IPython (IPython is never imported by this function).
    """
    if shell is None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    from matplotlib.figure import Figure

    formatter = shell.display_formatter.formatters["image/png"]
    formatter.for_type(Figure, lambda figure: figure_png(figure, dpi))
    formatter.enabled = True
    return True


# --- running the notebooks: `sdexplore figures` ------------------------------------------------

class NotebookSelectionError(ValueError):
    """No notebooks folder, or a requested notebook that is not there."""


def default_notebooks_dir() -> Path:
    """The repository's notebooks/ folder (beside the sdexplore package in a source checkout)."""
    folder = Path(__file__).resolve().parent.parent / "notebooks"
    if not folder.is_dir():
        raise NotebookSelectionError(f"no notebooks folder at {folder}: the notebooks live in a source checkout of "
                                     "sdexplore; run from one, or pass --notebooks DIR")
    return folder


def select_notebooks(folder: str | os.PathLike, only: list[str] | None = None) -> list[Path]:
    """The notebooks of ``folder`` in name order, or those ``only`` names (a stem, a file name or a prefix)."""
    folder = Path(folder)
    notebooks = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not notebooks:
        raise NotebookSelectionError(f"no notebooks (*.ipynb) in {folder}")
    if not only:
        return notebooks
    chosen = []
    for name in only:
        stem = name.removesuffix(".ipynb")
        matches = [p for p in notebooks if p.stem == stem] or [p for p in notebooks if p.stem.startswith(stem)]
        if not matches:
            raise NotebookSelectionError(f"--only: no notebook named {name!r}; choose from: "
                                         + ", ".join(p.stem for p in notebooks))
        chosen += [p for p in matches if p not in chosen]
    return sorted(chosen)


def code_hash(notebook) -> str:
    """SHA-256 of a notebook's code cells (their source, in order): outputs are current if it is unchanged."""
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def run_notebooks(paths: list[Path], *, model: str, figures: Path, store_outputs: bool, timeout: int = 900,
                  kernel_log: bool = False) -> list[Path]:
    """Execute each notebook top to bottom (nbclient; tqdm bar over notebooks) with MODEL and FIGURES set.

    The kernels get SDEXPLORE_MODEL=model and SDEXPLORE_FIGURES=figures, and import this sdexplore.
    store_outputs: write each notebook back with its outputs and ``metadata["sdexplore"]`` (version, model,
    code hash). A notebook that fails raises RuntimeError naming it and the error; it is not written back.
    Returns the figure files (.png) written.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    from . import __version__

    figures = Path(figures).resolve()
    figures.mkdir(parents=True, exist_ok=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, SDEXPLORE_MODEL=str(model), SDEXPLORE_FIGURES=str(figures),
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    before = _snapshot(figures)
    bar = tqdm(paths, desc="notebooks", unit="notebook", file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.stem)
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env=env, **({} if kernel_log else {"stderr": subprocess.DEVNULL}))
        except CellExecutionError as error:
            raise RuntimeError(f"notebook {path.name} failed: {error.ename}: {error.evalue}") from error
        if store_outputs:
            notebook.metadata["sdexplore"] = {"version": __version__, "model": str(model),
                                              "code_hash": code_hash(notebook)}
            _write_notebook(notebook, path)
    after = _snapshot(figures)
    return sorted(figures / name for name, stamp in after.items() if before.get(name) != stamp)


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def _write_notebook(notebook, path: Path) -> None:
    """Atomically: a notebook is never left half-written (the text nbformat.write would write)."""
    import nbformat

    from .export import atomic_write

    text = nbformat.writes(notebook)
    text += "" if text.endswith("\n") else "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
