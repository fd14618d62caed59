"""Figures of cross-attention maps: a word over the image, every token, tokens over steps and layers.

The ``plot_*`` functions only lay out maps they are given (computed by ``AttentionMaps``); the
short helpers without the prefix (``word_overlay(run, "cat")``, ...) pick the maps from a traced
run and call them. All return a ``matplotlib.figure.Figure`` (never only shown), so it can be
saved with ``figure.savefig(...)`` or displayed in a notebook.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

SPECIAL_COLOUR = "tab:red"


# --- layouts of given maps ---------------------------------------------------------------------


def plot_word_overlay(image, word_map: torch.Tensor, *, label: str = "", alpha: float = 0.55,
                      cmap: str = "jet", title: str | None = None) -> Figure:
    """One map [h, w] (any size; drawn stretched over the picture) over ``image`` (PIL or [H, W, 3])."""
    picture = np.asarray(image)
    height, width = picture.shape[:2]
    figure = Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = figure.subplots()
    ax.imshow(picture)
    shown = ax.imshow(_array(word_map), cmap=cmap, alpha=alpha, extent=(0, width, height, 0),
                      interpolation="bilinear")
    figure.colorbar(shown, ax=ax, shrink=0.8, label="attention")
    if title is None and label:
        title = f"attention to {label!r}"
    ax.set_title(title or "", fontsize=9)
    _bare(ax)
    return figure


def overlay_picture(image, heat: torch.Tensor, *, alpha: float = 0.55, cmap: str = "jet") -> Image.Image:
    """A map [h, w] min-max scaled, stretched (bilinear) over ``image`` (PIL) and blended in with a colour map.

    A PIL picture rather than a Figure: cheap enough (a few ms) to redraw on every move of a widget's slider.
    """
    picture = image.convert("RGB")
    scaled = _array(heat).astype(np.float32)
    scaled = (scaled - scaled.min()) / max(float(scaled.max() - scaled.min()), 1e-12)
    stretched = Image.fromarray(scaled).resize(picture.size, Image.BILINEAR)
    colours = matplotlib.colormaps[cmap](np.clip(np.asarray(stretched), 0, 1))[..., :3]
    blended = (1 - alpha) * np.asarray(picture, np.float32) / 255 + alpha * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def plot_token_grid(maps: torch.Tensor, labels: list[str], *, shares: torch.Tensor | None = None,
                    columns: int = 11, shared_scale: bool = True, title: str | None = None) -> Figure:
    """Every token's map [T, h, w] in a grid, labelled; shares [T] (fraction of attention) added to labels.

    With shared_scale (default) all maps use one colour scale, so the tokens that take most of
    the attention (start, end, padding) stand out instead of being hidden by per-map scaling.
    """
    count = maps.shape[0]
    rows = -(-count // columns)
    figure = Figure(figsize=(1.1 * columns, 1.25 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    vmax = float(maps.max()) if shared_scale else None
    for index, ax in enumerate(axes.flat):
        _bare(ax)
        if index >= count:
            ax.set_visible(False)
            continue
        ax.imshow(_array(maps[index]), cmap="viridis", vmin=0 if shared_scale else None, vmax=vmax)
        text = labels[index] + ("" if shares is None else f"\n{100 * float(shares[index]):.1f}%")
        ax.set_title(text, fontsize=6, color=SPECIAL_COLOUR if "<" in labels[index] else "black")
    if shared_scale:
        figure.colorbar(axes.flat[0].images[0], ax=axes, shrink=0.5, label="attention")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_map_grid(maps: torch.Tensor, row_labels: list[str], column_labels: list[str], *,
                  title: str | None = None, shared_scale: bool = True) -> Figure:
    """maps [R, C, h, w] as an R x C grid: rows (steps or layers) against columns (tokens)."""
    rows, columns = maps.shape[:2]
    figure = Figure(figsize=(1.05 * columns + 1.2, 1.05 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    vmax = float(maps.max()) if shared_scale else None
    for r in range(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(_array(maps[r, c]), cmap="viridis", vmin=0 if shared_scale else None, vmax=vmax)
            _bare(ax)
            if r == 0:
                ax.set_title(column_labels[c], fontsize=7,
                             color=SPECIAL_COLOUR if "<" in column_labels[c] else "black")
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if shared_scale:
        figure.colorbar(axes[0, 0].images[0], ax=axes, shrink=0.5, label="attention")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_step_token_grid(step_maps: torch.Tensor, step_labels: list[str], token_labels: list[str], *,
                         title: str | None = "when each token's map appears") -> Figure:
    """step_maps [S, K, h, w]: rows are steps, columns tokens."""
    return plot_map_grid(step_maps, step_labels, token_labels, title=title)


def plot_layer_token_grid(layer_maps: torch.Tensor, layer_labels: list[str], token_labels: list[str], *,
                          title: str | None = "where each layer attends") -> Figure:
    """layer_maps [L, K, h, w]: rows are cross-attention layers, columns tokens."""
    return plot_map_grid(layer_maps, layer_labels, token_labels, title=title)


# --- from a traced run ----------------------------------------------------------------------


def word_overlay(run, word: str, *, steps=None, layers=None, prompt_index: int = 0, **style) -> Figure:
    """A word's map (all steps and layers by default) over the run's final image."""
    maps = run.attention
    word_map = maps.word_map(word, steps, layers)[prompt_index]
    return plot_word_overlay(run.images[prompt_index], word_map, label=word, **style)


ALL_TOKENS_UP_TO = 77  # longer text sequences (SD3's 77 + 256, Flux's 512) show their start, word and end tokens


def token_grid(run, *, positions: list[int] | None = None, steps=None, layers=None, prompt_index: int = 0,
               negative: bool = False, **style) -> Figure:
    """Every token's map of one image (SD 1.x/2.x, SDXL: all 77), each labelled with its share of the attention.

    positions: which positions of the text sequence to draw; default all of them up to 77 positions, and for
    longer sequences (SD3, Flux) ``default_positions`` (start, word and end tokens, the first padding), with
    the number left out in the title. Shares are of the whole sequence either way."""
    maps = run.attention
    if positions is None:
        positions = list(range(maps.num_tokens)) if maps.num_tokens <= ALL_TOKENS_UP_TO else \
            default_positions(maps, prompt_index, negative)
        if len(positions) < maps.num_tokens and "title" not in style:
            style["title"] = (f"{len(positions)} of {maps.num_tokens} positions: start, word and end tokens "
                              "(padding left out)")
    token_maps = maps.token_maps(steps, layers, negative=negative)[prompt_index][positions]
    shares = maps.token_share(steps, layers, negative=negative)[prompt_index][positions]
    labels = maps.token_labels(prompt_index, negative=negative)
    return plot_token_grid(token_maps, [labels[p] for p in positions], shares=shares, **style)


def step_token_grid(run, *, positions: list[int] | None = None, steps=None, max_steps: int = 8,
                    prompt_index: int = 0, negative: bool = False, **style) -> Figure:
    """Rows of steps (evenly spaced, or ``steps``) against the prompt's tokens (start, words, end)."""
    maps = run.attention
    steps = _spread(maps.num_steps, max_steps) if steps is None else list(steps)
    positions = default_positions(maps, prompt_index, negative) if positions is None else list(positions)
    data = maps.step_maps(steps, negative=negative)[:, prompt_index, positions]  # checks the steps
    steps = [s % maps.num_steps for s in steps]
    labels = maps.token_labels(prompt_index, negative=negative)
    rows = [f"step {s}\nt={maps.timesteps[s]:.0f}" for s in steps]
    return plot_step_token_grid(data, rows, [labels[p] for p in positions], **style)


def layer_token_grid(run, *, positions: list[int] | None = None, steps=None, prompt_index: int = 0,
                     negative: bool = False, **style) -> Figure:
    """Rows of cross-attention layers (down, mid, up) against the prompt's tokens; needs attention="per_layer"."""
    maps = run.attention
    positions = default_positions(maps, prompt_index, negative) if positions is None else list(positions)
    data = maps.layer_maps(steps=steps, negative=negative)[:, prompt_index, positions]
    labels = maps.token_labels(prompt_index, negative=negative)
    rows = [f"{short_layer_name(n)}\n{maps.layer_sizes[n][0]}x{maps.layer_sizes[n][1]}" for n in maps.layer_names]
    return plot_layer_token_grid(data, rows, [labels[p] for p in positions], **style)


def default_positions(maps, prompt_index: int = 0, negative: bool = False) -> list[int]:
    """The start token, every word token, the end token and the first padding token."""
    table = maps.token_table(prompt_index, negative=negative)[: maps.num_tokens]
    chosen = [t.position for t in table if t.kind in ("start", "word", "end")]
    padding = [t.position for t in table if t.kind == "padding"]
    return chosen + padding[:1]


def short_layer_name(name: str) -> str:
    """"down_blocks.1.attentions.0.transformer_blocks.0.attn2" → "down 1.0" (block, attention)."""
    parts = name.split(".")
    block = parts[0].removesuffix("_blocks").removesuffix("_block")
    numbers = [p for p in parts[1:] if p.isdigit()]
    kept = numbers[:2] if block != "mid" else numbers[:1]
    return f"{block} {'.'.join(kept)}".strip()


def _spread(count: int, most: int) -> list[int]:
    """At most ``most`` step indices from first to last, evenly spaced."""
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(count, most))})


def _array(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_slide(slide: dict, *, word: str = "cat", target: str = "kitten") -> Figure:
    """``studies.attention.slide_attention`` output: pictures above, the word's maps below, and how much
    each changes between neighbouring alphas (picture vs attention) in a third row."""
    alphas = slide["alphas"]
    count = len(alphas)
    figure = Figure(figsize=(1.3 * count, 4.6), layout="constrained")
    grid = figure.add_gridspec(3, count, height_ratios=[1, 1, 1.1])
    for col, alpha in enumerate(alphas):
        top, middle = figure.add_subplot(grid[0, col]), figure.add_subplot(grid[1, col])
        top.imshow(slide["images"][col])
        top.set_title(f"α={alpha:.2f}", fontsize=8)
        middle.imshow(_array(slide["maps"][col]), cmap="jet")
        _bare(top)
        _bare(middle)
    changes = figure.add_subplot(grid[2, :])
    middles = [(a + b) / 2 for a, b in zip(alphas[:-1], alphas[1:])]
    changes.plot(middles, slide["image_change"], marker="o", label="picture change (mean |Δpixel| / 255)")
    changes.plot(middles, slide["map_change"], marker="s", label=f"attention change of {word!r} (TV distance)")
    changes.set_xlabel(f"α ({word} → {target})")
    changes.legend(fontsize=7)
    figure.suptitle(f"sliding {word!r} toward {target!r}: pictures (top), attention to the word (middle)", fontsize=9)
    return figure
