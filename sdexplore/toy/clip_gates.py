"""The toy CLIP's quality gates, measured on held-out scenes (combinations it never saw in training).

    python -m sdexplore.toy.clip_gates                       # the shipped toy CLIP
    python -m sdexplore.toy.clip_gates --model runs/toy/clip --record   # and write them into its training.json

- zero-shot kind, colour and position: each held-out image is matched against one text embedding per
  (kind, colour, position) combination, that combination's prompt ensemble (captions written by the world's
  own caption templates over random backgrounds, sizes, patterns and synonyms, averaged as CLIP averages its
  "a photo of a {}" ensembles); the best-matching combination is the prediction;
- the study notes' "There are 5 images and 5 texts, which one is the pair?": five fresh scenes, one of
  each kind, against their own captions; every pair must be the best match in its row and its column.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from . import world

THRESHOLDS = {"kind": 0.95, "color": 0.90, "position": 0.90, "pairs_on_diagonal": 1.0}
EVAL_SEED = 7  # held-out scenes for the gates (the training data leaves their combinations out)
CLIP_WEIGHTS = Path(__file__).parent / "weights" / "clip"


def load_toy_clip(folder: str | Path = CLIP_WEIGHTS):
    """(CLIPModel, CLIPProcessor) from a folder ``clip.train_clip`` wrote (default: the shipped one)."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no toy CLIP in {folder}; train one with `python -m sdexplore.toy.clip --out DIR`")
    return CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)


def combinations() -> list[tuple[str, str, str]]:
    """Every (kind, colour, position) the world can draw: 23 kind-colour pairs x 5 positions."""
    return [(k, c, p) for k in world.KINDS for c in world.COLORS_BY_KIND[k] for p in world.POSITIONS]


def ensemble_captions(kind: str, color: str, position: str, n: int, rng: np.random.Generator) -> list[str]:
    """n world captions of a one-object scene with this kind, colour and position (the rest random)."""
    from .clip import random_object

    backgrounds = [b for b in world.BACKGROUNDS if world.contrasts(kind, color, b)]
    captions = []
    for _ in range(n):
        obj = random_object(kind, color, position, world.SIZES[rng.integers(2)], rng)
        captions.append(world.caption(world.SceneSpec([obj], backgrounds[rng.integers(len(backgrounds))]), rng))
    return captions


def class_embeddings(clip, tokenizer, per_class: int = 8, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Prompt-ensemble text embeddings [C, D] (unit length), one per ``combinations()`` entry, and the list."""
    from .clip import text_embeddings

    rng = np.random.default_rng(seed)
    combos = combinations()
    texts = [t for combo in combos for t in ensemble_captions(*combo, per_class, rng)]
    embeds = text_embeddings(clip, tokenizer, texts).reshape(len(combos), per_class, -1).mean(1)
    return embeds / embeds.norm(dim=-1, keepdim=True), combos


def held_out_images(n: int, seed: int = EVAL_SEED) -> tuple[np.ndarray, list[world.SceneSpec]]:
    """n held-out one-object scenes rendered with jitter, facing and background variants: uint8 [n, 64, 64, 3]."""
    scenes = world.held_out_prompts(n, seed=seed)
    rng = np.random.default_rng(seed)
    return np.stack([world.render(s, rng=rng).image for s in scenes]), scenes


def zero_shot(clip, tokenizer, n: int = 300, seed: int = EVAL_SEED) -> dict:
    """Fraction of n held-out images whose best-matching combination has the true kind, colour, position."""
    from .clip import image_embeddings

    images, scenes = held_out_images(n, seed)
    classes, combos = class_embeddings(clip, tokenizer)
    best = (image_embeddings(clip, images) @ classes.T).argmax(1)
    predicted = [combos[i] for i in best.tolist()]
    truth = [(s.objects[0].kind, s.objects[0].color, s.objects[0].position) for s in scenes]
    return {name: float(np.mean([p[i] == t[i] for p, t in zip(predicted, truth)]))
            for i, name in enumerate(("kind", "color", "position"))}


def five_scenes(seed: int = EVAL_SEED) -> list[world.SceneSpec]:
    """Five one-object scenes, one of each kind, drawn from a seed the training never used (the 5 x 5
    matrix's rows; the world holds out no palm-tree combination, so these are fresh scenes, not held-out ones)."""
    rng, scenes = np.random.default_rng(seed), {}
    while len(scenes) < len(world.KINDS):
        scene = world.sample_scene(rng, n_objects=1)
        scenes.setdefault(scene.objects[0].kind, scene)
    return [scenes[k] for k in world.KINDS]


def similarity_matrix(clip, tokenizer, scenes: list[world.SceneSpec] | None = None, seed: int = EVAL_SEED) -> dict:
    """The notes' "5 images and 5 texts, which one is the pair?".

    Returns {"similarity": cosine [N images, N captions] (pairs on the diagonal), "images": uint8
    [N, 64, 64, 3], "captions": N canonical captions}. Default: ``five_scenes(seed)``.
    """
    from .clip import image_embeddings, text_embeddings

    scenes = scenes or five_scenes(seed)
    rng = np.random.default_rng(seed)
    images = np.stack([world.render(s, rng=rng).image for s in scenes])
    captions = [world.canonical_prompt(s) for s in scenes]
    similarity = image_embeddings(clip, images) @ text_embeddings(clip, tokenizer, captions).T
    return {"similarity": similarity, "images": images, "captions": captions}


def pairs_on_diagonal(similarity: torch.Tensor) -> float:
    """Fraction of pairs that are the best match both in their row (image) and their column (caption)."""
    n = len(similarity)
    rows = similarity.argmax(1) == torch.arange(n)
    cols = similarity.argmax(0) == torch.arange(n)
    return float((rows & cols).float().mean())


def word_mixing(text_model, tokenizer, n: int = 600, seed: int = 0) -> list[float]:
    """How much the kind word's hidden state looks like its whole caption, after each layer of a text tower.

    For n one-object world captions: the mean cosine between the state at the kind word (e.g. "ball") and
    the mean state of the caption's words, after each layer (through the final layer norm), layer 1 first.
    Near 1: the word's state says what the whole caption says, so a UNet's cross-attention map of that word
    spreads over the picture. (CLIP's loss reads only the end token after the last layer: the last layer's
    other outputs feed nothing the loss sees.) text_model: a CLIPTextModel or CLIPModel.text_model."""
    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng, n_objects=1) for _ in range(n)]
    captions = [world.caption(scene, rng) for scene in scenes]
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    inner = getattr(text_model, "text_model", text_model)
    with torch.no_grad():
        hidden = inner(input_ids=tokens.input_ids, output_hidden_states=True).hidden_states[1:]
        kind_ids = {kind: tokenizer(kind, add_special_tokens=False).input_ids[-1] for kind in world.KINDS}
        rows, positions, lengths = [], [], []
        for row, (ids, scene) in enumerate(zip(tokens.input_ids.tolist(), scenes)):
            wanted = kind_ids[scene.objects[0].kind]
            if wanted in ids:
                rows.append(row)
                positions.append(ids.index(wanted))
                lengths.append(int(tokens.attention_mask[row].sum()))
        mixing = []
        for states in hidden:
            states = inner.final_layer_norm(states)
            word = states[rows, positions]  # [N, width]
            means = torch.stack([states[r, 1:length - 1].mean(0) for r, length in zip(rows, lengths)])
            mixing.append(float(torch.nn.functional.cosine_similarity(word, means).mean()))
    return mixing


def measure_all(clip, tokenizer, n: int = 300) -> dict:
    results = zero_shot(clip, tokenizer, n=n)
    results["pairs_on_diagonal"] = pairs_on_diagonal(similarity_matrix(clip, tokenizer)["similarity"])
    return results


def report(results: dict) -> tuple[list[str], int]:
    """Printable lines and the number of failed gates."""
    lines, failures = [], 0
    for name, threshold in THRESHOLDS.items():
        ok = results[name] >= threshold
        failures += not ok
        lines.append(f"{name:18s} {results[name]:8.3f}   goal >= {threshold:<5}  {'PASS' if ok else 'FAIL'}")
    return lines, failures


def record_gates(folder: str | Path, n: int = 300) -> dict:
    """Measure the gates of the CLIP in ``folder``, print them, add them to its training.json."""
    folder = Path(folder)
    clip, processor = load_toy_clip(folder)
    results = measure_all(clip, processor.tokenizer, n=n)
    lines, failures = report(results)
    print("\n".join(lines))
    summary_path = folder / "training.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["gates"] = {"n_held_out": n, "eval_seed": EVAL_SEED, **results, "thresholds": THRESHOLDS,
                        "passed": failures == 0}
    summary_path.write_text(json.dumps(summary, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(CLIP_WEIGHTS), help="a toy CLIP folder")
    parser.add_argument("--n", type=int, default=300, help="held-out images for zero-shot accuracy")
    parser.add_argument("--record", action="store_true", help="write the results into the folder's training.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.record:
        results = record_gates(args.model, n=args.n)
        return 1 if report(results)[1] else 0
    clip, processor = load_toy_clip(args.model)
    lines, failures = report(measure_all(clip, processor.tokenizer, n=args.n))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
