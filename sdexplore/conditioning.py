"""Prompt syntax turned into what the UNet gets: weighted, scheduled, chunked prompt embeddings.

- ``encode(pipe, prompt)``: [1, T, D] embeddings of a prompt written in A1111 weighting syntax. Tokens take
  the weight of their text; the encoder output is multiplied by the weights, then rescaled so its mean is
  the unweighted output's (A1111's "original" emphasis). T = 77, or 77 x chunks with ``chunking=True``:
  A1111 splits the tokens into 75-token chunks, wraps each in start/end (+ padding), encodes them
  separately and concatenates, where diffusers cuts everything past 75 tokens.
- ``clip_skip`` as diffusers defines it: the hidden state ``clip_skip`` layers before the last, through the
  final layer norm (A1111's "CLIP skip" setting n is clip_skip = n - 1).
- ``trace_prompt(pipe, "a [cat:kitten:0.5] ...", seed=...)``: a Trace in which the pipeline's step callback
  swaps the prompt embeddings at the switch steps, so every step gets the conditioning A1111 would give it.
"""

from __future__ import annotations

import warnings

import torch

from . import prompt_syntax
from .prompts import MAX_TOKENS, PromptTruncatedWarning


def encoder_depth(pipe) -> int:
    """Number of transformer layers in the pipeline's text encoder."""
    return int(pipe.text_encoder.config.num_hidden_layers)


def check_clip_skip(pipe, clip_skip) -> int | None:
    """``clip_skip`` if the text encoder has that many layers to skip; ValueError otherwise."""
    if clip_skip is None:
        return None
    depth = encoder_depth(pipe)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < depth:
        raise ValueError(f"clip_skip must be an int in [0, {depth - 1}] for this {depth}-layer text encoder "
                         f"(0 = last layer, {depth - 1} = first), got {clip_skip!r}")
    return clip_skip


def weighted_tokens(tokenizer, runs: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """Token ids (no start/end) of (text, weight) runs, each run tokenized on its own as A1111 does, and
    the weight of each token."""
    ids, weights = [], []
    for text, weight in runs:
        run_ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids if text else []
        ids.extend(run_ids)
        weights.extend([float(weight)] * len(run_ids))
    return ids, weights


def chunk_ids(tokenizer, ids: list[int], weights: list[float], *, chunking: bool,
              min_chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, 77] ids (start + up to 75 tokens + end + padding) and [K, 77] weights (1 on special tokens).

    Without chunking K = 1 and tokens past the 75th are cut (PromptTruncatedWarning says which).
    """
    room = MAX_TOKENS - 2
    if not chunking and len(ids) > room:
        warnings.warn(f"prompt has {len(ids)} tokens; the text encoder sees {room}; cut: "
                      f"{tokenizer.decode(ids[room:])!r} (chunking=True encodes them in a second chunk)",
                      PromptTruncatedWarning, stacklevel=3)
        ids, weights = ids[:room], weights[:room]
    count = max(min_chunks, -(-len(ids) // room) if ids else 1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, row_weights = [], []
    for k in range(count):
        part, part_weights = ids[k * room:(k + 1) * room], weights[k * room:(k + 1) * room]
        padding = MAX_TOKENS - 2 - len(part)
        rows.append([tokenizer.bos_token_id, *part, tokenizer.eos_token_id] + [pad] * padding)
        row_weights.append([1.0, *part_weights, 1.0] + [1.0] * padding)
    return torch.tensor(rows), torch.tensor(row_weights)


@torch.no_grad()
def encode_ids(pipe, ids: torch.Tensor, *, clip_skip: int | None = None) -> torch.Tensor:
    """[K, 77] ids -> [K, 77, D] what the UNet gets, exactly as diffusers' encode_prompt computes it."""
    encoder = pipe.text_encoder
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = (ids != pipe.tokenizer.pad_token_id).long().to(encoder.device)
    output = encoder(ids.to(encoder.device), attention_mask=mask, output_hidden_states=clip_skip is not None)
    if clip_skip is None:
        return output[0]
    return final_layer_norm(encoder)(output.hidden_states[-(clip_skip + 1)])


def final_layer_norm(text_encoder):
    """The encoder's final LayerNorm (on the model itself since transformers 5.6, under text_model before)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def apply_weights(embeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis: [K, 77, D] embeddings x [K, 77] weights, rescaled so each chunk keeps its mean."""
    if embeds.shape[:2] != weights.shape:
        raise ValueError(f"weights {list(weights.shape)} must match the embeddings' [K, 77] {list(embeds.shape[:2])}")
    weights = weights.to(embeds.device, embeds.dtype)
    original_mean = embeds.mean(dim=(1, 2), keepdim=True)
    weighted = embeds * weights[..., None]
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # A LayerNorm without bias gives rows of mean ~0: the ratio of two ~0 means is noise (it can flip the sign),
    # so such chunks keep the plain weighting. Real CLIP's final LayerNorm has a bias and is always rescaled.
    meaningful = new_mean.abs() > 1e-4 * weighted.abs().mean(dim=(1, 2), keepdim=True)
    return torch.where(meaningful, weighted * (original_mean / new_mean), weighted)


def encode_runs(pipe, runs: list[tuple[str, float]], *, clip_skip: int | None = None, chunking: bool = False,
                min_chunks: int = 1) -> torch.Tensor:
    """[1, 77·K, D] embeddings of (text, weight) runs (see module docstring)."""
    clip_skip = check_clip_skip(pipe, clip_skip)
    ids, weights = weighted_tokens(pipe.tokenizer, runs)
    chunk_rows, chunk_weights = chunk_ids(pipe.tokenizer, ids, weights, chunking=chunking, min_chunks=min_chunks)
    embeds = encode_ids(pipe, chunk_rows, clip_skip=clip_skip)
    if (chunk_weights != 1.0).any():
        embeds = apply_weights(embeds, chunk_weights)
    return embeds.reshape(1, -1, embeds.shape[-1]).to(pipe.unet.dtype)


def encode(pipe, prompt: str, *, clip_skip: int | None = None, chunking: bool = False) -> torch.Tensor:
    """[1, 77·K, D] embeddings of a prompt in weighting syntax (no switches; see ``trace_prompt``)."""
    return encode_runs(pipe, prompt_syntax.weighted_chunks(prompt), clip_skip=clip_skip, chunking=chunking)


def chunk_count(pipe, runs: list[tuple[str, float]]) -> int:
    """How many 75-token chunks the runs need."""
    ids, _ = weighted_tokens(pipe.tokenizer, runs)
    return max(1, -(-len(ids) // (MAX_TOKENS - 2)))


def scheduled_embeddings(pipe, prompt: str, steps: int, *, negative_prompt: str = "", clip_skip: int | None = None,
                         chunking: bool = False) -> dict:
    """Everything ``trace_prompt`` needs: the schedule, one [1, T, D] embedding per entry, the negative.

    Returns {"schedule": [(end_at_step, runs)], "embeds": [E x [1, T, D]], "negative": [1, T, D],
    "per_step": [steps] entry index used at each 0-based step}. With chunking every entry and the negative
    get the same number of chunks (the shorter padded with empty chunks, as A1111 does).
    """
    entries = prompt_syntax.schedule(prompt, steps)
    negative_runs = prompt_syntax.weighted_chunks(negative_prompt)
    chunks = 1
    if chunking:
        chunks = max(chunk_count(pipe, runs) for runs in [negative_runs] + [runs for _, runs in entries])
    options = {"clip_skip": clip_skip, "chunking": chunking, "min_chunks": chunks}
    return {
        "schedule": entries,
        "embeds": [encode_runs(pipe, runs, **options) for _, runs in entries],
        "negative": encode_runs(pipe, negative_runs, **options),
        "per_step": [prompt_syntax.conditioning_index(entries, step) for step in range(steps)],
    }


def trace_prompt(pipe, prompt: str, *, seed: int, num_inference_steps: int = 50, negative_prompt: str = "",
                 clip_skip: int | None = None, chunking: bool = False, **pipeline_kwargs):
    """Trace a prompt written in A1111 syntax: weights, ``[from:to:when]`` switches, long-prompt chunking.

    The embeddings of step 0 go in as ``prompt_embeds``; after each step the pipeline's
    ``callback_on_step_end`` returns the next step's ([negative; positive] under CFG, as the pipeline keeps
    them). ``run.params["prompt_schedule"]`` lists the entries (end step, text in weighting syntax) and
    ``run.params["conditioning_per_step"]`` which entry each step used.
    """
    from .capture.run import trace

    if "prompt_embeds" in pipeline_kwargs or "negative_prompt_embeds" in pipeline_kwargs:
        raise TypeError("trace_prompt builds prompt_embeds from the prompt; call sdexplore.trace for your own")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    plan = scheduled_embeddings(pipe, prompt, num_inference_steps, negative_prompt=negative_prompt,
                                clip_skip=clip_skip, chunking=chunking)
    user_callback = pipeline_kwargs.pop("callback_on_step_end", None)
    user_inputs = list(pipeline_kwargs.pop("callback_on_step_end_tensor_inputs", None) or [])
    callback = _switching_callback(plan, user_callback)
    run = trace(pipe, None, seed=seed, num_inference_steps=num_inference_steps, prompt_embeds=plan["embeds"][0],
                negative_prompt_embeds=plan["negative"], callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=list(dict.fromkeys(["prompt_embeds", *user_inputs])),
                **pipeline_kwargs)
    first_text = prompt_syntax.plain_text(plan["schedule"][0][1])
    run.params.update({
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "clip_skip": clip_skip,
        "chunking": chunking,
        "prompt_schedule": [{"end_at_step": end, "prompt": prompt_syntax.describe(runs)}
                            for end, runs in plan["schedule"]],
        "conditioning_per_step": plan["per_step"][:run.num_steps],
    })
    if not run.tokens:
        from .prompts import token_table

        run.tokens = [token_table(pipe.tokenizer, first_text, warn=False)]
    return run


def _switching_callback(plan: dict, user_callback):
    """callback_on_step_end that hands the pipeline the next step's prompt embeddings when they change."""
    per_step, embeds, negative = plan["per_step"], plan["embeds"], plan["negative"]

    def switch(pipe, step_index, timestep, callback_kwargs):
        result = dict(user_callback(pipe, step_index, timestep, callback_kwargs) or {}) if user_callback else {}
        following = step_index + 1
        if following < len(per_step) and per_step[following] != per_step[step_index]:
            current = callback_kwargs["prompt_embeds"]
            guided = bool(getattr(pipe, "do_classifier_free_guidance", False))
            copies = current.shape[0] // (2 if guided else 1)  # num_images_per_prompt
            positive = embeds[per_step[following]].to(current.device, current.dtype).repeat(copies, 1, 1)
            if guided:  # the pipeline keeps [negative; positive] under classifier-free guidance
                positive = torch.cat([negative.to(current.device, current.dtype).repeat(copies, 1, 1), positive])
            result["prompt_embeds"] = positive
        return result

    return switch
