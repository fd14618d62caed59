"""What a sweep runs on: a picklable description of the pipeline that every worker loads for itself.

A loaded pipeline cannot travel to another machine, a name can: ``PipelineSpec("toy")`` or
``PipelineSpec("stable-diffusion-v1-5/stable-diffusion-v1-5", scheduler="euler", dtype="fp16")`` is what the
Ray backend sends, and each worker process calls ``load()`` once (``loaded`` keeps it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..export import model_name
from ..models import scheduler_class

_LOADED: dict = {}  # PipelineSpec -> pipeline, one per worker process
_LOADS: list = []  # every spec this process loaded through ``loaded`` (tests count them)


@dataclass(frozen=True)
class PipelineSpec:
    """model: "toy", "tiny", a hub id or a folder; scheduler: a short name from sdexplore.models.SCHEDULERS;
    device/dtype: as ``load_pipeline`` takes them (strings, so the spec pickles and prints)."""

    model: str
    scheduler: str | None = None
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            raise ValueError(f"model must be a name ('toy', 'tiny', a hub id) or a folder path, got {self.model!r}")
        object.__setattr__(self, "model", os.fspath(self.model))
        if self.scheduler is not None:
            scheduler_class(self.scheduler)
        for name in ("device", "dtype"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string such as 'cuda' / 'fp16' (it travels to workers), "
                                f"got {value!r}")

    def load(self):
        """A fresh pipeline, as ``sdexplore.load_pipeline`` makes it."""
        from ..models import load_pipeline

        return load_pipeline(self.model, scheduler=self.scheduler, device=self.device, dtype=self.dtype)

    def describe(self) -> dict:
        """JSON for the sweep's folder (the toy model by name, not by this machine's path). The device is left
        out: it may differ between the machines that resume one sweep."""
        return {"model": model_name(self.model), "scheduler": self.scheduler, "dtype": self.dtype}


def loaded(spec: PipelineSpec):
    """The pipeline of ``spec``, loaded once per process and kept."""
    if spec not in _LOADED:
        _LOADED[spec] = spec.load()
        _LOADS.append(spec)
    return _LOADED[spec]


def load_count() -> int:
    """How many pipelines this process has loaded through ``loaded`` (once per spec, however many tasks ran)."""
    return len(_LOADS)


def describe_loaded(pipe) -> dict:
    """The description of a pipeline the caller loaded (local backend): model name, scheduler class and dtype."""
    name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or type(pipe).__name__
    return {"model": model_name(name), "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(pipe.dtype).removeprefix("torch.")}
