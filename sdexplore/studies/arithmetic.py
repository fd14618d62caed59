"""Word-vector arithmetic in prompt space: "cat - orange + black", at the encoder's input or at its output.

The notes: "the prompt is immediately embedded in the vector space, so it can be added and scalar
multiplied". A slot of a prompt (a word or phrase in it) is filled with each term of an expression, giving one
prompt per term; their embeddings are combined with the expression's coefficients:

- ``where="input"``: the token embeddings (rows of the embedding table, before position embeddings and the
  encoder layers) are combined; the encoder then runs as usual. Every term must have the same number of tokens,
  so that the rows line up; for single-token words this is exactly e(cat) - e(orange) + e(black) in the slot.
- ``where="output"``: the encoder outputs (what the UNet gets) of the term prompts are combined.

With coefficients that sum to 1 (1 - 1 + 1) the rest of the prompt is left as it was at the input, and at the
output too wherever the encoder did not mix the slot into it.
"""

from __future__ import annotations

import re

import torch

from .interpolation import single_token_id
from .prompt_tensor import _embeddings, prompt_ids

WHERE = ("input", "output")
_TERM = re.compile(r"^\s*(?:([+-]?\d*\.?\d+)\s*\*?\s+)?(.+?)\s*$")


def parse_expression(expression: str) -> list[tuple[float, str]]:
    """'cat - orange + black' -> [(1.0, 'cat'), (-1.0, 'orange'), (1.0, 'black')]; '0.5 cat + 0.5 kitten' too.

    Terms are separated by ' + ' or ' - ' with spaces around the sign (so 'x-ray' stays one term)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"expression must be a non-empty str like 'cat - orange + black', got {expression!r}")
    pieces = re.split(r"(?:^|\s+)([+-])\s+", expression.strip())  # [term, sign, term, sign, term, ...]
    signs = ["+"] + pieces[1::2]
    if not pieces[0].strip():  # a leading sign: "- palm tree + ..."
        pieces, signs = pieces[2:], [pieces[1]] + pieces[3::2]
    terms = []
    for index, (sign, piece) in enumerate(zip(signs, pieces[::2])):
        match = _TERM.match(piece)
        if not piece.strip() or match is None:
            raise ValueError(f"expression {expression!r}: term {index + 1} is empty")
        coefficient = float(match.group(1)) if match.group(1) else 1.0
        terms.append((-coefficient if sign == "-" else coefficient, match.group(2)))
    return terms


def slot_prompts(prompt: str, slot: str, expression: str) -> list[tuple[float, str]]:
    """(coefficient, prompt with the slot's first occurrence replaced by the term) per term of the expression."""
    pattern = re.compile(rf"(?<!\w){re.escape(slot.strip())}(?!\w)", re.IGNORECASE)
    if not slot.strip() or pattern.search(prompt) is None:
        words = sorted(set(re.findall(r"\w+", prompt.lower())))
        raise ValueError(f"slot {slot!r} is not in the prompt {prompt!r}; its words are: {', '.join(words)}")
    return [(c, pattern.sub(term, prompt, count=1)) for c, term in parse_expression(expression)]


def combine(embeddings: list[torch.Tensor], coefficients: list[float]) -> torch.Tensor:
    """sum_i c_i * e_i for tensors of one shape; ValueError naming the shapes when they differ."""
    if len(embeddings) != len(coefficients) or not embeddings:
        raise ValueError(f"need one coefficient per embedding, got {len(coefficients)} for {len(embeddings)}")
    shapes = [tuple(e.shape) for e in embeddings]
    if len(set(shapes)) > 1:
        raise ValueError(f"embeddings to combine must have one shape, got {shapes}")
    return sum(float(c) * e for c, e in zip(coefficients, embeddings))


def word_vector(pipe, expression: str) -> torch.Tensor:
    """[D] input token-embedding arithmetic of single-token words: 'cat - orange + black'."""
    table = pipe.text_encoder.get_input_embeddings().weight
    rows, coefficients = [], []
    for coefficient, word in parse_expression(expression):
        rows.append(table[single_token_id(pipe.tokenizer, word)].detach())
        coefficients.append(coefficient)
    return combine(rows, coefficients)


@torch.no_grad()
def arithmetic_embeds(pipe, prompt: str, slot: str, expression: str, *, where: str = "input") -> torch.Tensor:
    """[1, 77, D] prompt embeddings with ``slot`` standing for ``expression`` (see the module docstring)."""
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    terms = slot_prompts(prompt, slot, expression)
    coefficients = [c for c, _ in terms]
    if where == "output":
        outputs = [pipe.encode_prompt(text, device=pipe.device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=False)[0] for _, text in terms]
        return combine(outputs, coefficients)
    _check_aligned(pipe.tokenizer, slot, expression)
    encoder = pipe.text_encoder
    token_rows = combine([_embeddings(encoder).token_embedding(prompt_ids(pipe.tokenizer, text).to(encoder.device))
                          for _, text in terms], coefficients)
    handle = _embeddings(encoder).token_embedding.register_forward_hook(lambda module, args, output: token_rows)
    try:
        return encoder(prompt_ids(pipe.tokenizer, terms[0][1]).to(encoder.device))[0].to(pipe.unet.dtype)
    finally:
        handle.remove()


def _check_aligned(tokenizer, slot: str, expression: str) -> None:
    terms = [term for _, term in parse_expression(expression)]
    counts = {term: len(tokenizer(term, add_special_tokens=False).input_ids) for term in terms}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{term!r}: {n} token{'s' * (n != 1)}" for term, n in counts.items())
        raise ValueError(f"input-level arithmetic combines token rows position by position, so every term must "
                         f"have the same number of tokens; got {listed} (use where='output', or other words)")


@torch.no_grad()
def arithmetic_pictures(pipe, prompt: str, slot: str, expressions: list[str], *, where: str, seeds: list[int],
                        num_inference_steps: int = 25, guidance_scale: float = 7.5):
    """uint8 [E, S, H, W, 3]: every expression generated with every seed (negative prompt "")."""
    import numpy as np

    negative = pipe.encode_prompt("", device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    rows = []
    for expression in expressions:
        embeds = arithmetic_embeds(pipe, prompt, slot, expression, where=where)
        out = pipe(prompt_embeds=embeds.expand(len(seeds), -1, -1),
                   negative_prompt_embeds=negative.expand(len(seeds), -1, -1),
                   generator=[torch.Generator().manual_seed(s) for s in seeds],
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="np")
        rows.append((out.images * 255).round().astype(np.uint8))
    return np.stack(rows)


def arithmetic_sweep(pipe, prompt: str, slot: str, expressions: list[str], seeds: list[int], *,
                     num_inference_steps: int = 20) -> dict[str, torch.Tensor]:
    """{"input": uint8 [E, S, H, W, 3], "output": the same}: each expression at both levels (for sdexplore.cache)."""
    return {where: torch.from_numpy(arithmetic_pictures(pipe, prompt, slot, expressions, where=where, seeds=seeds,
                                                        num_inference_steps=num_inference_steps))
            for where in WHERE}
