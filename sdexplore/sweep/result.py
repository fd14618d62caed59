"""The table a sweep returns: one row per point (its axis values), one column per kept tensor (or "trace").

    result = run_sweep("toy", Grid(seed=range(7), strength=STRENGTHS, ...), keep=["images"])
    result.grid("images", "seed", "strength")         # tensor [7, K, 1, H, W, 3]
    result.filter(seed=0).column("images")            # the pictures of seed 0, in grid order
    result.to_pandas()                                # a DataFrame, if pandas is installed
"""

from __future__ import annotations

import itertools

import torch

from .grid import describe_value


class SweepResult:
    """rows: the axis values of each point, in grid order; columns: name -> one value per row."""

    def __init__(self, axes: dict, rows: list[dict], columns: dict[str, list]):
        self.axes = {name: list(values) for name, values in axes.items()}
        self.rows = list(rows)
        self.columns = {name: list(values) for name, values in columns.items()}
        if any(len(values) != len(self.rows) for values in self.columns.values()):
            raise ValueError("every column needs one value per row")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        """Row ``index``: its axis values and its columns' values."""
        return {**self.rows[index], **{name: values[index] for name, values in self.columns.items()}}

    def __iter__(self):
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        axes = ", ".join(f"{name}[{len(values)}]" for name, values in self.axes.items())
        return f"SweepResult({len(self)} points over {axes or 'no axis'}; columns: {', '.join(self.columns)})"

    @property
    def traces(self) -> list:
        """The Trace of every row (a sweep run with keep=None)."""
        return self.column("trace")

    def column(self, name: str) -> list:
        """The values of column ``name``, one per row."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; this result has: {', '.join(self.columns)}")
        return self.columns[name]

    def stack(self, name: str) -> torch.Tensor:
        """[P, ...]: column ``name`` stacked over the rows (its tensors must share one shape)."""
        values = self.column(name)
        if not all(isinstance(v, torch.Tensor) for v in values):
            raise TypeError(f"column {name!r} holds {type(values[0]).__name__} values, not tensors; use column()")
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"column {name!r} has tensors of several shapes {sorted(shapes)}; use column()")
        return torch.stack(values)

    def filter(self, **where) -> SweepResult:
        """The rows whose axis values equal ``where`` (a value, or a list of allowed values per axis)."""
        unknown = [name for name in where if name not in self.axes]
        if unknown:
            raise KeyError(f"filter on {unknown}: not axes of this sweep (axes: {', '.join(self.axes)})")
        allowed = {name: {_key(v) for v in (value if isinstance(value, (list, tuple, range)) else [value])}
                   for name, value in where.items()}
        keep = [i for i, row in enumerate(self.rows) if all(_key(row[name]) in allowed[name] for name in allowed)]
        if not keep:
            raise ValueError(f"no point has {where}; the axes take: {self.axes}")
        axes = {name: [v for v in values if name not in allowed or _key(v) in allowed[name]]
                for name, values in self.axes.items()}
        return SweepResult(axes, [self.rows[i] for i in keep],
                           {name: [values[i] for i in keep] for name, values in self.columns.items()})

    def grid(self, name: str, *axes: str):
        """Column ``name`` arranged as a grid over ``axes`` (default: every axis with more than one value).

        Tensors come back stacked, [len(axes[0]), len(axes[1]), ..., *value shape]; other values (traces) as
        nested lists. Axes left out must have one value here (``filter`` first).
        """
        axes = axes or tuple(a for a, values in self.axes.items() if len(values) > 1)
        unknown = [a for a in axes if a not in self.axes]
        if unknown:
            raise KeyError(f"grid over {unknown}: not axes of this sweep (axes: {', '.join(self.axes)})")
        rest = [a for a in self.axes if a not in axes and len(self.axes[a]) > 1]
        if rest:
            raise ValueError(f"axes {rest} take several values but are not in the grid {list(axes)}; "
                             f"filter(...) them to one value first")
        index = {tuple(_key(row[a]) for a in axes): i for i, row in enumerate(self.rows)}
        values = self.column(name)
        cells = []
        for combination in itertools.product(*(self.axes[a] for a in axes)):
            key = tuple(_key(v) for v in combination)
            if key not in index:
                raise ValueError(f"no point at {dict(zip(axes, combination))} for the grid")
            cells.append(values[index[key]])
        shape = [len(self.axes[a]) for a in axes]
        if all(isinstance(v, torch.Tensor) for v in cells):
            stacked = torch.stack(cells)
            return stacked.reshape(*shape, *stacked.shape[1:])
        return _nest(cells, shape)

    def to_pandas(self):
        """A pandas DataFrame: the axis values as columns, then one column per kept value (pandas needed)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("to_pandas needs pandas: pip install pandas") from error
        return pandas.DataFrame([self[i] for i in range(len(self))])


def _key(value) -> str:
    """A hashable stand-in for an axis value (tensors and pictures by a digest of their bytes)."""
    return repr(describe_value(value))


def _nest(values: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return list(values)
    size = len(values) // shape[0]
    return [_nest(values[i * size:(i + 1) * size], shape[1:]) for i in range(shape[0])]
