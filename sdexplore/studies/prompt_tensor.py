"""What the prompt becomes: the 77 x D tensor, its parts, every encoder layer, and generating from each layer.

T = 77 positions, D = the text encoder's width (768 in SD 1.x, 1024 in SD 2.x, 128 in the toy), L = its
number of layers. ``prompt_tensor`` returns the parts the notes talk about; ``stripe_sources`` measures where
the "vertical stripes" (columns that are bright or dark at every position) come from; ``layer_embeddings``
and ``layer_sweep`` are the "Diffusion Lens" view: each layer's hidden state through the final layer norm,
given to the UNet as if it were the last layer's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..conditioning import encode_ids, final_layer_norm
from ..prompts import MAX_TOKENS


def _embeddings(text_encoder):
    """The token + position embedding module (on the model since transformers 5.6, under text_model before)."""
    return getattr(text_encoder, "text_model", text_encoder).embeddings


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """[1, 77] ids as diffusers' encode_prompt makes them (cut after 75 tokens, padded)."""
    tokens = tokenizer(prompt, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return tokens.input_ids


@torch.no_grad()
def prompt_tensor(pipe, prompt: str) -> dict[str, torch.Tensor]:
    """The prompt at every stage of the text encoder, for the 77 positions (float32, CPU).

    ids       [77]            token ids: start, words, end, padding
    token     [77, D]         token embeddings (a row of the embedding table per id)
    position  [77, D]         position embeddings (the same for every prompt)
    input     [77, D]         token + position: what enters the first layer
    hidden    [L + 1, 77, D]  hidden[0] = input, hidden[l] = output of layer l (before the final layer norm)
    output    [77, D]         the final layer norm of hidden[L]: what the UNet gets (= pipe.encode_prompt)
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    encoder = pipe.text_encoder
    ids = prompt_ids(pipe.tokenizer, prompt).to(encoder.device)
    parts = _embeddings(encoder)
    token = parts.token_embedding(ids)[0]
    position = parts.position_embedding(torch.arange(ids.shape[1], device=ids.device))
    result = encoder(ids, output_hidden_states=True)
    as_cpu = {"ids": ids[0], "token": token, "position": position, "input": token + position,
              "hidden": torch.stack(result.hidden_states)[:, 0], "output": result[0][0]}
    return {name: value.detach().float().cpu() for name, value in as_cpu.items()}


def column_means(tensor: torch.Tensor) -> torch.Tensor:
    """[77, D] -> [D]: each column's mean over the positions: the stripe pattern of the picture."""
    return tensor.mean(dim=0)


def stripe_share(tensor: torch.Tensor) -> float:
    """How striped a [77, D] picture is: the share of its variance that is column structure,
    Var_d(column mean) / Var(all entries), in [0, 1] (1: every row the same; 0: no column differs on
    average)."""
    total = tensor.var(unbiased=False)
    return float(column_means(tensor).var(unbiased=False) / total) if total > 0 else 0.0


@torch.no_grad()
def stripe_sources(pipe, prompt: str) -> dict[str, float]:
    """Where the stripes come from, measured (floats):

    stripe_share_{token,position,input,output}: ``stripe_share`` of each picture;
    position_share_input: of the column-mean variance the two input parts bring, the position part's share,
        Var(m_pos) / (Var(m_pos) + Var(m_tok)), m = column means (the two are nearly uncorrelated:
        corr_token_position_input says how nearly);
    position_share_output: the share of the output's column-mean variance that goes away when the position
        embeddings' column means are removed before the encoder (the encoder run again with
        position - mean_over_positions(position)): Var(m_out - m_out') / Var(m_out);
    padding_rows: how many of the 77 rows are padding (the same token repeated);
    corr_token_stripes_padding: correlation of the token part's column means with the padding token's
        embedding (1: the token part's stripes are the padding token's).
    """
    parts = prompt_tensor(pipe, prompt)
    m_tok, m_pos, m_out = (column_means(parts[name]) for name in ("token", "position", "output"))
    without = _output_without_position_stripes(pipe, prompt)
    pad_id = pipe.tokenizer.pad_token_id if pipe.tokenizer.pad_token_id is not None else pipe.tokenizer.eos_token_id
    is_pad = parts["ids"] == pad_id
    padding_rows = int(is_pad.sum()) - (1 if pad_id == pipe.tokenizer.eos_token_id else 0)
    pad_row = parts["token"][is_pad][-1] if is_pad.any() else torch.zeros_like(m_tok)
    return {
        **{f"stripe_share_{name}": stripe_share(parts[name]) for name in ("token", "position", "input", "output")},
        "position_share_input": float(m_pos.var() / (m_pos.var() + m_tok.var())),
        "corr_token_position_input": _corr(m_tok, m_pos),
        "position_share_output": float((m_out - column_means(without)).var() / m_out.var()),
        "padding_rows": padding_rows,
        "corr_token_stripes_padding": _corr(m_tok, pad_row),
    }


@torch.no_grad()
def _output_without_position_stripes(pipe, prompt: str) -> torch.Tensor:
    """[77, D] the encoder output when each position-embedding column has its mean over positions removed."""
    encoder = pipe.text_encoder
    table = _embeddings(encoder).position_embedding

    def centred(module, args, output):
        return output - output.mean(dim=-2, keepdim=True)

    handle = table.register_forward_hook(centred)
    try:
        return encoder(prompt_ids(pipe.tokenizer, prompt).to(encoder.device))[0][0].float().cpu()
    finally:
        handle.remove()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


# --- CLIP skip and the layer sweep ("Diffusion Lens") ----------------------------------------------------


@torch.no_grad()
def layer_embeddings(pipe, prompt: str) -> torch.Tensor:
    """[L + 1, 77, D]: hidden state l (0 = the input embeddings) through the final layer norm. Row L is
    what the UNet normally gets; row L - k is what ``clip_skip=k`` gives."""
    ids = prompt_ids(pipe.tokenizer, prompt)
    output = pipe.text_encoder(ids.to(pipe.text_encoder.device), output_hidden_states=True)
    norm = final_layer_norm(pipe.text_encoder)
    return torch.stack([norm(h)[0] for h in output.hidden_states]).to(pipe.unet.dtype)


def clip_skip_embeddings(pipe, prompt: str, clip_skip: int | None) -> torch.Tensor:
    """[1, 77, D] as diffusers' encode_prompt computes them for ``clip_skip`` (checked against the depth)."""
    from ..conditioning import check_clip_skip

    return encode_ids(pipe, prompt_ids(pipe.tokenizer, prompt), clip_skip=check_clip_skip(pipe, clip_skip))


@torch.no_grad()
def layer_pictures(pipe, prompts: list[str], *, seed: int, num_inference_steps: int = 25,
                   guidance_scale: float = 7.5) -> np.ndarray:
    """uint8 [L + 1, P, H, W, 3]: every prompt generated from every layer's output (negative prompt "" from the
    same layer, as clip_skip does). Prompt p uses seed + p at every layer, so only the layer differs."""
    positive = torch.stack([layer_embeddings(pipe, prompt) for prompt in prompts], dim=1)  # [L+1, P, 77, D]
    negative = layer_embeddings(pipe, "")  # [L+1, 77, D]
    rows = []
    for layer in range(positive.shape[0]):
        generators = [torch.Generator().manual_seed(seed + index) for index in range(len(prompts))]
        out = pipe(prompt_embeds=positive[layer], negative_prompt_embeds=negative[layer].expand_as(positive[layer]),
                   generator=generators, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   output_type="np")
        rows.append((out.images * 255).round().astype(np.uint8))
    return np.stack(rows)


def layer_sweep_scores(pictures: np.ndarray, scenes) -> dict[str, np.ndarray]:
    """Judge every layer's pictures: {"kind", "color", "position", "all"}: [L + 1] accuracies (toy world)."""
    from ..toy.judge import get_judge

    judge = get_judge()
    scores = [judge.score(list(layer), scenes) for layer in pictures]
    return {field: np.array([s[field] for s in scores]) for field in ("kind", "color", "position", "all")}


def first_layer_right(accuracy, threshold: float = 0.8) -> int | None:
    """The first layer from which on the accuracy stays >= threshold (None if it never does)."""
    accuracy = np.asarray(accuracy)
    for layer in range(len(accuracy)):
        if (accuracy[layer:] >= threshold).all():
            return layer
    return None


def layer_sweep(pipe, n_prompts: int, *, seed: int = 0, num_inference_steps: int = 20) -> dict[str, torch.Tensor]:
    """The toy world's held-out single-object prompts (``world.held_out_prompts(n_prompts, seed)``) generated
    from every layer: {"pictures": uint8 [L + 1, P, H, W, 3]} (a dict of tensors, for sdexplore.cache)."""
    from ..toy import world

    prompts = [world.canonical_prompt(scene) for scene in world.held_out_prompts(n_prompts, seed=seed)]
    pictures = layer_pictures(pipe, prompts, seed=seed, num_inference_steps=num_inference_steps)
    return {"pictures": torch.from_numpy(pictures)}
