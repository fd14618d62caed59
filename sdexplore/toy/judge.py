"""A judge that reads toy-world images: which kind, which colour, where (one object, or two in a pair scene).

Images from a small diffusion model are blurry and noisy, so the judge measures rather than
matches: it finds the background from the image border (every background's colours are known),
takes the foreground as what is far from those colours, reads the position from the
foreground's centroid and feeds shape and colour measurements to two extra-trees classifiers
(kind, colour) trained on freshly rendered, deliberately degraded scenes. Nothing is stored on
disk; ``get_judge()`` builds one per process in a few seconds.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from sklearn.ensemble import ExtraTreesClassifier

from . import world

JUDGE_SIZE = 64  # images are resized to this before measuring
CROP_GRID = 16  # the foreground's bounding box is resampled to CROP_GRID x CROP_GRID
BORDER = 2  # width of the image border used to find the background
MIN_THRESHOLD = 38.0  # minimum RGB distance from the background that counts as foreground


# --------------------------------------------------------------------------- degradation


def degrade(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """uint8 [H, W, 3] -> the same made blurry/noisy/shifted like a generated image would be."""
    out = Image.fromarray(image)
    h, w = image.shape[:2]
    if rng.random() < 0.3:
        out = out.resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.8:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.6) * strength * h / JUDGE_SIZE))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.uniform(25, 85)))
        out = Image.open(buffer).convert("RGB")
    pixels = np.asarray(out, np.float32)
    pixels = pixels * rng.uniform(1 - 0.1 * strength, 1 + 0.1 * strength, 3)
    pixels += rng.uniform(-10, 10, 3) * strength + rng.normal(0, rng.uniform(0, 10) * strength, pixels.shape)
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- measuring


def _as_judge_size(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [64, 64, 3]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.shape[:2] != (JUDGE_SIZE, JUDGE_SIZE):
        resized = Image.fromarray(image.astype(np.uint8)).resize((JUDGE_SIZE, JUDGE_SIZE), Image.BOX)
        image = np.asarray(resized)
    return image.astype(np.float32)


def _distance_to_segments(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., 3] pixels -> [...] RGB distance to the segment a-b (a background and its blends)."""
    ab = b - a
    denom = float(ab @ ab)
    t = np.zeros(pixels.shape[:-1], np.float32) if denom == 0 else np.clip((pixels - a) @ ab / denom, 0, 1)
    return np.linalg.norm(pixels - (a + t[..., None] * ab), axis=-1)


def _border(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [N, 3] pixels of the outer BORDER-pixel ring."""
    b = BORDER
    return np.concatenate([image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3),
                           image[b:-b, :b].reshape(-1, 3), image[b:-b, -b:].reshape(-1, 3)])


def find_background(image: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """float [64, 64, 3] -> (background name, base rgb, texture rgb), colours re-fitted to the image."""
    border = _border(image)
    best, best_distance = None, np.inf
    for name, (base, texture) in world.BACKGROUND_RGB.items():
        base, texture = np.array(base, np.float32), np.array(texture, np.float32)
        distance = float(np.median(_distance_to_segments(border, base, texture)))
        if distance < best_distance:
            best, best_distance, colors = name, distance, (base, texture)
    base, texture = colors
    near_base = np.linalg.norm(border - base, axis=1) <= np.linalg.norm(border - texture, axis=1)
    fitted_base = np.median(border[near_base], axis=0) if near_base.sum() >= 8 else base
    if (~near_base).sum() >= 8:
        fitted_texture = np.median(border[~near_base], axis=0)
    else:  # texture unseen on the border: assume it shifted like the base
        fitted_texture = texture + fitted_base - base
    return best, fitted_base, fitted_texture


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """float [64, 64, 3] -> bool [64, 64]: what is far from the background, cleaned of specks."""
    _, base, texture = find_background(image)
    smooth = ndimage.uniform_filter(image, size=(3, 3, 1))
    distance = _distance_to_segments(smooth, base, texture)
    noise = float(np.median(_distance_to_segments(_border(smooth), base, texture)))
    mask = distance > max(MIN_THRESHOLD, 3.0 * noise)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(areas >= max(4.0, 0.2 * areas.max())) + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """bool [64, 64] -> area, bounding box, fill and the box resampled to CROP_GRID^2."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = (y1 - y0) / JUDGE_SIZE, (x1 - x0) / JUDGE_SIZE
    area = mask.sum() / mask.size
    crop = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255)
    grid = np.asarray(crop.resize((CROP_GRID, CROP_GRID), Image.BILINEAR), np.float32) / 255
    symmetric = (grid + grid[:, ::-1]) / 2  # the same whichever way the object faces
    widths = grid.mean(axis=1)
    return np.concatenate([[area, h, w, w / h, area / (h * w)], symmetric[:, : CROP_GRID // 2].ravel(),
                           widths / max(widths.max(), 1e-6)])


def _color_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Foreground colour percentiles, a coarse 4x4x4 RGB histogram and a hue histogram."""
    inner = ndimage.binary_erosion(mask)
    pixels = image[inner if inner.sum() >= 10 else mask]
    percentiles = np.percentile(pixels, [10, 25, 50, 75, 90], axis=0).ravel()
    bins = np.clip(pixels // 64, 0, 3).astype(int)
    histogram = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64) / len(pixels)
    return np.concatenate([percentiles / 255, histogram, _hue_histogram(pixels)])


HUE_BINS = 12


def _hue_histogram(pixels: np.ndarray) -> np.ndarray:
    """[N, 3] RGB -> [HUE_BINS + 3]: share of coloured pixels per hue, then the shares of
    grey-ish pixels that are dark, mid and light (saturation < 0.25)."""
    high, low = pixels.max(axis=1), pixels.min(axis=1)
    chroma = high - low
    saturation = chroma / np.maximum(high, 1)
    r, g, b = pixels.T
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(high == r, (g - b) / safe, np.where(high == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.mod(hue / 6, 1)
    coloured = (saturation >= 0.25) & (high > 40)
    hue_share = np.bincount((hue[coloured] * HUE_BINS).astype(int) % HUE_BINS, minlength=HUE_BINS)
    greys = np.bincount(np.clip(high[~coloured] // 86, 0, 2).astype(int), minlength=3)
    return np.concatenate([hue_share, greys]) / len(pixels)


N_FEATURES = 5 + CROP_GRID * CROP_GRID // 2 + CROP_GRID + 15 + 64 + HUE_BINS + 3


def measure(image: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """uint8 [H, W, 3] -> (feature vector [N_FEATURES], foreground centroid (x, y) as image
    fractions, or None when nothing stands out from the background)."""
    image = _as_judge_size(image)
    mask = foreground_mask(image)
    if mask.sum() < 4:
        return np.zeros(N_FEATURES, np.float32), None
    ys, xs = np.nonzero(mask)
    centroid = ((xs.mean() + 0.5) / JUDGE_SIZE, (ys.mean() + 0.5) / JUDGE_SIZE)
    return np.concatenate([_shape_features(mask), _color_features(image, mask)]).astype(np.float32), centroid


def position_of(centroid: tuple[float, float] | None) -> str:
    """The world position whose anchor is nearest the centroid ('center' when there is none)."""
    return "center" if centroid is None else world.nearest_position(*centroid)


# --------------------------------------------------------------------------- the judge


class Judge:
    """Predicts kind, colour and position of the single object in toy-world images."""

    def __init__(self, n_trees: int = 150):
        self.n_trees = n_trees
        self.kind_model: ExtraTreesClassifier | None = None
        self.color_model: ExtraTreesClassifier | None = None

    def fit(self, n: int = 3000, seed: int = 0) -> Judge:
        """Train on n freshly rendered single-object scenes, each degraded at random."""
        rng = np.random.default_rng(seed)
        features, kinds, colors = [], [], []
        for _ in range(n):
            scene = world.sample_scene(rng, n_objects=1)
            image = degrade(world.render(scene, rng=rng).image, rng)
            feature, centroid = measure(image)
            if centroid is None:
                continue
            features.append(feature)
            kinds.append(scene.objects[0].kind)
            colors.append(scene.objects[0].color)
        x = np.stack(features)
        self.kind_model = self._forest(seed).fit(x, kinds)
        self.color_model = self._forest(seed + 1).fit(x, colors)
        return self

    def _forest(self, seed: int) -> ExtraTreesClassifier:
        return ExtraTreesClassifier(n_estimators=self.n_trees, random_state=seed, n_jobs=1)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, str]]:
        """uint8 [N, H, W, 3] -> [{kind, color, position}] per image."""
        if self.kind_model is None:
            raise RuntimeError("the judge is not fitted; call fit() or use get_judge()")
        measured = [measure(image) for image in images]
        if not measured:
            return []
        x = np.stack([feature for feature, _ in measured])
        kinds, colors = self.kind_model.predict(x), self.color_model.predict(x)
        return [
            {"kind": str(k), "color": str(c), "position": position_of(centroid)}
            for k, c, (_, centroid) in zip(kinds, colors, measured)
        ]

    def score(
        self, images: np.ndarray | Sequence[np.ndarray], scenes: Sequence[world.SceneSpec]
    ) -> dict[str, float]:
        """Accuracies against single-object scenes: kind, color, position, all (all three right)
        and cat_vs_kitten (kind, on images whose true kind is cat or kitten; nan if none)."""
        if len(images) != len(scenes):
            raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
        if any(len(s.objects) != 1 for s in scenes):
            raise ValueError("the judge scores single-object scenes only")
        truth = [s.objects[0] for s in scenes]
        predicted = self.predict(images)
        right = {
            field: np.array([p[field] == getattr(t, field) for p, t in zip(predicted, truth)])
            for field in ("kind", "color", "position")
        }
        is_cat = np.array([t.kind in world.CAT_KINDS for t in truth])
        return {
            "kind": float(right["kind"].mean()),
            "color": float(right["color"].mean()),
            "position": float(right["position"].mean()),
            "all": float((right["kind"] & right["color"] & right["position"]).mean()),
            "cat_vs_kitten": float(right["kind"][is_cat].mean()) if is_cat.any() else float("nan"),
            "n": len(truth),
        }

    def predict_pair(self, image: np.ndarray, positions: tuple[str, str]) -> list[dict[str, str]]:
        """uint8 [H, W, 3] of a pair scene -> [{kind, color, position}] for the half of each stated position.

        positions: ("left", "right") / ("top", "bottom") in either order. Each half is read alone: the other
        half is painted over with the background's colour and the single-object judge reads what is left.
        """
        return self.predict([only_half(image, position) for position in positions])

    def score_pairs(self, images: np.ndarray | Sequence[np.ndarray],
                    scenes: Sequence[world.SceneSpec]) -> dict:
        """Against two-object scenes: ``both`` (both kinds found, each at its stated position), ``kinds`` (both
        kinds right, anywhere in their halves), ``objects`` (share of single objects found at their place), and
        ``outcomes``: how many pictures fell in each of PAIR_OUTCOMES (see ``pair_outcome``)."""
        if len(images) != len(scenes):
            raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
        if any(len(s.objects) != 2 for s in scenes):
            raise ValueError("score_pairs scores two-object scenes only")
        found, kinds, outcomes = [], [], dict.fromkeys(PAIR_OUTCOMES, 0)
        for image, scene in zip(images, scenes):
            read = self.predict_pair(image, tuple(o.position for o in scene.objects))
            kinds.append([r["kind"] == o.kind for r, o in zip(read, scene.objects)])
            found.append([r["kind"] == o.kind and r["position"] == o.position for r, o in zip(read, scene.objects)])
            outcomes[pair_outcome(read, scene)] += 1
        found, kinds = np.array(found), np.array(kinds)
        return {"both": float(found.all(axis=1).mean()), "kinds": float(kinds.all(axis=1).mean()),
                "objects": float(found.mean()), "n": len(scenes), "outcomes": outcomes}


PAIR_OUTCOMES = ("both at their places", "kinds right, a place off", "kinds swapped", "one kind twice",
                 "a kind wrong")


def pair_outcome(read: list[dict[str, str]], scene: world.SceneSpec) -> str:
    """Which of PAIR_OUTCOMES the judge's reading of each stated half (``predict_pair``) is for a pair scene:
    both kinds at their places; both kinds in their halves but one read at another place; each half holding the
    other's kind (the objects' places swapped); the same kind in both halves; otherwise a kind wrong."""
    wanted, got = [o.kind for o in scene.objects], [r["kind"] for r in read]
    if got == wanted:
        placed = all(r["position"] == o.position for r, o in zip(read, scene.objects))
        return "both at their places" if placed else "kinds right, a place off"
    if got == wanted[::-1]:
        return "kinds swapped"
    return "one kind twice" if got[0] == got[1] else "a kind wrong"


HALVES = {"left": (slice(None), slice(0, JUDGE_SIZE // 2)), "right": (slice(None), slice(JUDGE_SIZE // 2, None)),
          "top": (slice(0, JUDGE_SIZE // 2), slice(None)), "bottom": (slice(JUDGE_SIZE // 2, None), slice(None))}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def only_half(image: np.ndarray, position: str) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [64, 64, 3]: the half at ``position`` kept, the other half the background's colour."""
    if position not in HALVES:
        raise ValueError(f"a pair scene's object is at one of {', '.join(HALVES)}, got {position!r}")
    image = _as_judge_size(image)
    _, base, _ = find_background(image)
    out = image.copy()
    out[HALVES[OPPOSITE[position]]] = base
    return out.round().clip(0, 255).astype(np.uint8)


_JUDGE: Judge | None = None


def get_judge() -> Judge:
    """The process-wide judge, fitted on first use (seeded, a few seconds)."""
    global _JUDGE
    if _JUDGE is None:
        _JUDGE = Judge().fit()
    return _JUDGE
