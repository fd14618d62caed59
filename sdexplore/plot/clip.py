"""The notes' "There are 5 images and 5 texts, which one is the pair?" as a picture."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure


def plot_similarity_matrix(similarity, images, captions: list[str], *, title: str | None = None) -> Figure:
    """similarity: cosine [N images, N captions] (pairs on the diagonal); images: uint8 [N, H, W, 3];
    captions: N strings. Images label the rows, captions the columns; each row's best match is boxed."""
    similarity = np.asarray(similarity, dtype=float)
    n = len(images)
    if similarity.shape != (n, len(captions)):
        raise ValueError(f"similarity must be [{n} images, {len(captions)} captions], got {similarity.shape}")
    figure = Figure(figsize=(2.2 + 1.5 * len(captions), 1.0 + 1.2 * n), layout="constrained")
    grid = figure.add_gridspec(n, 2, width_ratios=[1, len(captions)])
    matrix = figure.add_subplot(grid[:, 1])
    shown = matrix.imshow(similarity, cmap="viridis")
    for row in range(n):
        best = int(similarity[row].argmax())
        for column in range(len(captions)):
            matrix.text(column, row, f"{similarity[row, column]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if similarity[row, column] > similarity.mean() else "white",
                        fontweight="bold" if column == best else "normal")
        matrix.add_patch(_box(best, row))
        picture = figure.add_subplot(grid[row, 0])
        picture.imshow(images[row])
        picture.set_xticks([]), picture.set_yticks([])
    matrix.set_xticks(range(len(captions)), ["\n".join(textwrap.wrap(c, 18)) for c in captions], fontsize=6)
    matrix.set_yticks(range(n), [f"image {i + 1}" for i in range(n)], fontsize=8)
    figure.colorbar(shown, ax=matrix, shrink=0.8, label="cosine similarity")
    matrix.set_title(title or "CLIP: which caption goes with which image? (pairs on the diagonal; best per row boxed)",
                     fontsize=9)
    return figure


def _box(column: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
