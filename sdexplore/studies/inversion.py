"""Training sets and measurements for textual inversion on the toy world (the training is sdexplore.textual_inversion).

Two concepts, as the study notes tell it:
- one the world has words for: "an orange bicolor cat with green eyes", drawn by ``world.render`` in five scenes;
- one with no words: ``MARK``, a small magenta/cyan checkerboard badge the world never draws or names, painted
  into the top-left corner of five ordinary scenes.
Each caption names the rest of the scene (position, background, other objects) in the world's own words, so the
new token has only the concept to carry.
"""

from __future__ import annotations

import numpy as np

from ..toy import world
from ..toy.judge import get_judge

CONCEPT = world.ObjectSpec("cat", "orange", "bicolor", "green")
CONCEPT_SCENES = [("left", "sea"), ("right", "grass"), ("center", "sand"), ("top", "plain white"),
                  ("bottom", "plain pink")]
MARK_BOX = (2, 2, 14, 14)  # x0, y0, x1, y1 in a 64 x 64 picture: where the badge is painted
MARK_COLORS = ((255, 0, 255), (0, 255, 255))  # magenta, cyan: in no palette of the world
MARK_SCENES = [world.SceneSpec([world.ObjectSpec("cat", "grey", "tabby", "yellow", "right")], "sea"),
               world.SceneSpec([world.ObjectSpec("ball", "red", position="center")], "grass"),
               world.SceneSpec([world.ObjectSpec("kitten", "white", "bicolor", "blue", "bottom")], "sand"),
               world.SceneSpec([world.ObjectSpec("fish", "yellow", position="right")], "plain white"),
               world.SceneSpec([world.ObjectSpec("palm tree", "green", position="center")], "plain pink")]


def _place(position: str, background: str) -> str:
    return f"{world.POSITION_WORDS[position][0]}, {world.BACKGROUND_LABELS[background][0]} background"


def concept_prompt(token: str, position: str = "center", background: str = "plain white") -> str:
    """'a photo of a large <token> at the center, plain white background': the token stands for the whole cat."""
    return f"a photo of a large {token} {_place(position, background)}"


def concept_training_set(token: str, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 [5, 64, 64, 3] scenes of the orange bicolor green-eyed cat, and captions with ``token`` for the cat."""
    rng = np.random.default_rng(seed)
    pictures, captions = [], []
    for position, background in CONCEPT_SCENES:
        obj = world.ObjectSpec(CONCEPT.kind, CONCEPT.color, CONCEPT.pattern, CONCEPT.eyes, position)
        pictures.append(world.render(world.SceneSpec([obj], background), rng=rng).image)
        captions.append(concept_prompt(token, position, background))
    return np.stack(pictures), captions


def mark_pattern() -> np.ndarray:
    """uint8 [h, w, 3]: the badge, 3-pixel checker squares of magenta and cyan."""
    x0, y0, x1, y1 = MARK_BOX
    rows, columns = np.indices((y1 - y0, x1 - x0)) // 3
    return np.array(MARK_COLORS, dtype=np.uint8)[(rows + columns) % 2]


def draw_mark(picture: np.ndarray) -> np.ndarray:
    """A copy of ``picture`` (uint8 [64, 64, 3]) with the badge painted into ``MARK_BOX``."""
    x0, y0, x1, y1 = MARK_BOX
    marked = picture.copy()
    marked[y0:y1, x0:x1] = mark_pattern()
    return marked


def mark_prompt(token: str, scene: world.SceneSpec) -> str:
    """The scene's own canonical caption with the token added: '..., sea background, <token>'."""
    return f"{world.canonical_prompt(scene)}, {token}"


def mark_training_set(token: str, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 [5, 64, 64, 3] ordinary scenes with the badge painted on, and their captions with ``token``."""
    rng = np.random.default_rng(seed)
    pictures = [draw_mark(world.render(scene, rng=rng).image) for scene in MARK_SCENES]
    return np.stack(pictures), [mark_prompt(token, scene) for scene in MARK_SCENES]


def mark_presence(pictures, tolerance: float = 100.0) -> np.ndarray:
    """[K]: share of the badge's pixels that ``pictures`` (uint8 [K, 64, 64, 3]) show in the badge's colour there.

    1.0 on a training picture, ~0 where the corner shows sea, grass or sand. tolerance: RGB distance (0..441).
    """
    x0, y0, x1, y1 = MARK_BOX
    corner = np.asarray(pictures, dtype=np.float32)[:, y0:y1, x0:x1]
    distance = np.linalg.norm(corner - mark_pattern().astype(np.float32), axis=-1)
    return (distance <= tolerance).reshape(len(corner), -1).mean(1)


def mark_colour_share(pictures, tolerance: float = 100.0) -> np.ndarray:
    """[K]: share of the corner's pixels in either badge colour, wherever the checker squares fall (a looser test)."""
    x0, y0, x1, y1 = MARK_BOX
    corner = np.asarray(pictures, dtype=np.float32)[:, y0:y1, x0:x1]
    near = [np.linalg.norm(corner - np.array(color, np.float32), axis=-1) <= tolerance for color in MARK_COLORS]
    return (near[0] | near[1]).reshape(len(corner), -1).mean(1)


def judge_concept(pictures) -> dict[str, float]:
    """Share of ``pictures`` (uint8 [K, H, W, 3]) the world's judge calls a cat, orange, and both."""
    found = get_judge().predict(np.asarray(pictures))
    kind = np.array([p["kind"] == CONCEPT.kind for p in found])
    color = np.array([p["color"] == CONCEPT.color for p in found])
    return {"kind": float(kind.mean()), "color": float(color.mean()), "both": float((kind & color).mean())}
