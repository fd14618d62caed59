"""Driving a notebook in JupyterLab as a person does, and reading what the page shows (Playwright's sync API).

Every query reads the DOM JupyterLab rendered: prompts ``[n]:``, output areas, ``img`` elements, ipywidgets'
sliders (noUiSlider handles with role=slider), labels. Nothing asks the kernel what it computed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from playwright.sync_api import Locator, Page

EXECUTED_PROMPT = re.compile(r"^\[\d+\]:$")
STDERR = "application/vnd.jupyter.stderr"

# One entry per cell of the notebook, in order: its prompt and, per output, the mime type, text and images shown.
READ_CELLS_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')]
  .map((cell, index) => ({
    index,
    code: cell.classList.contains('jp-CodeCell'),
    prompt: (cell.querySelector('.jp-InputArea-prompt')?.textContent || '').trim(),
    outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(out => ({
      mime: out.dataset.mimeType || out.querySelector('[data-mime-type]')?.dataset.mimeType || '',
      text: (out.innerText || '').slice(0, 3000),
      images: out.querySelectorAll('img').length,
      widget: out.querySelector('.jupyter-widgets') !== null,
    })),
  }))"""

# sha256 of the bytes behind each <img> of an element (blob: or data: URLs are fetched in the page).
IMAGE_DIGESTS_JS = """async (element) => Promise.all([...element.querySelectorAll('img')].map(async img => {
  if (!img.src) return 'no-src';
  const bytes = await (await fetch(img.src)).arrayBuffer();
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('') + ':' + bytes.byteLength;
}))"""

# Texts a widget shows besides its controls: Label and HTML widgets (captions, messages).
CAPTIONS_JS = """(element) => [...element.querySelectorAll('div.widget-label, .widget-html-content')]
  .map(node => node.innerText.trim()).filter(text => text.length > 0)"""


@dataclass
class Output:
    mime: str
    text: str
    images: int
    widget: bool


@dataclass
class Cell:
    index: int
    code: bool
    prompt: str
    outputs: list[Output] = field(default_factory=list)

    @property
    def executed(self) -> bool:
        return bool(EXECUTED_PROMPT.match(self.prompt))

    @property
    def images(self) -> int:
        return sum(o.images for o in self.outputs)

    def stderr_texts(self) -> list[str]:
        return [o.text for o in self.outputs if o.mime == STDERR]


def read_cells(page: Page) -> list[Cell]:
    return [Cell(c["index"], c["code"], c["prompt"], [Output(**o) for o in c["outputs"]])
            for c in page.evaluate(READ_CELLS_JS)]


def kernel_status(page: Page) -> str:
    """The notebook's execution indicator: 'idle', 'busy', 'starting', ... ('' while not shown)."""
    indicator = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator").first
    return (indicator.get_attribute("data-status") or "") if indicator.count() else ""


def accept_kernel_choice(page: Page) -> bool:
    """Answer JupyterLab's 'Select Kernel' dialog with its preselected kernel (the notebook's Python 3)."""
    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    if not dialog.count():
        return False
    dialog.first.locator(".jp-mod-accept").click()
    return True


def open_notebook(page: Page, url: str, timeout_s: float = 120, settle_s: float = 2.0) -> None:
    """Open a notebook URL, accept the kernel choice if asked, wait for an idle kernel; hide the file browser."""
    page.goto(url)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
    deadline, idle_since = time.monotonic() + timeout_s, None
    while idle_since is None or time.monotonic() - idle_since < settle_s:
        accepted = accept_kernel_choice(page)
        idle = kernel_status(page) == "idle" and not accepted
        idle_since = (idle_since or time.monotonic()) if idle else None
        if time.monotonic() > deadline:
            raise TimeoutError(f"the notebook's kernel is not idle after {timeout_s:.0f} s "
                               f"(status {kernel_status(page)!r})")
        time.sleep(0.25)
    current_left_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current_left_tab.count():
        current_left_tab.first.click()  # collapse the file browser: more room for the notebook


def menu(page: Page, menu_name: str, item: str) -> None:
    """Click ``menu_name`` in the menu bar, then ``item`` in the menu it opens."""
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(f"^{re.escape(menu_name)}$")).first.click()
    page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(f"^{re.escape(item)}$")).first.click()


def clear_all_outputs(page: Page, timeout_s: float = 15) -> None:
    """Edit ▸ Clear Outputs of All Cells: a notebook stored with its outputs shows no stale ``[n]:`` any more."""
    menu(page, "Edit", "Clear Outputs of All Cells")
    deadline = time.monotonic() + timeout_s
    while any(c.executed or c.outputs for c in read_cells(page) if c.code):
        if time.monotonic() > deadline:
            raise AssertionError("Edit ▸ Clear Outputs of All Cells left outputs or execution counts")
        time.sleep(0.25)


def run_all_cells(page: Page, attempts: int = 3, start_timeout_s: float = 15) -> None:
    """Clear the stored outputs, then Run ▸ Run All Cells from the menu bar; clicked again if no cell starts."""
    accept_kernel_choice(page)
    clear_all_outputs(page)
    for _ in range(attempts):
        accept_kernel_choice(page)
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            raise AssertionError(f"a dialog is in the way of Run All: {dialog.first.inner_text()!r}")
        menu(page, "Run", "Run All Cells")
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if any(c.prompt == "[*]:" or c.executed for c in read_cells(page) if c.code):
                return
            time.sleep(0.5)
    raise AssertionError(f"Run ▸ Run All Cells started no cell ({attempts} tries)")


def wait_until_executed(page: Page, code_cells: int, timeout_s: float, settle_s: float = 2.0) -> list[Cell]:
    """Wait until all ``code_cells`` code cells show ``[n]:`` and the kernel is idle; return the cells as shown.

    Raises as soon as the kernel is idle with cells left unrun (a cell failed and Run All stopped there),
    or when ``timeout_s`` passes, naming the cells that have not run.
    """
    deadline, idle_since = time.monotonic() + timeout_s, None
    while True:
        cells, status = read_cells(page), kernel_status(page)
        code = [c for c in cells if c.code]
        if len(code) != code_cells:
            raise AssertionError(f"the page shows {len(code)} code cells, the notebook has {code_cells}")
        waiting = [c for c in code if not c.executed]
        running = [c for c in code if c.prompt == "[*]:"]
        idle_since = (idle_since or time.monotonic()) if status == "idle" and not running else None
        if idle_since is not None and time.monotonic() - idle_since >= settle_s:
            if not waiting:
                return read_cells(page)
            if len(waiting) < len(code):  # some ran, the rest never will
                raise AssertionError(f"Run All stopped: cells {[c.index for c in waiting]} did not run; "
                                     f"stderr shown: {[t for c in cells for t in c.stderr_texts()][-3:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f} s cells {[c.index for c in waiting]} have not run "
                               f"(kernel {status!r}, running {[c.index for c in running]})")
        time.sleep(1.0)


def widget_outputs(page: Page) -> list[Locator]:
    """Every output area that shows a widget with a slider, in page order."""
    outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output:has(.jupyter-widgets)")
    return [outputs.nth(i) for i in range(outputs.count()) if outputs.nth(i).locator('[role="slider"]').count()]


def enabled_sliders(output: Locator) -> list[Locator]:
    """The slider handles a person can move (not inside a disabled slider widget)."""
    handles = output.locator('.widget-slider [role="slider"], .jupyter-widgets [role="slider"]')
    return [handles.nth(i) for i in range(handles.count())
            if not handles.nth(i).evaluate("h => h.closest('[disabled], .mod-disabled') !== null")]


def image_digests(output: Locator) -> list[str]:
    return output.evaluate(IMAGE_DIGESTS_JS)


def captions(output: Locator) -> list[str]:
    return output.evaluate(CAPTIONS_JS)


def nudge(handle: Locator) -> tuple[str, str]:
    """Move a slider one step with the keyboard (right, or left when already at its maximum).

    Returns its value before and after, as the handle announces it (aria-valuenow / aria-valuetext).
    """
    def value() -> str:
        return handle.get_attribute("aria-valuetext") or handle.get_attribute("aria-valuenow") or ""

    before = value()
    handle.scroll_into_view_if_needed()
    handle.focus()
    handle.press("ArrowRight")
    if value() == before:
        handle.press("ArrowLeft")
    return before, value()


def wait_for_change(read, before, timeout_s: float, poll_s: float = 0.25):
    """Poll ``read()`` until it differs from ``before``; return the new value (or the last one read on timeout)."""
    deadline, now = time.monotonic() + timeout_s, read()
    while now == before and time.monotonic() < deadline:
        time.sleep(poll_s)
        now = read()
    return now


def screenshot_whole_notebook(page: Page, path) -> None:
    """Save a picture of the whole notebook: scrolled to the top, the viewport grown to the notebook's height."""
    width = page.viewport_size["width"] if page.viewport_size else 1280
    scroller = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer").first
    height = scroller.evaluate("n => { n.scrollTop = 0; return n.scrollHeight; }")
    chrome = page.evaluate("() => window.innerHeight") - scroller.evaluate("n => n.clientHeight")
    page.set_viewport_size({"width": width, "height": min(max(height + chrome, 800), 16000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
