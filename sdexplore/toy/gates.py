"""The toy model's quality gates, measured on what the model actually generates.

    python -m sdexplore.toy.gates            # prints every gate with its threshold and PASS/FAIL

- prompt following: held-out single-object prompts (kind/colour/position combinations never seen
  in training); the world's judge must find the asked kind, colour and position;
- cat vs kitten: among those prompts that ask for a cat or a kitten, the judge tells which;
- attention faithfulness: the object word's cross-attention map, thresholded, against the object's
  mask in the generated image (foreground pixels that differ from the known background colour);
- cat <-> kitten: sliding the "cat" token embedding toward "kitten" turns cats into kittens;
- speed: 25 steps with classifier-free guidance, one image, on this machine's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ..studies.attention import ATTENTION_THRESHOLD, attended_region, iou
from . import world
from .judge import foreground_mask, get_judge

THRESHOLDS = {"kind": 0.90, "color": 0.90, "position": 0.90, "cat_vs_kitten": 0.85, "mean_iou": 0.70,
              "seconds_25_steps": 1.5}
STEPS, GUIDANCE = 25, 7.5
VALIDATION_SEED = 100  # scenes and seeds for choosing the attention threshold; the gates use seed 0


def object_words(kind: str) -> list[str]:
    """The prompt words that name an object kind ("palm tree" -> ["palm", "tree"])."""
    return kind.split()


def generate(pipe, prompts: list[str], *, seed: int, batch: int = 16, **kwargs) -> np.ndarray:
    """uint8 [N, H, W, 3] images, one per prompt, deterministic for a seed."""
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, **kwargs}
    images = []
    for start in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(seed + start)
        out = pipe(prompts[start:start + batch], generator=generator, output_type="np", **kwargs)
        images.append((out.images * 255).round().astype(np.uint8))
    return np.concatenate(images)


def prompt_following(pipe, n: int = 100, seed: int = 0) -> dict:
    """Judge accuracies on n held-out single-object prompts."""
    scenes = world.held_out_prompts(n, seed=seed)
    images = generate(pipe, [world.canonical_prompt(s) for s in scenes], seed=seed)
    return get_judge().score(images, scenes)


def object_word_heats(pipe, n: int = 32, seed: int = 0, batch: int = 8):
    """Yield (heat [h, w], object mask bool [H, W]) for n held-out single-object scenes: the object
    word's map (all layers and steps averaged) and the object's pixels in the generated image."""
    from ..capture.run import trace

    scenes = world.held_out_prompts(n, seed=seed + 1)
    for start in range(0, n, batch):
        chunk = scenes[start:start + batch]
        prompts = [world.canonical_prompt(s) for s in chunk]
        run = trace(pipe, prompts, seed=seed + start, attention=True, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE)
        maps = run.attention.token_maps()  # [B, 77, h, w]; each image of the batch has its own prompt
        for index, (scene, image) in enumerate(zip(chunk, run.images)):
            heat = torch.stack([maps[index, run.attention.word_positions(word, index)].sum(0)
                                for word in object_words(scene.objects[0].kind)]).mean(0)
            yield heat, foreground_mask(np.asarray(image))


def attention_iou(pipe, n: int = 32, seed: int = 0, threshold: float = ATTENTION_THRESHOLD) -> dict:
    """Mean IoU of the thresholded object-word attention map vs the object's mask in the image."""
    ious = [iou(attended_region(heat, mask.shape, threshold), mask)
            for heat, mask in object_word_heats(pipe, n, seed)]
    return {"mean_iou": float(np.mean(ious)), "ious": ious}


def threshold_sweep(pipe, thresholds=(0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7), n: int = 32,
                    seed: int = VALIDATION_SEED) -> dict[float, float]:
    """{threshold: mean IoU} on validation scenes (other prompts and seeds than the gate's): how
    ``ATTENTION_THRESHOLD`` was chosen. The gate itself is then measured on its own scenes."""
    pairs = list(object_word_heats(pipe, n, seed))
    return {t: float(np.mean([iou(attended_region(h, m.shape, t), m) for h, m in pairs])) for t in thresholds}


def cat_kitten_interpolation(pipe, seeds: int = 8, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0) -> dict:
    """Fraction of images the judge calls "kitten" at each alpha of cat -> kitten."""
    from ..studies.interpolation import interpolated_prompt_embeds

    judge = get_judge()
    prompts = ["a photo of a grey cat at the center, plain white background",
               "a photo of an orange cat at the center, grass background"]
    rates = []
    negative = pipe.encode_prompt("", device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    for alpha in alphas:
        kinds = []
        for prompt in prompts:
            embeds = interpolated_prompt_embeds(pipe, prompt, "cat", "kitten", [alpha]).expand(seeds, -1, -1)
            out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative.expand(seeds, -1, -1),
                       generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                       guidance_scale=GUIDANCE, output_type="np")
            kinds += [p["kind"] for p in judge.predict((out.images * 255).round().astype(np.uint8))]
        rates.append(sum(k == "kitten" for k in kinds) / len(kinds))
    return {"alphas": list(alphas), "kitten_rate": rates}


def seconds_for_25_steps(pipe, repeats: int = 3) -> float:
    """Median wall time of one 25-step CFG generation."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        pipe("a photo of an orange cat on the left, sea background", num_inference_steps=STEPS,
             guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure_all(pipe, n: int = 100, n_attention: int = 32) -> dict:
    following = prompt_following(pipe, n=n)
    results = {key: following[key] for key in ("kind", "color", "position", "cat_vs_kitten")}
    results["all_three"] = following.get("all")
    results["mean_iou"] = attention_iou(pipe, n=n_attention)["mean_iou"]
    results["interpolation"] = cat_kitten_interpolation(pipe)
    results["seconds_25_steps"] = seconds_for_25_steps(pipe)
    return results


def passed(name: str, value: float) -> bool:
    return value <= THRESHOLDS[name] if name == "seconds_25_steps" else value >= THRESHOLDS[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=100, help="held-out prompts for prompt following")
    parser.add_argument("--n-attention", type=int, default=32)
    parser.add_argument("--sweep-threshold", action="store_true",
                        help="print mean IoU by attention threshold on validation scenes, then stop")
    args = parser.parse_args(argv)
    from ..models import load_pipeline

    pipe = load_pipeline(args.model)
    if args.sweep_threshold:
        for threshold, score in threshold_sweep(pipe, n=args.n_attention).items():
            print(f"threshold {threshold:.2f}   validation mean IoU {score:.3f}")
        return 0
    results = measure_all(pipe, n=args.n, n_attention=args.n_attention)
    failures = 0
    for name, threshold in THRESHOLDS.items():
        ok = passed(name, results[name])
        failures += not ok
        sign = "<=" if name == "seconds_25_steps" else ">="
        print(f"{name:18s} {results[name]:8.3f}   goal {sign} {threshold:<5}  {'PASS' if ok else 'FAIL'}")
    rates = results["interpolation"]
    print("cat->kitten        kitten rate by alpha " +
          ", ".join(f"{a:.2f}: {r:.2f}" for a, r in zip(rates["alphas"], rates["kitten_rate"])))
    print(f"all three right    {results['all_three']}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
