"""Shared fixtures: tiny SD-shaped pipelines built in code (no downloads), Agg backend, the results cache."""

import os
import tempfile

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

# One results cache per test run, shared with the kernels that execute the notebooks (they inherit the
# environment): a sweep that a notebook and its claims test both need is computed once (sdexplore/cache.py).
os.environ.setdefault("SDEXPLORE_CACHE", tempfile.mkdtemp(prefix="sdexplore-cache-"))

import sdexplore  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """SD1-shaped random pipeline (DDIM, epsilon), 64x64 images, 4x8x8 latents."""
    return sdexplore.load_pipeline("tiny")


@pytest.fixture(scope="session")
def tiny_sd2():
    """SD2-shaped: v-prediction, linear projections, per-block head dims, upcast attention."""
    return sdexplore.load_pipeline("tiny-sd2")


@pytest.fixture(scope="session")
def tiny_inpaint():
    """SD1-shaped with the 9-channel inpainting UNet."""
    return sdexplore.load_pipeline("tiny-inpaint")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread than on two contended ones: a module asks for this with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; torch's thread count is put back after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
