"""Each notebook with widgets, used in a real JupyterLab by headless Chromium as a person would use it.

Open it, Run ▸ Run All Cells, wait for every cell to run; then what a reader sees must hold:
(a) every figure is a picture (no ``<Figure size ...>`` text; an image in every figure cell),
(b) no traceback and no wall of warnings on stderr,
(c) moving each widget's slider (keyboard, on the focused handle) changes the bytes of its picture and its caption.
A full screenshot of each notebook goes to browser-screenshots/ (also when an assertion fails).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from lab_page import (
    captions,
    enabled_sliders,
    image_digests,
    nudge,
    open_notebook,
    read_cells,
    run_all_cells,
    screenshot_whole_notebook,
    wait_for_change,
    wait_until_executed,
    widget_outputs,
)
from notebook_source import SCREENSHOTS, code_cells, widget_notebooks

NOTEBOOKS = widget_notebooks()
RUN_ALL_TIMEOUT_S = float(os.environ.get("SDEXPLORE_BROWSER_RUN_TIMEOUT", 600))
ERROR_LINE = re.compile(r"^\w*(Error|Exception)\b")  # an error output's last line: "ValueError: ..."
PROGRESS_LINE = re.compile(r"\d+%\|.*\||\d+/\d+ \[")  # tqdm: " 40%|████      | 2/5 [00:01<00:02, ...]"
WIDGET_TIMEOUT_S = 120  # a slider move re-runs a pipeline: ~1 s on the toy model, far more on a busy machine


def test_some_notebooks_have_widgets():
    assert NOTEBOOKS, "no notebook builds a widget (sdexplore.widgets), so the browser test would test nothing"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_and_responds_in_jupyterlab(notebook, lab, page):
    SCREENSHOTS.mkdir(exist_ok=True)
    screenshot = SCREENSHOTS / f"{notebook.stem}.png"
    open_notebook(page, lab.url(f"lab/tree/notebooks/{notebook.name}?reset"))
    try:
        run_all_cells(page)
        wait_until_executed(page, len(code_cells(notebook)), timeout_s=RUN_ALL_TIMEOUT_S)
        problems = widget_problems(page, notebook.name)
        cells = read_cells(page)  # after the slider moves: a callback's traceback shows up here too
        problems = figure_problems(cells, notebook) + stderr_problems(cells) + problems
    finally:
        screenshot_whole_notebook(page, screenshot)
        print(f"screenshot: {screenshot}")
    assert not problems, f"{notebook.name} as a reader sees it:\n- " + "\n- ".join(problems)


def figure_problems(cells, notebook: Path) -> list[str]:
    """(a) Figures drawn as pictures: no '<Figure size' text, an image in every cell that makes a figure."""
    source = {c.index: c for c in code_cells(notebook)}
    problems = []
    if len(cells) <= max(source):
        return [f"the page shows {len(cells)} cells, the notebook has at least {max(source) + 1}"]
    for cell in cells:
        for output in cell.outputs:
            if "<Figure size" in output.text:
                problems.append(f"cell {cell.index} shows a figure as text: {output.text.strip()[:120]!r}")
    figure_cells = [c for c in source.values() if c.draws_figure]
    for code in figure_cells:
        if cells[code.index].images == 0:
            problems.append(f"cell {code.index} ({code.first_line[:60]!r}) makes a figure but shows no picture")
    figure_images = sum(o.images for c in cells for o in c.outputs if not o.widget)
    if figure_images < len(figure_cells):
        problems.append(f"{figure_images} pictures outside widgets for {len(figure_cells)} cells that make figures")
    return problems


def stderr_problems(cells) -> list[str]:
    """(b) No traceback and no warning wall: no pink stderr box at all, progress bars (tqdm) aside."""
    problems = []
    for cell in cells:
        for text in cell.stderr_texts():
            last_line = text.strip().splitlines()[-1] if text.strip() else ""
            if "Traceback" in text or ERROR_LINE.match(last_line):
                problems.append(f"cell {cell.index} shows a traceback: {text.strip()[-300:]!r}")
            elif text.strip() and not all(PROGRESS_LINE.search(line) for line in text.strip().splitlines()):
                kind = "warnings" if "warn" in text.lower() else "stderr output"
                problems.append(f"cell {cell.index} shows {kind}: {text.strip()[:300]!r}")
    return problems


def widget_problems(page, name: str) -> list[str]:
    """(c) Every slider of every widget: one keyboard step changes the widget's picture bytes and its caption."""
    outputs = widget_outputs(page)
    if not outputs:
        return [f"{name} builds widgets but the page shows no ipywidgets slider"]
    problems = []
    for number, output in enumerate(outputs):
        sliders = enabled_sliders(output)
        if not sliders or not image_digests(output):
            problems.append(f"widget {number}: {len(sliders)} movable sliders, {len(image_digests(output))} pictures")
            continue
        for handle in sliders:
            problems += slider_problems(f"widget {number}, slider {handle_name(handle)!r}", output, handle)
    return problems


def slider_problems(where: str, output, handle) -> list[str]:
    """Nudge one slider; its widget's pictures and caption must change, then settle before the next move."""
    def state():
        return image_digests(output), captions(output)

    pictures, texts = wait_until_settled(state)
    before, after = nudge(handle)
    if before == after:
        return [f"{where}: the slider did not move with the keyboard (value {before!r})"]
    new_pictures = wait_for_change(lambda: image_digests(output), pictures, WIDGET_TIMEOUT_S)
    new_texts = wait_for_change(lambda: captions(output), texts, 10)
    print(f"{where}: {before} -> {after}; captions {texts} -> {new_texts}")
    problems = []
    if new_pictures == pictures:
        problems.append(f"{where}: {before} -> {after} left the picture's bytes unchanged")
    if new_texts == texts:
        problems.append(f"{where}: {before} -> {after} left the caption unchanged: {texts}")
    return problems


def handle_name(handle) -> str:
    """The slider's description label ('guidance', 'step', 'α')."""
    return handle.evaluate("h => h.closest('.widget-slider')?.querySelector('.widget-label')?.innerText || ''")


def wait_until_settled(read, quiet_s: float = 1.5):
    """Read until two reads ``quiet_s`` apart agree (a run still drawing its progress is left to finish)."""
    previous = read()
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now == previous:
            return now
        previous = now
    return previous
