"""``run_sweep``: every point of a grid, on this machine or on Ray, resumable from a folder, as one table.

    from sdexplore.sweep import Grid, run_sweep
    grid = Grid(seed=range(7), strength=[0.6, 0.8, 1.0], prompt="cat, sea", image=drawing, num_inference_steps=25)
    result = run_sweep("toy", grid, keep=["images"], folder="sweeps/strength")      # in this process
    result = run_sweep("toy", grid, keep=["images"], backend="ray", num_gpus=1)     # on a Ray cluster

The same call gives the same results either way (same points, same batches, same CPU thread count).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from tqdm.auto import tqdm

from .grid import Grid
from .points import batch_key, check_keep, describe_keep
from .result import SweepResult
from .spec import PipelineSpec, describe_loaded
from .store import SweepStore

BACKENDS = ("local", "ray")


def run_sweep(model, grid: Grid, *, keep=None, folder: str | os.PathLike | None = None, backend: str = "local",
              batch_size: int = 1, threads: int | None = None, num_gpus: float | None = None,
              progress: bool = True) -> SweepResult:
    """Run every point of ``grid`` not yet in ``folder``; return all points as a SweepResult.

    model: a name or folder ("toy", "tiny", a hub id), a PipelineSpec, or (local backend only) a loaded pipeline.
    keep: None (each point's whole Trace, column "trace"), a list of Trace fields (e.g. ["images", "latents"]),
        or a function Trace -> {name: tensor} keeping only what the figure needs.
    folder: where points are written as they finish (safetensors + JSON); a later call with the same spec
        computes only the missing points. None: nothing is kept on disk.
    backend: "local" (this process) or "ray" (one task per batch; ``pip install sdexplore[ray]``).
    batch_size: up to this many points that differ only in seed run as one pipeline call (one generator each).
        1 (default) gives exactly what ``sdexplore.trace`` gives; larger batches are faster and match it to
        float precision (the UNet's batched kernels add in another order), not bit for bit.
    threads: CPU threads per batch (torch.set_num_threads); the bits of CPU results depend on it.
    num_gpus: GPUs each Ray task asks for (Ray only).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a sdexplore.sweep.Grid, got {type(grid).__name__}")
    keep = check_keep(keep)
    _check_options(backend, batch_size, threads, num_gpus)
    pipe, spec = _pipeline_or_spec(model, backend)
    record = {"model": spec.describe() if spec is not None else describe_loaded(pipe), "grid": grid.spec(),
              "keep": describe_keep(keep), "batch_size": batch_size}
    with _folder(folder) as where:
        store = SweepStore(where, record)
        done = store.done(len(grid))
        batches = make_batches(grid, [i for i in range(len(grid)) if i not in done], batch_size)
        with tqdm(total=len(grid), initial=len(done), disable=not progress, desc="sweep", unit="point") as bar:
            def finished(indices: list[int], files: list[bytes]) -> None:
                for index, data in zip(indices, files):
                    store.write(index, data)
                bar.update(len(indices))

            if backend == "ray":
                from .ray_backend import run_ray

                run_ray(spec, grid, batches, keep, threads=threads, num_gpus=num_gpus, on_done=finished)
            elif batches:
                from .local import run_local

                run_local(pipe if pipe is not None else spec.load(), grid, batches, keep, threads=threads,
                          on_done=finished)
        values = [store.read(index, whole_trace=keep is None) for index in range(len(grid))]
    if keep is None:
        columns = {"trace": values}
    else:
        columns = {name: [value[name] for value in values] for name in values[0]}
    return SweepResult(grid.axes, grid.points(), columns)


def make_batches(grid: Grid, indices: list[int], batch_size: int) -> list[list[int]]:
    """``indices`` (grid order) cut into batches of up to ``batch_size`` points that differ only in seed."""
    if batch_size == 1:
        return [[index] for index in indices]
    points = grid.points()
    groups: dict[str, list[int]] = {}
    batches = []
    for index in indices:
        key = batch_key(grid.params(points[index]))
        if key is None:
            batches.append([index])
            continue
        group = groups.setdefault(key, [])
        if not group:
            batches.append(group)
        group.append(index)
        if len(group) == batch_size:
            groups[key] = []
    return batches


def _check_options(backend, batch_size, threads, num_gpus) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    if num_gpus is not None:
        if backend != "ray":
            raise ValueError("num_gpus is what each Ray task asks for: use it with backend='ray' (a local sweep "
                             "runs on the pipeline's own device)")
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or num_gpus < 0:
            raise ValueError(f"num_gpus must be a number >= 0 (fractions share a GPU), got {num_gpus!r}")


def _pipeline_or_spec(model, backend: str):
    """(pipeline, None) for a loaded pipeline, (None, PipelineSpec) for a name, folder or spec."""
    if isinstance(model, PipelineSpec):
        return None, model
    if isinstance(model, (str, os.PathLike)):
        return None, PipelineSpec(os.fspath(model))
    if hasattr(model, "unet") or hasattr(model, "transformer"):
        if backend == "ray":
            raise TypeError("backend='ray' loads the pipeline in each worker: give the model's name or folder "
                            "(or a PipelineSpec), not a loaded pipeline")
        return model, None
    raise TypeError(f"model must be a name or folder ('toy', a hub id), a PipelineSpec or a loaded pipeline, "
                    f"got {type(model).__name__}")


@contextlib.contextmanager
def _folder(folder):
    if folder is not None:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="sdexplore-sweep-") as temporary:
        yield temporary
