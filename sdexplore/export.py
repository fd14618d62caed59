"""Figures that remember how they were made: PNG with a "parameters" text chunk and a JSON sidecar.

    save_figure(fig, FIGURES / "02_cat_overlay.png", run=run)          # params read from the trace
    save_figure(fig, path, params={"prompt": ..., "seed": 0}, formats=("png", "svg"))

The PNG carries the generation parameters in a tEXt chunk named ``parameters`` (in the spirit of
AUTOMATIC1111's) and ``sdexplore`` (the same as JSON); ``<stem>.json`` beside it holds the same record.
Records are strict JSON (a non-finite number is written as the string "inf"/"nan"). Notebooks rebuild their
figures in place; ``overwrite=False`` (the command line's default) refuses to replace any file that exists.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

import diffusers
from matplotlib.figure import Figure
from PIL import Image, PngImagePlugin

FORMATS = ("png", "svg", "pdf")
RUN_KEYS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "strength", "scheduler",
            "model")


def figure_params(run=None, params: dict | None = None) -> dict:
    """The record a figure carries: the run's generation parameters (if any), ``params``, and versions."""
    from . import __version__

    record = {}
    if run is not None:
        record.update({key: run.params.get(key) for key in RUN_KEYS if run.params.get(key) is not None})
    record.update(params or {})
    if "model" in record:
        record["model"] = model_name(record["model"])
    record["versions"] = {"sdexplore": __version__, "diffusers": diffusers.__version__}
    return json_safe(record)


def model_name(model) -> str:
    """The name a reader can load: "toy" for the shipped weights' folder (not this machine's path to it)."""
    from .models import TOY_WEIGHTS

    try:
        if Path(str(model)).resolve() == TOY_WEIGHTS.resolve():
            return "toy"
    except OSError:
        pass
    return str(model)


def json_safe(value, where: str = "params"):
    """``value`` as strict JSON types: numpy/torch scalars and arrays to numbers and lists, paths to strings,
    inf/nan to "inf"/"nan". TypeError naming the key for anything else."""
    if isinstance(value, dict):
        return {str(key): json_safe(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / torch scalars and arrays
        return json_safe(value.tolist(), where)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where} is a {type(value).__name__}, which a figure's JSON record cannot hold; "
                    "give a number, string, bool, None or a list/dict of them")


def parameters_text(record: dict) -> str:
    """One line per field, "key: value", as the PNG's ``parameters`` chunk shows it."""
    return "\n".join(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}"
                     for key, value in record.items())


def save_figure(figure: Figure, path: str | os.PathLike, *, run=None, params: dict | None = None,
                formats=("png",), dpi: int = 120, overwrite: bool = True) -> Path:
    """Write ``figure`` to ``path`` (.png) with its record, plus the other ``formats``; returns the PNG's path.

    overwrite=False: FileExistsError, before anything is written, if the PNG, its sidecar or another format exists.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes a .png path (other formats beside it via formats=), got {path.name}")
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown figure formats {sorted(unknown)}; allowed: {FORMATS}")
    if not overwrite:
        refuse_existing([path, path.with_suffix(".json"), *(path.with_suffix(f".{ext}") for ext in formats)])
    record = figure_params(run, params)
    record["figure"] = path.name
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(record))
    info.add_text("sdexplore", json.dumps(record, allow_nan=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=info))
    _write_json(path.with_suffix(".json"), record)
    for extension in formats:
        if extension != "png":
            atomic_write(path.with_suffix(f".{extension}"),
                          lambda handle, ext=extension: figure.savefig(handle, format=ext, dpi=dpi))
    return path


def refuse_existing(paths) -> None:
    """FileExistsError naming the files among ``paths`` that exist (nothing is replaced silently)."""
    existing = [str(p) for p in dict.fromkeys(paths) if Path(p).exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "refusing to replace (pass overwrite=True / --overwrite to replace)")


def read_parameters(path: str | os.PathLike) -> dict:
    """The record ``save_figure`` wrote into a PNG."""
    with Image.open(path) as image:
        text = image.text.get("sdexplore")
    if text is None:
        raise ValueError(f"{path} has no sdexplore parameters chunk (not written by save_figure)")
    return json.loads(text)


ANIMATION_FORMATS = (".gif", ".mp4")


def save_animation(frames, path: str | os.PathLike, *, fps: float = 8, run=None, params: dict | None = None,
                   scale: int = 1, overwrite: bool = True) -> Path:
    """Write ``frames`` (PIL images or uint8 [F, H, W, 3]) as a GIF or MP4 (imageio), with a JSON sidecar.

    scale: repeat each pixel this many times (the toy's 64x64 pictures are small to watch). MP4 frames are
    padded (edge pixels repeated) to multiples of 16, the block size H.264 players expect.
    """
    import imageio.v3 as iio
    import numpy as np

    path = _animation_path(path, overwrite)
    stack = np.stack([np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
                      for frame in frames]) if len(frames) else np.zeros((0,))
    if stack.ndim != 4 or stack.shape[0] < 1 or stack.shape[-1] != 3:
        raise ValueError(f"frames must be at least one picture of shape [H, W, 3], got array {tuple(stack.shape)}")
    if not (isinstance(scale, int) and scale >= 1):
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    stack = stack.astype(np.uint8).repeat(scale, axis=1).repeat(scale, axis=2)
    record = figure_params(run, params)
    record.update(figure=path.name, frames=int(stack.shape[0]), fps=fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        data = iio.imwrite("<bytes>", stack, extension=".gif", duration=1000 / fps, loop=0)
    else:
        data = _mp4_bytes(stack, fps)
    atomic_write(path, lambda handle: handle.write(data))
    _write_json(path.with_suffix(".json"), record)
    return path


def save_denoising_animation(run, path: str | os.PathLike, *, fps: float = 6, method: str = "approx",
                             overwrite: bool = True, **decoder) -> Path:
    """GIF or MP4 of a trace's denoising: x_t and predicted x0 side by side at every step (decoded per step).

    method/decoder: how latents become pictures ("approx"; "vae" with pipe=; "taesd" with taesd=).
    """
    from .plot.steps import denoising_frames

    _animation_path(path, overwrite)  # refuse before decoding every step
    frames = denoising_frames(run, method=method, **decoder)
    return save_animation(frames, path, fps=fps, run=run, overwrite=overwrite,
                          params={"shows": "x_t (left) and predicted x0 (right) at every step", "decode": method})


def _animation_path(path, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_FORMATS:
        raise ValueError(f"an animation is written as {' or '.join(ANIMATION_FORMATS)}, got {path.name}")
    if not overwrite:
        refuse_existing([path, path.with_suffix(".json")])
    return path


def _mp4_bytes(stack, fps: float) -> bytes:
    """H.264 MP4 through imageio's ffmpeg plugin (the ffmpeg binary ships in the imageio-ffmpeg wheel)."""
    import imageio.v2 as imageio
    import numpy as np

    height, width = stack.shape[1:3]  # pad to the codec's 16-pixel blocks ourselves (edge pixels repeated)
    stack = np.pad(stack, ((0, 0), (0, -height % 16), (0, -width % 16), (0, 0)), mode="edge")
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=16,
                                ffmpeg_log_level="error") as writer:
            for frame in stack:
                writer.append_data(frame)
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


def file_mode() -> int:
    """0o666 less the process umask: what a file created with open() gets (mkstemp's files are 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_json(path: Path, record: dict) -> None:
    """Strict JSON (no NaN/Infinity tokens), written atomically."""
    text = json.dumps(record, indent=2, allow_nan=False)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file renamed into place, with the permissions a plain open() would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
