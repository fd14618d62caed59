"""img2prompt two ways: does the prompt CLIP likes best say what the model would most likely have drawn from?"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

ATTRIBUTES = ("kind", "color", "position")
WAYS = {"interrogator": "CLIP interrogator (greedy words)", "clip": "CLIP: best cosine among candidates",
        "likelihood": "model: lowest denoising error"}


def plot_img2prompt(result: dict, *, title: str | None = None) -> Figure:
    """result: ``studies.img2prompt.recovery_study``'s tensors. Left: how often each way recovers the true
    kind, colour and position; right: how often CLIP's favourite candidate differs from the model's most
    likely one, per attribute (the notes' "important point")."""
    correct = {way: np.asarray(result[f"{way}_correct"], dtype=float) for way in WAYS}
    disagree = np.asarray(result["disagree"], dtype=bool)
    n = len(disagree)
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    x = np.arange(len(ATTRIBUTES))
    width = 0.8 / len(WAYS)
    for i, (way, label) in enumerate(WAYS.items()):
        rates = correct[way].mean(0)
        bars = left.bar(x + (i - 1) * width, rates, width, label=label)
        left.bar_label(bars, [f"{r:.0%}" for r in rates], fontsize=7)
    left.set_xticks(x, ATTRIBUTES)
    left.set_ylim(0, 1.6)  # room above the bars for the legend
    left.set_yticks(np.linspace(0, 1, 6))
    left.set_ylabel(f"recovered (of {n} held-out images)")
    left.legend(fontsize=7, loc="upper left")
    left.set_title("Which prompt does each way recover?", fontsize=9)
    counts = disagree.sum(0)
    bars = right.bar(x, counts, color="tab:red")
    right.bar_label(bars, [f"{c} / {n}" for c in counts], fontsize=8)
    right.set_xticks(x, ATTRIBUTES)
    right.set_ylim(0, max(1, n) * 1.1)
    right.set_ylabel("images")
    right.set_title(f"CLIP's favourite is not the model's most likely prompt\n"
                    f"({int(disagree.sum())} of {disagree.size} questions)", fontsize=9)
    figure.suptitle(title or "img2prompt two ways: CLIP similarity vs the diffusion model's own likelihood",
                    fontsize=10)
    return figure
