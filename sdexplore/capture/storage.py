"""Save and load named tensors plus JSON metadata: one safetensors file, no pickle.

The JSON travels in the safetensors header, next to a SHA-256 of every tensor's bytes, so a
truncated or tampered file is refused with a clear error instead of loading wrong numbers.
Writes go to a temporary file in the same folder and are renamed into place, so a failed or
interrupted save never damages a file saved before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "sdexplore.trace"
FORMAT_VERSION = 1


class TraceFileError(ValueError):
    """A file that is not a readable sdexplore trace (missing, truncated, tampered, other format)."""


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Atomically write ``tensors`` and JSON-serialisable ``metadata`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "metadata": json.dumps(metadata, allow_nan=True),
        "sha256": _digest(tensors),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by ``save_tensors``; TraceFileError says what is wrong if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"no trace file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise TraceFileError(f"{path} is not a readable trace file (truncated or corrupted?): {error}") from error
    if header.get("format") != FORMAT:
        raise TraceFileError(f"{path} is a safetensors file but not an sdexplore trace (no '{FORMAT}' header)")
    if int(header.get("format_version", -1)) > FORMAT_VERSION:
        raise TraceFileError(f"{path} was written by a newer sdexplore (format {header['format_version']})")
    if header.get("sha256") != _digest(tensors):
        raise TraceFileError(f"{path} has been modified since it was saved: its tensors do not match their checksum")
    try:
        metadata = json.loads(header["metadata"])
    except (KeyError, json.JSONDecodeError) as error:
        raise TraceFileError(f"{path} has unreadable metadata: {error}") from error
    return tensors, metadata


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
