"""A results cache shared by the notebooks and their claims tests, so a sweep is computed once per test run.

Off unless the environment variable ``SDEXPLORE_CACHE`` names a folder. The test suite sets it to a fresh
folder for each run (``tests/conftest.py``); the kernels that execute the notebooks inherit it, so a sweep
that a notebook and its claims test both need is computed by whichever runs first and read by the other.
A user running a notebook by hand computes everything (nothing stale can be read).

    pictures = cached("04_strength_sweep", lambda: {"pictures": compute_pictures()},
                      model=MODEL, prompt=PROMPT, seeds=SEEDS, strengths=STRENGTHS)["pictures"]

Entries are safetensors files (tensors only, no pickle) named by ``name`` and a digest of the key; the
full key is stored inside and compared on reading, so two keys never share an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .capture.storage import load_tensors, save_tensors

CACHE_ENV = "SDEXPLORE_CACHE"


def cache_folder() -> Path | None:
    """The folder named by ``SDEXPLORE_CACHE``, or None when caching is off."""
    folder = os.environ.get(CACHE_ENV)
    return Path(folder) if folder else None


def cached(name: str, compute: Callable[[], dict[str, torch.Tensor]], **key) -> dict[str, torch.Tensor]:
    """``compute()`` once per cache folder for this ``name`` and ``key``; its tensors from the cache after.

    name: letters, digits, '_' and '-' (the file's stem). key: JSON-serialisable values that decide the
    result (model, prompt, seeds, steps, ...); anything they do not name must not change the result.
    """
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"cache name must be letters, digits, '_' or '-', got {name!r}")
    key_json = json.dumps(key, sort_keys=True, default=repr)
    folder = cache_folder()
    if folder is None:
        return _checked(name, compute())
    path = folder / f"{name}-{hashlib.sha256(key_json.encode()).hexdigest()[:16]}.safetensors"
    if path.is_file():
        tensors, metadata = load_tensors(path)
        if metadata.get("key") == key_json:
            return tensors
    tensors = _checked(name, compute())
    save_tensors(path, tensors, {"name": name, "key": key_json})
    return tensors


def _checked(name: str, tensors) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError(f"cached({name!r}, compute): compute must return a dict of torch tensors")
    return tensors
