"""The Ray backend: one Ray task per batch of points; each worker process loads the pipeline once.

Ray is an optional extra (``pip install sdexplore[ray]``). Without a running Ray, ``ray.init()`` starts a
local one; to use an existing cluster, call ``ray.init(address="ray://head:10001")`` (or set RAY_ADDRESS)
before the sweep. Workers need sdexplore and the model's weights on their machines; results come back as
the bytes of sealed safetensors files, which the caller writes into the sweep's folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .spec import PipelineSpec

_REMOTE = None  # the Ray remote function, made on first use (Ray is imported only then)


def import_ray():
    """The ray module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray, an optional extra: pip install sdexplore[ray] "
                          "(or pip install ray)") from error
    return ray


def run_ray(spec: PipelineSpec, grid, batches: list[list[int]], keep, *, threads: int | None,
            num_gpus: float | None, on_done: Callable[[list[int], list[bytes]], None]) -> None:
    """Submit one task per batch (``num_gpus`` GPUs and ``threads`` CPUs each, default 1), hand each result to
    ``on_done`` as it arrives."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS, if set, names an existing cluster
    if num_gpus and spec.device is None:
        spec = dataclasses.replace(spec, device="cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs
    points = grid.points()
    remote = _remote_function(ray).options(num_cpus=threads or 1, num_gpus=num_gpus or 0)
    grid_ref = ray.put(grid)
    pending = {remote.remote(spec, grid_ref, [points[i] for i in batch], keep, threads or 1): batch
               for batch in batches}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            on_done(pending.pop(ready[0]), ray.get(ready[0]))
    finally:
        for ref in pending:  # an error or an interrupt: stop what was not needed
            ray.cancel(ref)


def _remote_function(ray):
    global _REMOTE
    if _REMOTE is None:
        # max_calls=0: the worker process is kept between tasks (Ray recycles GPU workers after each task by
        # default), so the pipeline it loaded serves every later batch
        _REMOTE = ray.remote(max_calls=0)(run_batch)
    return _REMOTE


def run_batch(spec: PipelineSpec, grid, points: list[dict], keep, threads: int) -> list[bytes]:
    """In a worker: the file bytes of each point, on this process's pipeline of ``spec``."""
    from .local import torch_threads
    from .points import run_points
    from .spec import loaded

    with torch_threads(threads):
        return run_points(loaded(spec), grid, points, keep)
