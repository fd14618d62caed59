"""Run the points of a sweep on a loaded pipeline: one point at a time, or several seeds in one pipeline call.

Every point comes back as the bytes of one sealed sdexplore safetensors file (``Trace.save`` for a whole trace,
``save_tensors`` for what ``keep`` chose), the same on every backend: a worker on another machine returns bytes,
the caller writes them into the sweep's folder.

Shapes: N steps, B pictures in one call, C latent channels, h x w latent, H x W pictures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..capture.storage import save_tensors
from ..capture.trace import Trace
from ..export import json_safe
from ..models import make_scheduler
from .grid import describe_value

# what keep=[...] may name: the Trace's tensors, and its pictures as uint8 [B, H, W, 3]
KEEPABLE = ("images", *Trace._tensor_names())
_STEP_FIELDS = ("latents", "x0", "noise_pred", "noise_pred_text", "noise_pred_uncond", "scheduler_x0")  # [N, B, ...]
_BATCH_FIRST_FIELDS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",  # [B, ...]
                       "negative_pooled_prompt_embeds", "time_ids", "negative_time_ids")
_NOT_BATCHED = ("alpha", "attention", "num_images_per_prompt", "clip_skip", "latents", "prompt_embeds",
                "negative_prompt_embeds", "callback_on_step_end", "generator")


def check_keep(keep) -> str | list[str] | Callable:
    """None (the whole Trace), a list of field names from ``KEEPABLE``, or a function Trace -> dict of tensors."""
    if keep is None or callable(keep):
        return keep
    if isinstance(keep, str):
        keep = [keep]
    if not isinstance(keep, (list, tuple)) or not keep:
        raise TypeError(f"keep must be None (whole traces), a list of field names or a function run -> "
                        f"{{name: tensor}}, got {keep!r}")
    unknown = [name for name in keep if name not in KEEPABLE]
    if unknown:
        raise ValueError(f"keep names unknown fields {unknown}; a Trace keeps: {', '.join(KEEPABLE)}")
    return list(keep)


def describe_keep(keep) -> object:
    """The JSON the sweep's folder records for ``keep`` (a function by its module and name)."""
    if keep is None:
        return "trace"
    if callable(keep):
        return f"{getattr(keep, '__module__', '?')}.{getattr(keep, '__qualname__', type(keep).__name__)}"
    return list(keep)


def run_points(pipe, grid, points: list[dict], keep) -> list[bytes]:
    """The file bytes of each point; points that differ only in seed run as one batch (see ``batchable``)."""
    params = [grid.params(point) for point in points]
    if len(points) > 1:
        traces = trace_seeds(pipe, params)
    else:
        traces = [trace_point(pipe, params[0])]
    return [encode(run, keep, point) for run, point in zip(traces, params)]


def batch_key(params: dict) -> str | None:
    """Points with the same key can share one pipeline call (they differ only in seed); None: run it alone."""
    if any(name in params for name in _NOT_BATCHED) or not isinstance(params.get("prompt"), str):
        return None
    rest = {name: value for name, value in params.items() if name != "seed"}
    return json.dumps(describe_value(rest), sort_keys=True)


@contextlib.contextmanager
def scheduler_swapped(pipe, name: str | None):
    """While active, ``pipe`` samples with scheduler ``name`` built from its own scheduler's config."""
    if name is None:
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


def trace_point(pipe, params: dict) -> Trace:
    """One point as ``sdexplore.trace`` runs it (or the interpolation studies, for alpha)."""
    from ..capture.run import trace
    from ..studies.interpolation import trace_interpolation, trace_prompt_interpolation

    kwargs = dict(params)
    seed, scheduler = kwargs.pop("seed"), kwargs.pop("scheduler", None)
    prompt = kwargs.pop("prompt", None)
    with scheduler_swapped(pipe, scheduler):
        if "alpha" not in kwargs:
            run = trace(pipe, prompt, seed=seed, **kwargs)
        else:
            alpha, mode = kwargs.pop("alpha"), kwargs.pop("mode", "lerp")
            if "target_prompt" in kwargs:
                run = trace_prompt_interpolation(pipe, prompt, kwargs.pop("target_prompt"), [alpha], seed=seed,
                                                 mode=mode, **kwargs)[0]
            else:
                word, target = kwargs.pop("word"), kwargs.pop("target")
                run = trace_interpolation(pipe, prompt, word, target, [alpha], seed=seed, mode=mode, **kwargs)[0]
    if scheduler is not None:
        run.params["scheduler_name"] = scheduler
    return run


def trace_seeds(pipe, points: list[dict]) -> list[Trace]:
    """Points that differ only in seed, as one pipeline call with one generator per picture; one Trace each.

    The pictures match one-by-one runs of the same seeds to float precision, not bit for bit: the UNet's
    batched kernels add in another order.
    """
    from ..capture.inputs import check_call
    from ..capture.locks import pipeline_lock
    from ..capture.run import _generator_device, _json_params, _pipeline_for, tracing

    seeds = [point["seed"] for point in points]
    kwargs = {name: value for name, value in points[0].items() if name != "seed"}
    prompt, scheduler = kwargs.pop("prompt"), kwargs.pop("scheduler", None)
    kwargs = {name: value for name, value in kwargs.items()
              if not (name in ("image", "mask_image") and value is None)}
    with pipeline_lock(pipe), scheduler_swapped(pipe, scheduler):
        run_pipe = _pipeline_for(pipe, kwargs)
        call = check_call(run_pipe, prompt, {**kwargs, "num_images_per_prompt": len(seeds)})
        generators = [torch.Generator(device=_generator_device(run_pipe.device)).manual_seed(seed) for seed in seeds]
        with tracing(run_pipe) as recorder:
            output = run_pipe(prompt, generator=generators, callback_on_step_end=recorder.callback,
                              callback_on_step_end_tensor_inputs=["latents"], **call.kwargs)
        batch = recorder.to_trace(output, prompt=prompt, seed=seeds[0], params=_json_params(call.kwargs),
                                  inputs=call.inputs)
    runs = [one_picture(batch, index, seed) for index, seed in enumerate(seeds)]
    if scheduler is not None:
        for run in runs:
            run.params["scheduler_name"] = scheduler
    return runs


def one_picture(batch: Trace, index: int, seed: int) -> Trace:
    """The Trace of picture ``index`` of a batched run: [N, B, ...] step fields cut to [N, 1, ...], [B, ...] text
    fields (embeddings, pooled embeddings, SDXL's time ids) to [1, ...], its own seed."""
    size = len(batch.images)
    fields = {f.name for f in dataclasses.fields(batch)}

    def cut(tensor, axis):
        if tensor is None or tensor.shape[axis] != size:
            return tensor
        return tensor.narrow(axis, index, 1).clone()

    params = {**batch.params, "seed": seed, "batched": {"index": index, "of": size}}
    params.pop("num_images_per_prompt", None)
    changes = {name: cut(getattr(batch, name), 1) for name in _STEP_FIELDS if name in fields}
    changes.update({name: cut(getattr(batch, name), 0) for name in _BATCH_FIRST_FIELDS if name in fields})
    return dataclasses.replace(batch, **changes, images=[batch.images[index]], params=params)


def kept(run: Trace, keep) -> dict[str, torch.Tensor]:
    """What ``keep`` (a list of field names or a function) takes from ``run``."""
    if callable(keep):
        tensors = keep(run)
        if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in tensors.items()):
            raise TypeError(f"keep={describe_keep(keep)} must return a dict of name -> torch.Tensor, "
                            f"got {type(tensors).__name__}")
        return tensors
    out = {}
    for name in keep:
        if name == "images":
            out[name] = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in run.images]))
        elif getattr(run, name) is not None:
            out[name] = getattr(run, name)
    return out


def encode(run: Trace, keep, params: dict) -> bytes:
    """The bytes of the point's file: the whole Trace (keep None), or the kept tensors with the point's params."""
    with tempfile.TemporaryDirectory(prefix="sdexplore-point-") as folder:
        path = Path(folder) / "point.safetensors"
        if keep is None:
            run.save(path)
        else:
            save_tensors(path, kept(run, keep), {"point": json_safe(describe_value(params)), "params": run.params})
        return path.read_bytes()
