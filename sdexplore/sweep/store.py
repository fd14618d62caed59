"""A sweep's folder: what it is a sweep of (``sweep.json``) and one sealed safetensors file per finished point.

    folder/sweep.json                  {"format": "sdexplore.sweep", "spec": {model, grid, keep, batch_size}}
    folder/points/000012.safetensors   point 12 in grid order (a Trace, or the kept tensors and the point)

Every file is written atomically (a temporary file renamed into place), so an interrupted sweep leaves only
whole points behind, and running it again computes the missing ones. A folder made for another spec is
refused instead of being mixed. No pickle: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..capture.storage import load_tensors
from ..capture.trace import Trace
from ..export import atomic_write

FORMAT = "sdexplore.sweep"
FORMAT_VERSION = 1


class SweepFolderError(ValueError):
    """The folder holds another sweep (another model, grid, keep or batch size), or is not a sweep folder."""


class SweepStore:
    """The folder of one sweep; ``spec`` (JSON) decides which results belong in it."""

    def __init__(self, folder: str | os.PathLike, spec: dict):
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"folder must be a path (str or pathlib.Path), got {type(folder).__name__}")
        self.folder = Path(folder)
        self.spec = json.loads(json.dumps(spec))  # as it reads back from the file (tuples become lists)
        self.points = self.folder / "points"
        self._open()

    def _open(self) -> None:
        record = self.folder / "sweep.json"
        if record.exists():
            self._check_same(record)
        else:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise SweepFolderError(f"{self.folder} is not empty and has no sweep.json: not a sweep folder; "
                                       "give an empty or new folder")
            self.folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "spec": self.spec}, indent=2)
            atomic_write(record, lambda handle: handle.write(text.encode()))
        self.points.mkdir(exist_ok=True)

    def _check_same(self, record: Path) -> None:
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError) as error:
            raise SweepFolderError(f"{record} is not readable JSON: {error}") from error
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise SweepFolderError(f"{record} is not an sdexplore sweep record (format {FORMAT!r})")
        if saved.get("spec") != self.spec:
            differences = "; ".join(_differences(saved.get("spec"), self.spec)[:5])
            raise SweepFolderError(
                f"{self.folder} holds a different sweep ({differences}); its points would be mixed with this "
                "one's. Give another folder, or delete this one to start over")

    def path(self, index: int) -> Path:
        return self.points / f"{index:06d}.safetensors"

    def done(self, count: int) -> set[int]:
        """The indices among 0..count-1 whose file is there (each was written whole, atomically)."""
        return {index for index in range(count) if self.path(index).is_file()}

    def write(self, index: int, data: bytes) -> None:
        """Store the file bytes of point ``index`` (as a worker returned them), atomically."""
        atomic_write(self.path(index), lambda handle: handle.write(data))

    def read(self, index: int, whole_trace: bool):
        """A Trace (whole_trace) or the dict of kept tensors of point ``index``."""
        if whole_trace:
            return Trace.load(self.path(index))
        tensors, _ = load_tensors(self.path(index))
        return tensors


def _differences(saved, wanted, where: str = "spec") -> list[str]:
    """Readable lines naming where two specs differ: "spec.grid.axes.seed: [0, 1] in the folder, [0, 2] here"."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        lines = []
        for key in sorted(set(saved) | set(wanted), key=str):
            lines += _differences(saved.get(key), wanted.get(key), f"{where}.{key}")
        return lines
    if saved == wanted:
        return []
    return [f"{where}: {json.dumps(saved)[:80]} in the folder, {json.dumps(wanted)[:80]} here"]
