"""sdexplore: see inside Stable Diffusion. Trace a run, look at every step, its attention and its prompt."""

from importlib.metadata import PackageNotFoundError, version

from . import notices  # noqa: F401  (first: silences known third-party notices before diffusers is imported)
from .capture.attention import AttentionMaps
from .capture.run import trace, tracing
from .capture.storage import TraceFileError
from .capture.trace import Trace
from .models import SCHEDULERS, ModelNotAvailableError, as_img2img, as_inpaint, load_pipeline, tiny_pipeline
from .prompts import PromptTruncatedWarning, Token, token_table

try:
    __version__ = version("sdexplore")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.1.0+source"

__all__ = [
    "AttentionMaps",
    "SCHEDULERS",
    "ModelNotAvailableError",
    "PromptTruncatedWarning",
    "Token",
    "Trace",
    "TraceFileError",
    "as_img2img",
    "as_inpaint",
    "load_pipeline",
    "tiny_pipeline",
    "token_table",
    "trace",
    "tracing",
]
