"""Shared fixtures: tiny SD-shaped pipelines built in code (no downloads), Agg backend for figures."""

import matplotlib
import pytest

matplotlib.use("Agg")

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
