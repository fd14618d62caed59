"""The local backend: every batch of points in this process, on one pipeline loaded once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .points import run_points


def run_local(pipe, grid, batches: list[list[int]], keep, *, threads: int | None,
              on_done: Callable[[list[int], list[bytes]], None]) -> None:
    """Run ``batches`` (lists of point indices, grid order) one after the other on ``pipe``."""
    points = grid.points()
    with torch_threads(threads):
        for batch in batches:
            on_done(batch, run_points(pipe, grid, [points[i] for i in batch], keep))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """While active, torch uses ``threads`` CPU threads (None: leave as is). On the CPU the bits of a result
    depend on it (sums split across threads add in another order), so Ray workers use the same number."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
