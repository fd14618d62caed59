"""Sweeps over seeds, strengths, guidance scales, schedulers, alpha and prompts, in process or on Ray.

- ``grid``: Grid, the axes and the fixed parameters, and the points they make;
- ``spec``: PipelineSpec, the picklable model description each worker loads once;
- ``points``: running points on a pipeline (several seeds as one batch) and what ``keep`` keeps;
- ``store``: the resumable folder (sweep.json + one safetensors file per point);
- ``local`` / ``ray_backend``: the two backends; ``runner``: ``run_sweep``, which ties them together;
- ``result``: SweepResult, the table the studies and plots read.
"""

from .grid import Grid
from .result import SweepResult
from .runner import BACKENDS, run_sweep
from .spec import PipelineSpec
from .store import SweepFolderError

__all__ = ["BACKENDS", "Grid", "PipelineSpec", "SweepFolderError", "SweepResult", "run_sweep"]
