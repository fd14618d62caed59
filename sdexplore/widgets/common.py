"""What every widget shares: a size-bounded LRU of results, PNG bytes for ``ipywidgets.Image``, the error area,
and the base class that gives each widget ``.widget`` (its ipywidgets root) and notebook display."""

from __future__ import annotations

import html
import io
from collections import OrderedDict

import ipywidgets as widgets
from PIL import Image


class LRU:
    """A dict of at most ``maxsize`` entries; reading or writing an entry makes it the newest, the oldest goes first.

    ``hits`` and ``misses`` count ``get`` calls that found / did not find their key.
    """

    def __init__(self, maxsize: int):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, key, default=None):
        if key not in self._entries:
            self.misses += 1
            return default
        self.hits += 1
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key, value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def png_bytes(picture: Image.Image) -> bytes:
    """The PNG file of a PIL picture, for ``ipywidgets.Image(format="png").value``."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def picture_box(width: int) -> widgets.Image:
    """An empty PNG picture shown ``width`` pixels wide (the browser scales small pictures up)."""
    return widgets.Image(format="png", width=width)


def error_html(error: BaseException | str) -> str:
    """The error area's HTML: the message in red, escaped; the exception's type named."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return f'<span style="color:#b00020"><b>not run</b> — {html.escape(text)}</span>'


class Explorer:
    """Base of the sdexplore widgets: ``self.widget`` is the ipywidgets root; a notebook cell shows it."""

    widget: widgets.Widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
