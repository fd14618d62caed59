"""Save and load named tensors plus JSON metadata: one safetensors file, no pickle.

The JSON travels in the safetensors header, next to one SHA-256 over every tensor's bytes *and*
the metadata (seed, prompt, params, token words), so a truncated or tampered file is refused
with a clear error instead of loading wrong numbers or a wrong seed. Format 1 files (whose
checksum covered the tensors only) still load, with an UnsealedMetadataWarning.
Writes go to a temporary file in the same folder and are renamed into place, so a failed or
interrupted save never damages a file saved before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "sdexplore.trace"
FORMAT_VERSION = 2  # 1: checksum over the tensors only; 2: over the tensors and the metadata
READABLE_VERSIONS = (1, 2)


class TraceFileError(ValueError):
    """A file that is not a readable sdexplore trace (missing, truncated, tampered, other format)."""


class UnsealedMetadataWarning(UserWarning):
    """A trace file of format 1: its tensors are checked, its metadata (seed, prompt, params) is not."""


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Atomically write ``tensors`` and JSON-serialisable ``metadata`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "metadata": json.dumps(metadata, allow_nan=True)}
    header["sha256"] = _sealed_digest(tensors, header)
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
    version = _format_version(path, header)
    if not isinstance(header.get("metadata"), str):
        raise TraceFileError(f"{path} has no metadata in its header: damaged or not written by sdexplore")
    expected = _digest(tensors) if version == 1 else _sealed_digest(tensors, header)
    if header.get("sha256") != expected:
        raise TraceFileError(f"{path} has been modified since it was saved: its tensors"
                             f"{'' if version == 1 else ' or metadata'} do not match their checksum")
    if version == 1:
        warnings.warn(f"{path} was written by an older sdexplore (trace format 1): its tensors are checked but its "
                      "metadata (seed, prompt, params, token words) was not sealed by the checksum; save it again "
                      "to seal it", UnsealedMetadataWarning, stacklevel=3)
    try:
        metadata = json.loads(header["metadata"])
    except (KeyError, json.JSONDecodeError) as error:
        raise TraceFileError(f"{path} has unreadable metadata: {error}") from error
    return tensors, metadata


def _format_version(path: Path, header: dict) -> int:
    text = header.get("format_version", "")
    if not (text.isascii() and text.isdigit()):
        raise TraceFileError(f"{path} has no valid trace format version ({text!r}): damaged header")
    version = int(text)
    if version > FORMAT_VERSION:
        raise TraceFileError(f"{path} was written by a newer sdexplore (trace format {version}; this one reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    if version not in READABLE_VERSIONS:
        raise TraceFileError(f"{path} has an unknown trace format version {version}: damaged header")
    return version


def _sealed_digest(tensors: dict[str, torch.Tensor], header: dict) -> str:
    """SHA-256 over the tensors (as format 1) and the header fields that carry meaning."""
    digest = hashlib.sha256(_digest(tensors).encode())
    for key in ("format", "format_version", "metadata"):
        digest.update(f"|{key}|{len(header[key])}|".encode() + header[key].encode("utf-8"))
    return digest.hexdigest()


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """Format 1's checksum: SHA-256 over every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
