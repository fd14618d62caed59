"""The toy world: seeded procedural scenes of cats, kittens, balls, fish and palm trees.

A scene is one or two objects on a background. ``render`` draws it (numpy + PIL, bold filled
shapes a small diffusion model can learn) together with one exact mask per object, ``caption``
describes it in CLIP-style lower-case English and ``WORDS`` lists every word a caption can hold.
Some (kind, colour, position) combinations are held out of training (``is_held_out``) so that
evaluation can ask for things the model never saw together.

Geometry is written in 64-px units and scaled, so ``render(scene, size=128)`` draws the same
picture at twice the resolution.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import cos, radians, sin, sqrt

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

KINDS = ("cat", "kitten", "ball", "fish", "palm tree")
CAT_KINDS = ("cat", "kitten")
FUR_COLORS = ("orange", "black", "white", "grey", "brown")
OBJECT_COLORS = ("red", "blue", "yellow", "orange", "green", "purple")
COLORS_BY_KIND = {
    "cat": FUR_COLORS,
    "kitten": FUR_COLORS,
    "ball": OBJECT_COLORS,
    "fish": OBJECT_COLORS,
    "palm tree": ("green",),
}
COLORS = tuple(sorted(set(FUR_COLORS) | set(OBJECT_COLORS)))
PATTERNS = ("plain", "tabby", "bicolor")
EYE_COLORS = ("green", "yellow", "blue")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
BACKGROUNDS = ("sea", "sand", "grass", "plain white", "plain pink")

RGB = {
    "orange": (240, 135, 30),
    "black": (32, 32, 36),
    "white": (246, 246, 244),
    "grey": (128, 128, 134),
    "brown": (122, 78, 42),
    "red": (212, 30, 45),
    "blue": (40, 75, 220),
    "yellow": (245, 215, 40),
    "green": (45, 165, 55),
    "purple": (140, 55, 180),
}
EYE_RGB = {"green": (70, 210, 60), "yellow": (250, 215, 20), "blue": (70, 150, 250)}
PUPIL_RGB = (15, 15, 15)
BELLY_RGB = RGB["white"]
PALM_LEAF_RGB = RGB["green"]
PALM_TRUNK_RGB = (135, 92, 48)
COCONUT_RGB = (95, 60, 30)
# Each background: its base colour, then the colour of its texture (waves, speckles, blades).
BACKGROUND_RGB = {
    "sea": ((35, 95, 175), (110, 170, 228)),
    "sand": ((226, 200, 146), (198, 170, 114)),
    "grass": ((88, 165, 62), (58, 128, 42)),
    "plain white": ((250, 250, 250), (250, 250, 250)),
    "plain pink": ((242, 166, 196), (242, 166, 196)),
}
# Cats of these colours never get these patterns: stripes vanish on black, a white patch on white.
PATTERNS_BY_FUR = {"black": ("plain", "bicolor"), "white": ("plain", "tabby")}
KIND_WEIGHTS = {"cat": 0.3, "kitten": 0.3, "ball": 0.14, "fish": 0.14, "palm tree": 0.12}
MIN_CONTRAST = 85.0  # RGB distance between an object's key colours and its background

# Where an object's mask centroid goes, as (x, y) fractions of the image.
ANCHORS = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "center": (0.5, 0.5),
}
JITTER = 0.03  # max centroid shift, as a fraction of the image
SIZE_SCALE = {"small": 0.75, "large": 1.0}
N_BACKGROUND_VARIANTS = 8
PAIR_SHARE = 0.3  # share of random scenes that hold two objects


@dataclass(frozen=True)
class BodyPlan:
    """A sitting cat seen from the front, in 64-px units (scale 'large')."""

    head_radius: float
    body_width: float
    body_height: float
    ear_height: float
    eye_width: float
    eye_height: float
    tail_length: float
    tail_width: float


BODY_PLANS = {
    "cat": BodyPlan(6.0, 16.0, 15.0, 4.5, 3.6, 3.8, 11.0, 3.0),
    "kitten": BodyPlan(7.5, 11.0, 8.0, 2.8, 4.4, 4.6, 5.0, 2.5),
}


# --------------------------------------------------------------------------- scene specs


def _check(value, allowed: Sequence, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object: kind, colour (fur colour for cats), pattern and eyes (None unless a cat),
    position in the image and size."""

    kind: str
    color: str
    pattern: str | None = None
    eyes: str | None = None
    position: str = "center"
    size: str = "large"

    def __post_init__(self):
        _check(self.kind, KINDS, "kind")
        _check(self.color, COLORS_BY_KIND[self.kind], f"colour for a {self.kind}")
        _check(self.position, POSITIONS, "position")
        _check(self.size, SIZES, "size")
        if self.kind in CAT_KINDS:
            _check(self.pattern, PATTERNS, "pattern")
            _check(self.eyes, EYE_COLORS, "eye colour")
        elif self.pattern is not None or self.eyes is not None:
            raise ValueError(f"a {self.kind} has no pattern or eyes; give pattern=None, eyes=None")


@dataclass(frozen=True)
class SceneSpec:
    """One or two objects on a background."""

    objects: list[ObjectSpec]
    background: str

    def __post_init__(self):
        _check(self.background, BACKGROUNDS, "background")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene holds 1 or 2 objects, got {len(self.objects)}")


@dataclass
class RenderedScene:
    """image: uint8 [H, W, 3]; masks: one bool [H, W] per object (visible pixels), scene order."""

    image: np.ndarray
    masks: list[np.ndarray]
    scene: SceneSpec


# --------------------------------------------------------------------------- sampling


def key_colors(kind: str, color: str) -> list[tuple[int, int, int]]:
    """The colours that make up most of an object's area."""
    if kind == "palm tree":
        return [PALM_LEAF_RGB, PALM_TRUNK_RGB]
    return [RGB[color]]


def _distance_to_segment(point, a, b) -> float:
    """RGB distance from ``point`` to the segment a-b (a background and its blends)."""
    p, a, b = (np.asarray(v, float) for v in (point, a, b))
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip((p - a) @ ab / (ab @ ab), 0, 1))
    return float(np.linalg.norm(p - (a + t * ab)))


def contrasts(kind: str, color: str, background: str) -> bool:
    """True when the object stands out from the background (every key colour far from it)."""
    base, texture = BACKGROUND_RGB[background]
    return all(_distance_to_segment(c, base, texture) >= MIN_CONTRAST for c in key_colors(kind, color))


@lru_cache(maxsize=None)
def _colors_on(background: str) -> dict[str, tuple[str, ...]]:
    """For each kind, the colours that contrast with ``background`` (kinds with none left out)."""
    table = {k: tuple(c for c in COLORS_BY_KIND[k] if contrasts(k, c, background)) for k in KINDS}
    return {k: cs for k, cs in table.items() if cs}


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.random() * len(items))]


def _pick_weighted(rng: np.random.Generator, items: Sequence[str], weights: dict[str, float]):
    total = sum(weights[i] for i in items)
    r = rng.random() * total
    for item in items:
        r -= weights[item]
        if r < 0:
            return item
    return items[-1]


def _pattern_and_eyes(rng: np.random.Generator, kind: str, color: str) -> tuple[str | None, str | None]:
    """A random pattern (one that shows on this fur) and eye colour for cats; None otherwise."""
    if kind not in CAT_KINDS:
        return None, None
    return _pick(rng, PATTERNS_BY_FUR.get(color, PATTERNS)), _pick(rng, EYE_COLORS)


def _sample_object(rng, position: str, size: str, background: str, exclude) -> ObjectSpec:
    colors_on = _colors_on(background)
    kinds = tuple(colors_on)
    for _ in range(1000):
        kind = _pick_weighted(rng, kinds, KIND_WEIGHTS)
        color = _pick(rng, colors_on[kind])
        obj = ObjectSpec(kind, color, *_pattern_and_eyes(rng, kind, color), position, size)
        if exclude is None or not exclude(obj):
            return obj
    raise ValueError(f"no object at {position} on {background} passes the exclude filter")


def _pair_places(rng: np.random.Generator) -> tuple[str, str]:
    """The two places of a pair scene: left/right or top/bottom, in a random order."""
    pair = _pick(rng, (("left", "right"), ("top", "bottom")))
    return pair[::-1] if rng.random() < 0.5 else pair


def sample_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | None = None,
    exclude: Callable[[ObjectSpec], bool] | None = None,
    pair_share: float = PAIR_SHARE,
) -> SceneSpec:
    """A random scene: 1 object, or 2 (small) side by side / one above the other with probability ``pair_share``.

    exclude: objects for which it returns True are never produced (e.g. ``is_held_out``).
    """
    if not 0.0 <= pair_share <= 1.0:
        raise ValueError(f"pair_share must be a probability in [0, 1], got {pair_share}")
    if n_objects is None:
        n_objects = 1 if rng.random() < 1.0 - pair_share else 2
    _check(n_objects, (1, 2), "n_objects")
    background = _pick(rng, BACKGROUNDS)
    if n_objects == 1:
        placements = [(_pick(rng, POSITIONS), _pick(rng, SIZES))]
    else:
        placements = [(p, "small") for p in _pair_places(rng)]
    objects = [_sample_object(rng, pos, size, background, exclude) for pos, size in placements]
    return SceneSpec(objects, background)


# --------------------------------------------------------------------------- held-out split


def is_held_out(obj: ObjectSpec) -> bool:
    """Deterministic held-out (kind, colour, position) combinations, about 1 in 8.

    Each (kind, colour) pair loses at most one position, so every kind, colour and position
    still appears in training.
    """
    return _is_held_out_combo(obj.kind, obj.color, obj.position)


def _is_held_out_combo(kind: str, color: str, position: str) -> bool:
    k, c, p = KINDS.index(kind), COLORS_BY_KIND[kind].index(color), POSITIONS.index(position)
    return (k + 2 * c + p) % 8 == 3


def held_out_combos() -> list[tuple[str, str, str]]:
    """Every held-out (kind, colour, position)."""
    return [
        (k, c, p)
        for k in KINDS
        for c in COLORS_BY_KIND[k]
        for p in POSITIONS
        if _is_held_out_combo(k, c, p)
    ]


def held_out_prompts(n: int, seed: int = 0) -> list[SceneSpec]:
    """n single-object scenes whose object is held out, cycling through every held-out combo."""
    rng = np.random.default_rng(seed)
    combos = held_out_combos()
    order = rng.permutation(len(combos))
    scenes = []
    for i in range(n):
        kind, color, position = combos[order[i % len(combos)]]
        backgrounds = [b for b in BACKGROUNDS if contrasts(kind, color, b)]
        obj = ObjectSpec(kind, color, *_pattern_and_eyes(rng, kind, color), position, _pick(rng, SIZES))
        scenes.append(SceneSpec([obj], _pick(rng, backgrounds)))
    return scenes


def held_out_pairs(n: int, seed: int = 0, *, both: bool = False) -> list[SceneSpec]:
    """n two-object scenes (left/right or top/bottom, small) that no training scene shows: one object (both, with
    ``both=True``) is a held-out combination at its place, the other one a trained one."""
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < n:
        pair = _pair_places(rng)
        held = {0, 1} if both else {int(rng.random() * 2)}
        background = _pick(rng, BACKGROUNDS)
        try:
            objects = [_sample_object(rng, position, "small", background,
                                      (lambda o: not is_held_out(o)) if i in held else is_held_out)
                       for i, position in enumerate(pair)]
        except ValueError:  # no held-out object at that place contrasts with this background: draw again
            continue
        scenes.append(SceneSpec(objects, background))
    return scenes


# --------------------------------------------------------------------------- shapes
# A shape is ("ellipse", (x0, y0, x1, y1), rgb), ("polygon", [(x, y), ...], rgb) or
# ("line", [(x, y), ...], rgb, width), in 64-px units around the object's own origin.


def _ellipse(cx, cy, rx, ry, rgb):
    return ("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry), rgb)


def _cat_shapes(obj: ObjectSpec, flip: bool) -> list[tuple]:
    """A sitting cat or kitten, front view: tail, body, head, ears, eyes (+ stripes/patches)."""
    plan = BODY_PLANS[obj.kind]
    fur = RGB[obj.color]
    side = -1.0 if flip else 1.0
    bw, bh, r = plan.body_width / 2, plan.body_height / 2, plan.head_radius
    hy = -bh - 0.55 * r  # head centre
    tail = [
        (side * bw * 0.5, bh * 0.7),
        (side * (bw + plan.tail_length * 0.55), bh * 0.45),
        (side * (bw + plan.tail_length * 0.8), bh * 0.45 - plan.tail_length * 0.9),
    ]
    shapes = [("line", tail, fur, plan.tail_width), _ellipse(0, 0, bw, bh, fur)]
    if obj.pattern == "tabby":
        shapes += _body_stripes(bw, bh, -1 + 0.45 * r / bh + 0.15, _stripe_rgb(obj.color))
    if obj.pattern == "bicolor":
        shapes.append(_ellipse(0, bh * 0.2, bw * 0.5, bh * 0.7, BELLY_RGB))
    for s in (-1.0, 1.0):
        tip = (s * r * 0.75, hy - r - plan.ear_height)
        shapes.append(("polygon", [(s * r * 0.1, hy - r * 0.7), tip, (s * r * 1.0, hy - r * 0.2)], fur))
    shapes.append(_ellipse(0, hy, r, r, fur))
    if obj.pattern == "tabby":
        stripe = _stripe_rgb(obj.color)
        for x in (-0.4 * r, 0.0, 0.4 * r):
            shapes.append(("line", [(x, hy - r * 0.95), (x, hy - r * 0.55)], stripe, 1.0))
        for s in (-1.0, 1.0):  # cheek stripes
            for y in (hy + r * 0.25, hy + r * 0.55):
                shapes.append(("line", [(s * r * 0.6, y), (s * r * 0.98, y)], stripe, 1.0))
    if obj.pattern == "bicolor":
        shapes.append(_ellipse(0, hy + r * 0.55, r * 0.55, r * 0.4, BELLY_RGB))
    ew, eh = plan.eye_width / 2, plan.eye_height / 2
    for s in (-1.0, 1.0):
        ex, ey = s * r * 0.42, hy - r * 0.05
        shapes.append(_ellipse(ex, ey, ew, eh, EYE_RGB[obj.eyes]))
        shapes.append(_ellipse(ex, ey, ew * 0.22, eh * 0.7, PUPIL_RGB))
    return shapes


def _stripe_rgb(color: str) -> tuple[int, int, int]:
    if color == "white":
        return (150, 150, 156)
    return tuple(int(v * 0.5) for v in RGB[color])


def _body_stripes(bw: float, bh: float, top: float, rgb) -> list[tuple]:
    """Horizontal tabby stripes clipped to the body ellipse (half-axes bw, bh), from ``top``
    (a fraction of bh, below the head) down, about one stripe per 3 px of body height."""
    n = max(2, round((0.7 - top) * bh / 3))
    stripes = []
    for frac in np.linspace(top, 0.7, n):
        half = bw * sqrt(max(0.0, 1 - frac * frac)) * 0.85
        stripes.append(("line", [(-half, frac * bh), (half, frac * bh)], rgb, min(2.0, bh * 0.26)))
    return stripes


def _ball_shapes(obj: ObjectSpec, flip: bool) -> list[tuple]:
    r = 9.0
    highlight = _ellipse(-r * 0.4, -r * 0.4, r * 0.25, r * 0.25, (255, 255, 255))
    return [_ellipse(0, 0, r, r, RGB[obj.color]), highlight]


def _fish_shapes(obj: ObjectSpec, flip: bool) -> list[tuple]:
    """A fish facing right (left when flipped): tail, top fin, body, eye."""
    s = -1.0 if flip else 1.0
    rgb = RGB[obj.color]
    tail = [(s * -8.0, 0.0), (s * -15.0, -6.5), (s * -15.0, 6.5)]
    fin = [(s * -3.0, -4.0), (s * 3.0, -4.0), (s * -4.0, -8.5)]
    return [
        ("polygon", tail, rgb),
        ("polygon", fin, rgb),
        _ellipse(0, 0, 10.5, 5.5, rgb),
        _ellipse(s * 5.5, -1.2, 1.4, 1.4, PUPIL_RGB),
    ]


def _palm_shapes(obj: ObjectSpec, flip: bool) -> list[tuple]:
    """A palm tree leaning slightly: curved trunk, six drooping fronds, coconuts."""
    s = -1.0 if flip else 1.0
    top = (s * 3.0, -8.0)
    trunk = [(0.0, 12.0), (s * 0.8, 4.0), (s * 2.0, -2.0), top]
    shapes = [("line", trunk, PALM_TRUNK_RGB, 3.0)]
    for angle in (-170, -135, -100, -65, -30, 5):
        shapes.append(("polygon", _frond(top, radians(angle), 11.5, 2.2), PALM_LEAF_RGB))
    for dx in (-1.6, 1.6):
        shapes.append(_ellipse(top[0] + dx, top[1] + 1.8, 1.7, 1.7, COCONUT_RGB))
    return shapes


def _frond(base, angle: float, length: float, width: float) -> list[tuple[float, float]]:
    """A leaf polygon from ``base`` along ``angle`` (radians, screen coords), drooping at its tip."""
    dx, dy = cos(angle), sin(angle)
    nx, ny = -dy, dx
    tip = (base[0] + length * dx, base[1] + length * dy + 3.5)
    mid = (base[0] + 0.55 * length * dx, base[1] + 0.55 * length * dy)
    return [base, (mid[0] + width * nx, mid[1] + width * ny), tip, (mid[0] - width * nx, mid[1] - width * ny)]


SHAPE_MAKERS = {
    "cat": _cat_shapes,
    "kitten": _cat_shapes,
    "ball": _ball_shapes,
    "fish": _fish_shapes,
    "palm tree": _palm_shapes,
}


def _draw(draw: ImageDraw.ImageDraw, shapes, scale: float, ox: float, oy: float, fill=None) -> None:
    """Draw shapes scaled by ``scale`` and moved to (ox, oy); fill overrides every colour."""
    for shape in shapes:
        kind, geometry, rgb = shape[0], shape[1], fill if fill is not None else shape[2]
        if kind == "ellipse":
            x0, y0, x1, y1 = geometry
            draw.ellipse((x0 * scale + ox, y0 * scale + oy, x1 * scale + ox, y1 * scale + oy), fill=rgb)
        else:
            points = [(x * scale + ox, y * scale + oy) for x, y in geometry]
            if kind == "polygon":
                draw.polygon(points, fill=rgb)
            else:
                draw.line(points, fill=rgb, width=max(1, round(shape[3] * scale)), joint="curve")


@lru_cache(maxsize=None)
def _centroid_offset(kind: str, size: str, flip: bool, image_size: int) -> tuple[float, float]:
    """Pixel offset of an object's mask centroid from its shape origin."""
    pattern, eyes = ("plain", "green") if kind in CAT_KINDS else (None, None)
    obj = ObjectSpec(kind, COLORS_BY_KIND[kind][0], pattern, eyes)
    canvas = Image.new("L", (2 * image_size, 2 * image_size), 0)
    scale = image_size / IMAGE_SIZE * SIZE_SCALE[size]
    _draw(ImageDraw.Draw(canvas), SHAPE_MAKERS[kind](obj, flip), scale, image_size, image_size, fill=1)
    ys, xs = np.nonzero(np.asarray(canvas))
    return float(xs.mean() + 0.5 - image_size), float(ys.mean() + 0.5 - image_size)


# --------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=None)
def render_background(background: str, size: int = IMAGE_SIZE, variant: int = 0) -> np.ndarray:
    """uint8 [size, size, 3] read-only background; ``variant`` (0..7) picks the waves / speckles.

    ``render(scene)`` without rng draws on variant 0.
    """
    _check(background, BACKGROUNDS, "background")
    base, texture = (np.array(c, np.uint8) for c in BACKGROUND_RGB[background])
    rng = np.random.default_rng(1000 + variant)
    u = (np.arange(size) + 0.5) * IMAGE_SIZE / size  # pixel centres in 64-px units
    x, y = np.meshgrid(u, u)
    if background == "sea":
        phase = rng.uniform(0, 2 * np.pi)
        wave = y + rng.uniform(0, 9) + 1.5 * np.sin(2 * np.pi * x / 14 + phase)
        is_texture = np.mod(wave, 9) < 2.2
    elif background == "sand":
        is_texture = rng.random((IMAGE_SIZE, IMAGE_SIZE))[y.astype(int), x.astype(int)] < 0.08
    elif background == "grass":
        blades = rng.random((IMAGE_SIZE // 3 + 1, IMAGE_SIZE)) < 0.22
        is_texture = blades[(y / 3).astype(int), x.astype(int)]
    else:
        is_texture = np.zeros((size, size), bool)
    image = np.where(is_texture[..., None], texture, base)
    image.setflags(write=False)
    return image


# --------------------------------------------------------------------------- rendering


def nearest_position(x: float, y: float) -> str:
    """The position whose anchor is nearest (x, y), given as fractions of the image."""
    return min(ANCHORS, key=lambda p: (ANCHORS[p][0] - x) ** 2 + (ANCHORS[p][1] - y) ** 2)


def mask_position(mask: np.ndarray) -> str:
    """bool [H, W] -> the position its centroid lies in."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return nearest_position((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)


def render(
    scene: SceneSpec, *, size: int = IMAGE_SIZE, rng: np.random.Generator | None = None
) -> RenderedScene:
    """Draw a scene: image uint8 [size, size, 3] and one exact bool mask per object.

    With rng, objects get a small position jitter, a random facing and the background a random
    texture variant; without, the drawing is canonical.
    """
    variant = 0 if rng is None else int(rng.random() * N_BACKGROUND_VARIANTS)
    image = Image.fromarray(render_background(scene.background, size, variant))
    labels = Image.new("L", (size, size), 0)
    paint, label = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for index, obj in enumerate(scene.objects, start=1):
        flip = False if rng is None else rng.random() < 0.5
        jx, jy = (0.0, 0.0) if rng is None else (rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER))
        cx, cy = _centroid_offset(obj.kind, obj.size, flip, size)
        ax, ay = ANCHORS[obj.position]
        ox, oy = (ax + jx) * size - cx, (ay + jy) * size - cy
        shapes = SHAPE_MAKERS[obj.kind](obj, flip)
        scale = size / IMAGE_SIZE * SIZE_SCALE[obj.size]
        _draw(paint, shapes, scale, ox, oy)
        _draw(label, shapes, scale, ox, oy, fill=index)
    label_array = np.asarray(labels)
    masks = [label_array == i for i in range(1, len(scene.objects) + 1)]
    return RenderedScene(np.asarray(image), masks, scene)


def make_dataset(
    n: int,
    seed: int,
    size: int = IMAGE_SIZE,
    *,
    exclude: Callable[[ObjectSpec], bool] | None = is_held_out,
    pair_share: float = PAIR_SHARE,
) -> tuple[np.ndarray, list[str], list[SceneSpec]]:
    """n random scenes: (images uint8 [n, size, size, 3], captions, scenes).

    Held-out objects are left out by default (``exclude=None`` keeps them).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene = sample_scene(rng, exclude=exclude, pair_share=pair_share)
        images[i] = render(scene, size=size, rng=rng).image
        captions.append(caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


# --------------------------------------------------------------------------- captions

KIND_WORDS = {"cat": ("cat",), "kitten": ("kitten",), "ball": ("ball",), "fish": ("fish",),
              "palm tree": ("palm tree", "palm tree", "palm")}
COLOR_WORDS = {c: (c,) for c in COLORS} | {"grey": ("grey", "gray")}
PATTERN_WORDS = {"plain": ("solid",), "tabby": ("tabby", "striped"), "bicolor": ("bicolor",)}
POSITION_WORDS = {
    "left": ("on the left", "at the left", "on the left side", "to the left"),
    "right": ("on the right", "at the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the picture"),
    "center": ("in the center", "in the middle", "in the centre", "at the center"),
}
BACKGROUND_LABELS = {  # used as "<label> background"
    "sea": ("sea", "ocean", "sea waves", "wave"),
    "sand": ("sand", "sandy"),
    "grass": ("grass", "green grass"),
    "plain white": ("plain white", "white"),
    "plain pink": ("plain pink", "pink"),
}
BACKGROUND_PLACES = {  # used after the object
    "sea": ("by the sea", "in front of the sea", "with waves behind", "on the sea"),
    "sand": ("on the sand", "on a sandy beach", "on sand"),
    "grass": ("on the grass", "on a lawn", "in the grass"),
    "plain white": ("on a plain white background", "on white"),
    "plain pink": ("on a plain pink background", "on pink"),
}
SINGLE_TEMPLATES = (
    "a photo of {obj} {pos}, {label} background",
    "{obj} {pos} {place}",
    "{obj} {pos}, {label}",
    "{pos}, {obj}, {label} background",
    "{label} background, {obj} {pos}",
    "a picture of {obj} {place}, {pos}",
    "an image of {obj} {pos} {place}",
)
PAIR_TEMPLATES = (
    "a photo of {obj} {pos} and {obj2} {pos2}, {label} background",
    "{obj} {pos}, {obj2} {pos2}, {label}",
    "{obj} {pos} and {obj2} {pos2} {place}",
    "a picture of {obj} and {obj2} {place}, the first {pos}, the second {pos2}",
)
OTHER_WORDS = ("a", "an", "with", "eyes", "and", "small", "large")


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(obj: ObjectSpec, rng: np.random.Generator | None, detail: float) -> str:
    """'a small orange tabby cat with green eyes'; with rng, optional parts are dropped at random
    (kept with probability ``detail``) and synonyms picked; without rng, everything is stated."""

    def keep(p: float) -> bool:
        return rng is None or rng.random() < p

    def word(options: Sequence[str]) -> str:
        return options[0] if rng is None else _pick(rng, options)

    color = word(COLOR_WORDS[obj.color])
    words = [obj.size] if keep(0.6 * detail) else []
    pattern = None
    if obj.pattern in ("tabby", "bicolor") and keep(0.85 * detail):
        pattern = word(PATTERN_WORDS[obj.pattern])
    elif obj.pattern == "plain" and rng is not None and rng.random() < 0.15:
        pattern = "solid"
    if pattern == "bicolor" and rng is not None and rng.random() < 0.3:
        words += [color, "and", "white"]
    else:
        words += [color] if pattern is None else [color, pattern]
    words.append(word(KIND_WORDS[obj.kind]))
    if obj.eyes is not None and keep(0.85 * detail):
        words += ["with", obj.eyes, "eyes"]
    return _with_article(" ".join(words))


def caption(scene: SceneSpec, rng: np.random.Generator) -> str:
    """A random CLIP-style lower-case caption; kind, colour and position are always stated."""
    detail = 1.0 if len(scene.objects) == 1 else 0.5
    fields = {
        "obj": _object_phrase(scene.objects[0], rng, detail),
        "pos": _pick(rng, POSITION_WORDS[scene.objects[0].position]),
        "label": _pick(rng, BACKGROUND_LABELS[scene.background]),
        "place": _pick(rng, BACKGROUND_PLACES[scene.background]),
    }
    if len(scene.objects) == 1:
        return _pick(rng, SINGLE_TEMPLATES).format(**fields)
    fields["obj2"] = _object_phrase(scene.objects[1], rng, detail)
    fields["pos2"] = _pick(rng, POSITION_WORDS[scene.objects[1].position])
    return _pick(rng, PAIR_TEMPLATES).format(**fields)


def canonical_prompt(scene: SceneSpec) -> str:
    """The one fixed-template caption used for evaluation prompts, every attribute stated.

    e.g. 'a photo of a large orange tabby cat with green eyes on the left, sea background'
    (plain cats get no pattern word).
    """
    objects = [f"{_object_phrase(o, None, 1.0)} {POSITION_WORDS[o.position][0]}" for o in scene.objects]
    return f"a photo of {' and '.join(objects)}, {BACKGROUND_LABELS[scene.background][0]} background"


def caption_words(text: str) -> list[str]:
    """The words of a caption, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def _all_words() -> list[str]:
    tables = (KIND_WORDS, COLOR_WORDS, PATTERN_WORDS, POSITION_WORDS, BACKGROUND_LABELS, BACKGROUND_PLACES)
    texts = [t for table in tables for options in table.values() for t in options]
    blanks = dict.fromkeys(("obj", "pos", "label", "place", "obj2", "pos2"), "")
    texts += [t.format(**blanks) for t in SINGLE_TEMPLATES + PAIR_TEMPLATES]
    texts += list(OTHER_WORDS) + list(EYE_COLORS) + list(SIZES)
    return sorted({w for t in texts for w in caption_words(t)})


WORDS = _all_words()
