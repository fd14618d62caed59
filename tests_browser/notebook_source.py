"""What a notebook's source promises a reader: does it have widgets, which of its cells draw a figure.

Read from the .ipynb itself (nbformat), so the browser test follows the notebooks as they grow: no cell indices
are written into the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SCREENSHOTS = NOTEBOOKS_DIR.parent / "browser-screenshots"  # git-ignored: what the browser test saw, for a person

# A code cell that imports sdexplore's widgets or builds one (SamplingExplorer(...), StepScrubber(...), a slider ...).
WIDGET_PATTERN = re.compile(r"sdexplore\.widgets|\b\w*(Explorer|Slider|Scrubber|Picker)\(")
# A code cell that makes a figure for the reader: it saves one (fig.savefig / save_figure) or ends on the figure.
FIGURE_PATTERN = re.compile(r"\bsave_?fig(ure)?\(|\bplt\.show\(")
LAST_LINE_IS_FIGURE = re.compile(r"^\w*fig\w*$")


@dataclass(frozen=True)
class CodeCell:
    index: int  # position among all the notebook's cells (markdown included), as JupyterLab lays them out
    source: str

    @property
    def first_line(self) -> str:
        return next((line for line in self.source.splitlines() if line.strip()), "")

    @property
    def draws_figure(self) -> bool:
        lines = [line for line in self.source.splitlines() if line.strip()]
        return bool(FIGURE_PATTERN.search(self.source) or (lines and LAST_LINE_IS_FIGURE.match(lines[-1].strip())))

    @property
    def has_widget(self) -> bool:
        return bool(WIDGET_PATTERN.search(self.source))


def code_cells(path: Path) -> list[CodeCell]:
    notebook = nbformat.read(path, as_version=4)
    return [CodeCell(i, cell.source) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def widget_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks with at least one widget cell, sorted by name."""
    return [path for path in sorted(folder.glob("*.ipynb")) if any(c.has_widget for c in code_cells(path))]
