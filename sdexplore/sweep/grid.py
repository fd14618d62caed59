"""A sweep's grid: which parameters vary (the axes), which stay the same, and the points they make.

    Grid(seed=range(7), strength=[0.6, 0.8, 1.0], prompt="cat, sea", image=drawing, num_inference_steps=25)

A keyword given a list, tuple, range or 1-D numpy array is an axis; anything else is the same at every point.
Points are the cartesian product of the axes in the order given (the first axis varies slowest), so
``Grid(seed=S, strength=K)`` gives the points of an [S, K] grid, row by row.

Names the runner understands besides diffusers' own keywords (guidance_scale, strength, num_inference_steps, ...):
- ``seed``: the generator's seed (required, axis or fixed);
- ``prompt``: the prompt;
- ``scheduler``: a short name from sdexplore.models.SCHEDULERS ("ddim", "euler", ...), built from the model's config;
- ``alpha``: prompt-embedding interpolation (sdexplore.studies.interpolation), with either ``target_prompt``
  (the two prompts' encoder outputs mixed) or ``word`` + ``target`` (one word's token embedding slid toward
  another's), and ``mode`` ("lerp" default, or "slerp").
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..models import scheduler_class
from ..studies.interpolation import MODES

INTERPOLATION_KEYS = ("target_prompt", "word", "target", "mode")


@dataclass(frozen=True)
class Grid:
    """axes: name -> the values it takes (in order); fixed: name -> the value every point shares."""

    axes: dict
    fixed: dict

    def __init__(self, **params):
        if not params:
            raise ValueError("a Grid needs parameters, e.g. Grid(seed=range(4), prompt='a cat')")
        axes, fixed = {}, {}
        for name, value in params.items():
            if _is_axis(value):
                values = [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
                if not values:
                    raise ValueError(f"axis {name!r} is empty: give at least one value")
                if len({repr(describe_value(v)) for v in values}) != len(values):
                    raise ValueError(f"axis {name!r} repeats a value ({values}): every point must be distinct")
                axes[name] = values
            else:
                fixed[name] = _plain(value)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "fixed", fixed)
        self._check()

    def _check(self) -> None:
        names = {**self.fixed, **self.axes}
        if "seed" not in names:
            raise ValueError("a Grid needs seed= (an int, or a list of ints to sweep)")
        for seed in self.values("seed"):
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seed must be ints >= 0, got {seed!r}")
        for name in self.values("scheduler"):
            scheduler_class(name)  # ValueError naming the choices
        for alpha in self.values("alpha"):
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
                raise ValueError(f"alpha must be finite numbers, got {alpha!r}")
        interpolation = [key for key in INTERPOLATION_KEYS if key in names]
        if "alpha" in names:
            by_prompt, by_word = "target_prompt" in names, "word" in names and "target" in names
            if by_prompt == by_word:
                raise ValueError("alpha= needs either target_prompt= (mix two prompts) or word= and target= (slide one "
                                 f"word's token embedding), not both or neither; got {sorted(interpolation)}")
            if "prompt" not in names:
                raise ValueError("alpha= interpolates from prompt=: give the prompt too")
            for mode in self.values("mode"):
                if mode not in MODES:
                    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        elif interpolation:
            raise ValueError(f"{', '.join(interpolation)} only mean something with alpha= (prompt interpolation)")

    def values(self, name: str) -> list:
        """The values ``name`` takes: its axis, [its fixed value], or [] when the grid does not name it."""
        if name in self.axes:
            return list(self.axes[name])
        return [self.fixed[name]] if name in self.fixed else []

    @property
    def shape(self) -> tuple[int, ...]:
        """The number of values of each axis, in order."""
        return tuple(len(values) for values in self.axes.values())

    def __len__(self) -> int:
        return math.prod(self.shape)

    def points(self) -> list[dict]:
        """Every point's axis values, in grid order: [{"seed": 0, "strength": 0.6}, ...]."""
        names = list(self.axes)
        return [dict(zip(names, combination)) for combination in itertools.product(*self.axes.values())]

    def params(self, point: dict) -> dict:
        """The full parameters of one point: the fixed ones with the point's axis values."""
        return {**self.fixed, **point}

    def spec(self) -> dict:
        """A JSON description that decides the results (pictures and tensors are named by a digest of their bytes)."""
        return {"axes": {name: [describe_value(v) for v in values] for name, values in self.axes.items()},
                "fixed": {name: describe_value(value) for name, value in sorted(self.fixed.items())}}


def _is_axis(value) -> bool:
    return isinstance(value, (list, tuple, range)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _plain(value):
    """numpy scalars as Python numbers (so that JSON and the pipeline see plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def describe_value(value):
    """``value`` if JSON can hold it, else a record of its type, shape and a digest of its bytes (for the
    folder's spec and to tell axis values apart)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): describe_value(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if isinstance(value, Image.Image):
        array = np.asarray(value)
        return {"type": "PIL.Image", "mode": value.mode, "shape": list(array.shape), "sha256": _digest(array)}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return {"type": type(value).__name__, "dtype": str(array.dtype), "shape": list(array.shape),
                "sha256": _digest(array)}
    raise TypeError(f"a Grid value of type {type(value).__name__} ({value!r:.60}) cannot be described for the "
                    "sweep's folder; give numbers, strings, PIL images, numpy arrays or tensors")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
