"""img2prompt two ways: what CLIP thinks an image shows vs what the diffusion model would most likely draw it from.

The study notes' "important point": a CLIP interrogator searches for the words that raise CLIP's cosine
similarity with the image; "it doesn't increase the likelihood of that picture being output when you put
that prompt in". Both are computed here, for any model:

- ``interrogate``: CLIP-interrogator style. Start from a caption guess and, brute force, try appending each
  phrase of a vocabulary; keep the one that raises the image-text cosine similarity most; repeat until no
  phrase raises it. Works with any ``CLIPModel`` and its ``CLIPProcessor``.
- ``denoising_errors``: the model's own likelihood (the diffusion-classifier idea, Li et al. 2023 "Your
  Diffusion Model is Secretly a Zero-Shot Classifier"). Encode the image with the VAE, noise its latent at a
  fixed set of timesteps with fixed seeds, and measure the UNet's epsilon-prediction error under each
  candidate prompt: the error is a Monte-Carlo estimate of the prompt's diffusion loss (an ELBO term), so
  lower = the prompt more likely produced the image. Works with any SD-style pipeline (``vae``, ``unet``,
  ``encode_prompt``, a scheduler with ``add_noise``); v-prediction outputs are converted to epsilon.

``recovery_study`` measures both on held-out toy-world images (see its docstring).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TIMESTEPS = (100, 300, 500, 700, 900)  # t = 999 tells nothing under zero terminal SNR (x_t is the noise)
NOISE_SEEDS = (0, 1)


# --- CLIP interrogator ------------------------------------------------------------------------


@torch.no_grad()
def clip_similarities(clip, processor, image, prompts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """Cosine similarity [P] of one image (PIL or uint8 [H, W, 3]) with each prompt, in CLIP's joint space."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    device = clip.device
    pixels = processor(images=_as_pil(image), return_tensors="pt").pixel_values.to(device, clip.dtype)
    image_embed = _unit(_features(clip.get_image_features(pixel_values=pixels)))
    sims = []
    for start in range(0, len(prompts), batch):
        tokens = processor.tokenizer(list(prompts[start:start + batch]), padding=True, truncation=True,
                                     return_tensors="pt").to(device)
        text = _unit(_features(clip.get_text_features(input_ids=tokens.input_ids,
                                                      attention_mask=tokens.attention_mask)))
        sims.append((text @ image_embed[0]).float().cpu())
    return torch.cat(sims)


@dataclass
class Interrogation:
    """prompt: the final prompt; similarity: its cosine with the image; path: (phrase added, cosine after)
    per greedy step, starting with (start, its cosine)."""

    prompt: str
    similarity: float
    path: list[tuple[str, float]]


def interrogate(clip, processor, image, phrases: Sequence[str], start: str = "a photo of", max_phrases: int = 8,
                separator: str = " ") -> Interrogation:
    """Greedy brute-force search: append the phrase that raises CLIP cosine similarity most, until none does.

    phrases: the vocabulary to search (the notes' 5,219 artist names; here the world's words and phrases).
    Each phrase is used at most once; ``max_phrases`` caps the number of additions.
    """
    if not isinstance(phrases, Sequence) or isinstance(phrases, str) or not phrases:
        raise ValueError(f"phrases must be a non-empty list of strings, got {phrases!r}")
    if max_phrases < 1:
        raise ValueError(f"max_phrases must be >= 1, got {max_phrases}")
    prompt, left = start, list(dict.fromkeys(phrases))
    best = float(clip_similarities(clip, processor, image, [prompt])[0])
    path = [(start, best)]
    while left and len(path) <= max_phrases:
        candidates = [f"{prompt}{separator}{phrase}".strip() for phrase in left]
        sims = clip_similarities(clip, processor, image, candidates)
        index = int(sims.argmax())
        if float(sims[index]) <= best:
            break
        prompt, best = candidates[index], float(sims[index])
        path.append((left.pop(index), best))
    return Interrogation(prompt, best, path)


# --- the model's own likelihood ---------------------------------------------------------------


@torch.no_grad()
def image_latents(pipe, image) -> torch.Tensor:
    """The VAE posterior mean of one image (PIL or uint8 [H, W, 3]), scaled as the UNet sees latents: [1, C, h, w]."""
    pixels = pipe.image_processor.preprocess(_as_pil(image)).to(pipe.device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * pipe.vae.config.scaling_factor


@torch.no_grad()
def denoising_errors(pipe, image, prompts: Sequence[str], *, timesteps: Sequence[int] = TIMESTEPS,
                     seeds: Sequence[int] = NOISE_SEEDS, batch: int = 32) -> torch.Tensor:
    """Mean squared epsilon-prediction error [P, T, S] of the UNet under each prompt.

    For each timestep t and seed s the same noise is added to the image's latent for every prompt (so the
    prompts are compared on identical noisy inputs); averaged over pixels. ``.mean((1, 2))`` gives the
    per-prompt score: lower = the model more likely drew this image from that prompt.
    """
    _check_pipeline(pipe)
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    top = pipe.scheduler.config.num_train_timesteps
    if not timesteps or any(not 0 <= int(t) < top for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list within [0, {top}), got {list(timesteps)!r}")
    if not seeds:
        raise ValueError("seeds must be a non-empty list of ints")
    latents = image_latents(pipe, image)
    embeds = _prompt_embeds(pipe, list(prompts), batch)
    alphas = pipe.scheduler.alphas_cumprod.to(pipe.device)
    errors = torch.empty(len(prompts), len(timesteps), len(seeds))
    for ti, t in enumerate(timesteps):
        step = torch.tensor([int(t)], device=pipe.device)
        for si, seed in enumerate(seeds):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(int(seed)))
            noise = noise.to(pipe.device, latents.dtype)
            noisy = pipe.scheduler.add_noise(latents, noise, step)
            for start in range(0, len(prompts), batch):
                chunk = embeds[start:start + batch]
                out = pipe.unet(noisy.expand(len(chunk), -1, -1, -1), step.expand(len(chunk)),
                                encoder_hidden_states=chunk).sample
                eps = _as_epsilon(pipe.scheduler, out, noisy, alphas[int(t)])
                errors[start:start + len(chunk), ti, si] = (eps - noise).pow(2).mean((1, 2, 3)).float().cpu()
    return errors


def _prompt_embeds(pipe, prompts: list[str], batch: int) -> torch.Tensor:
    """[P, 77, D] through the pipeline's own encode_prompt (its tokenizer, clip_skip default, cut at 77)."""
    chunks = [pipe.encode_prompt(prompt=prompts[i:i + batch], device=pipe.device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)[0] for i in range(0, len(prompts), batch)]
    return torch.cat(chunks)


def _as_epsilon(scheduler, output: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The UNet's output as an epsilon prediction (epsilon models: as is; v models: sqrt(a) v + sqrt(1-a) x_t)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * noisy
    raise ValueError(f"denoising_errors supports epsilon and v_prediction models, this one predicts {kind!r}")


def _check_pipeline(pipe) -> None:
    missing = [name for name in ("vae", "unet", "scheduler", "encode_prompt", "image_processor")
               if getattr(pipe, name, None) is None]
    if missing or not hasattr(pipe.scheduler, "add_noise") or getattr(pipe, "text_encoder_2", None) is not None:
        raise TypeError(f"pipe must be a Stable Diffusion 1.x/2.x-style pipeline (vae, unet, encode_prompt, a "
                        f"scheduler with add_noise, one text encoder); {type(pipe).__name__} lacks "
                        f"{missing or 'that shape'}")


def rank_by_likelihood(pipe, image, prompts: Sequence[str], **kwargs) -> list[tuple[str, float]]:
    """(prompt, mean denoising error) pairs, most likely first."""
    scores = denoising_errors(pipe, image, prompts, **kwargs).mean((1, 2))
    return sorted(zip(prompts, scores.tolist()), key=lambda pair: pair[1])


def rank_by_clip(clip, processor, image, prompts: Sequence[str]) -> list[tuple[str, float]]:
    """(prompt, cosine similarity) pairs, most similar first."""
    scores = clip_similarities(clip, processor, image, prompts)
    return sorted(zip(prompts, scores.tolist()), key=lambda pair: -pair[1])


def _features(features) -> torch.Tensor:
    return features if torch.is_tensor(features) else features.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _as_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be a PIL image or uint8 [H, W, 3], got {array.dtype} {array.shape}")
    return Image.fromarray(array)


# --- the toy world: candidates, phrases, reading a prompt back --------------------------------

ATTRIBUTES = ("kind", "color", "position")


def world_phrases() -> list[str]:
    """The toy world's vocabulary as phrases a caption is made of: kinds, colours, patterns, eyes, sizes,
    positions and backgrounds (e.g. "cat", "orange", "tabby", "with green eyes", "on the left", "sea background")."""
    from ..toy import world

    phrases = [w for words in world.KIND_WORDS.values() for w in words]
    phrases += [w for words in world.COLOR_WORDS.values() for w in words]
    phrases += [w for words in world.PATTERN_WORDS.values() for w in words]
    phrases += [f"with {eyes} eyes" for eyes in world.EYE_COLORS] + list(world.SIZES)
    phrases += [p for options in world.POSITION_WORDS.values() for p in options]
    phrases += [f"{label} background" for options in world.BACKGROUND_LABELS.values() for label in options]
    return list(dict.fromkeys(phrases))


def read_attributes(prompt: str) -> dict[str, str | None]:
    """The kind, colour and position a prompt states first (None where it states none); eye colours and
    background phrases are not read as the object's colour."""
    from ..toy import world

    text = " " + " ".join(re.findall(r"[a-z]+", prompt.lower())) + " "
    # Colour words that are not the object's: eye colours and backgrounds ("plain white background").
    text = re.sub(r" with [a-z]+ eyes ", " ", text)
    places = [p for options in world.BACKGROUND_PLACES.values() for p in options]
    labels = [f"{label} background" for options in world.BACKGROUND_LABELS.values() for label in options]
    for phrase in sorted(places + labels, key=len, reverse=True):
        text = text.replace(f" {phrase} ", " ")

    def first(table: dict[str, Sequence[str]]) -> str | None:
        hits = [(text.find(f" {option} "), key) for key, options in table.items() for option in options
                if f" {option} " in text]
        return min(hits)[1] if hits else None

    return {"kind": first(world.KIND_WORDS), "color": first(world.COLOR_WORDS),
            "position": first(world.POSITION_WORDS)}


def describe(kind: str, color: str, position: str, background: str) -> str:
    """'a photo of an orange cat on the left, sea background' (the evaluation prompts' one template)."""
    from ..toy import world

    phrase = f"{color} {kind}"
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"a photo of {article} {phrase} {world.POSITION_WORDS[position][0]}, " \
           f"{world.BACKGROUND_LABELS[background][0]} background"


def candidate_prompts(scene) -> dict[str, list[str]]:
    """For each attribute, the true caption with that attribute set to every value the world allows.

    kind: the 5 kinds, each in the true colour if it has it, else its colour nearest in RGB; colour: every
    colour of the true kind; position: the 5 positions. The background is stated as it is (it is not measured).
    Each list holds the true caption (the other attributes always true); ``describe`` writes them.
    """
    from ..toy import world

    obj, background = scene.objects[0], scene.background

    def nearest_color(kind: str) -> str:
        allowed = world.COLORS_BY_KIND[kind]
        if obj.color in allowed:
            return obj.color
        target = np.array(world.RGB[obj.color], float)
        return min(allowed, key=lambda c: float(np.linalg.norm(np.array(world.RGB[c], float) - target)))

    return {
        "kind": [describe(k, nearest_color(k), obj.position, background) for k in world.KINDS],
        "color": [describe(obj.kind, c, obj.position, background) for c in world.COLORS_BY_KIND[obj.kind]],
        "position": [describe(obj.kind, obj.color, p, background) for p in world.POSITIONS],
    }


def recovery_study(pipe, clip, processor, n: int = 24, seed: int = 11, *, timesteps=TIMESTEPS,
                   seeds=NOISE_SEEDS, start: str = "a photo of") -> dict[str, torch.Tensor]:
    """Both ways on n held-out one-object world images (kind/colour/position combinations neither model saw).

    Per image and attribute (kind, colour, position; columns in that order):
    - ``interrogator_correct`` [n, 3]: the free greedy CLIP search (from ``start`` over ``world_phrases``)
      states the true value first;
    - ``clip_correct`` / ``likelihood_correct`` [n, 3]: among ``candidate_prompts`` for that attribute, the
      one CLIP likes best / the model finds most likely holds the true value;
    - ``disagree`` [n, 3]: CLIP's favourite candidate is not the model's most likely one;
    - ``clip_scores`` / ``likelihood_scores`` [n, 3, 6]: each candidate's cosine / mean denoising error
      (NaN past a list's end), ``true_index`` [n, 3]: where the true value sits in each list.
    Also ``interrogator_length`` [n]: phrases the search added. Tensors only (``sdexplore.cache`` stores them).
    """
    from ..toy.clip_gates import held_out_images

    images, scenes = held_out_images(n, seed)
    width = 6
    result = {k: torch.zeros(n, 3, dtype=torch.bool) for k in
              ("interrogator_correct", "clip_correct", "likelihood_correct", "disagree")}
    result["clip_scores"] = torch.full((n, 3, width), float("nan"))
    result["likelihood_scores"] = torch.full((n, 3, width), float("nan"))
    result["true_index"] = torch.zeros(n, 3, dtype=torch.long)
    result["interrogator_length"] = torch.zeros(n, dtype=torch.long)
    phrases = world_phrases()
    for i, (image, scene) in enumerate(zip(images, scenes)):
        truth = dataclasses.asdict(scene.objects[0])
        found = interrogate(clip, processor, image, phrases, start=start)
        read = read_attributes(found.prompt)
        result["interrogator_length"][i] = len(found.path) - 1
        candidates = candidate_prompts(scene)
        unique = list(dict.fromkeys(p for a in ATTRIBUTES for p in candidates[a]))  # the true caption once
        clip_all = dict(zip(unique, clip_similarities(clip, processor, image, unique).tolist()))
        errors = denoising_errors(pipe, image, unique, timesteps=timesteps, seeds=seeds).mean((1, 2))
        like_all = dict(zip(unique, errors.tolist()))
        for a, attribute in enumerate(ATTRIBUTES):
            prompts = candidates[attribute]
            clip_scores = torch.tensor([clip_all[p] for p in prompts])
            like_scores = torch.tensor([like_all[p] for p in prompts])
            true_index = [read_attributes(p)[attribute] for p in prompts].index(truth[attribute])
            result["interrogator_correct"][i, a] = read[attribute] == truth[attribute]
            result["clip_correct"][i, a] = int(clip_scores.argmax()) == true_index
            result["likelihood_correct"][i, a] = int(like_scores.argmin()) == true_index
            result["disagree"][i, a] = int(clip_scores.argmax()) != int(like_scores.argmin())
            result["clip_scores"][i, a, :len(prompts)] = clip_scores
            result["likelihood_scores"][i, a, :len(prompts)] = like_scores
            result["true_index"][i, a] = true_index
    return result


def summarize(result: dict[str, torch.Tensor]) -> dict:
    """Accuracies per way and attribute, and disagreement counts (per attribute and in total)."""
    summary = {}
    for way in ("interrogator", "clip", "likelihood"):
        correct = result[f"{way}_correct"].float().mean(0)
        summary[way] = {a: float(v) for a, v in zip(ATTRIBUTES, correct)}
    disagree = result["disagree"]
    summary["disagreements"] = {a: int(v) for a, v in zip(ATTRIBUTES, disagree.sum(0))}
    summary["disagreements"]["total"] = int(disagree.sum())
    summary["questions"] = int(disagree.numel())
    return summary


def toy_recovery(n: int = 24, seed: int = 11, *, timesteps=TIMESTEPS, seeds=NOISE_SEEDS, pipe=None,
                 clip_folder=None) -> dict[str, torch.Tensor]:
    """``recovery_study`` with the shipped toy model and toy CLIP, through ``sdexplore.cache`` (a notebook and
    its claims test share one computation). ``pipe``: an already loaded toy pipeline, to save loading it again."""
    from ..cache import cached
    from ..models import load_pipeline
    from ..toy.clip_gates import CLIP_WEIGHTS, load_toy_clip

    folder = clip_folder or CLIP_WEIGHTS

    def compute():
        clip, processor = load_toy_clip(folder)
        return recovery_study(pipe or load_pipeline("toy"), clip, processor, n=n, seed=seed, timesteps=timesteps,
                              seeds=seeds)

    return cached("img2prompt_recovery", compute, model="toy", clip=str(folder), n=n, seed=seed,
                  timesteps=list(timesteps), seeds=list(seeds))
