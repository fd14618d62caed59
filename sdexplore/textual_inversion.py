"""Textual inversion: learn one new token's input embedding from a few pictures, everything else frozen.

    learned = train_textual_inversion(pipe, pictures, captions, token="<my-cat>", initializer="cat", steps=150)
    save_textual_inversion("my-cat.safetensors", learned["token"], learned["embedding"])
    fresh.load_textual_inversion("my-cat.safetensors")          # diffusers' own loader reads the file

What is learned is a single row of the text encoder's token-embedding table ([D], D = 768 in SD 1.x, 128 in
the toy), the same kind of vector every word of the prompt becomes. The UNet, the VAE and the text encoder's
weights stay as they are: a forward hook puts the trainable vector wherever the new token's id occurs, so no
other row can move. The loss is the pipeline's own training loss (noise or v, as the scheduler predicts) on
the pictures' latents at random timesteps. The file is what diffusers' training script writes: safetensors
with one entry {token: [1, D]}.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file
from tqdm.auto import tqdm


def add_token(pipe, token: str, initializer: str) -> int:
    """Add ``token`` to the pipeline's tokenizer, give it ``initializer``'s embedding; returns its id."""
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise ValueError(f"token must be a non-empty string without spaces, got {token!r}")
    vocabulary = pipe.tokenizer.get_vocab()
    if token in vocabulary or f"{token}</w>" in vocabulary:  # CLIP's BPE spells a whole word with </w>
        raise ValueError(f"token {token!r} is already in the tokenizer's vocabulary; choose a new name, e.g. "
                         f"'<{token.strip('<>')}-2>'")
    init_ids = pipe.tokenizer(initializer, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        pieces = pipe.tokenizer.convert_ids_to_tokens(init_ids)
        raise ValueError(f"initializer must be one token, {initializer!r} is {len(init_ids)} tokens {pieces}")
    pipe.tokenizer.add_tokens(token)
    token_id = pipe.tokenizer.convert_tokens_to_ids(token)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[init_ids[0]]
    return token_id


@contextlib.contextmanager
def token_vector(text_encoder, token_id: int, vector: torch.Tensor):
    """While active, every occurrence of ``token_id`` is embedded as ``vector`` [D] (gradients reach it)."""
    def replace(module, args, output):
        ids = args[0] if args else None
        if ids is None:
            return output
        return torch.where((ids == token_id)[..., None], vector.to(output.dtype), output)

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def encode_pictures(pipe, pictures) -> torch.Tensor:
    """[K, C, h, w]: the VAE latents (mean of the posterior, scaled as the UNet sees them) of uint8 [K, H, W, 3]."""
    stack = np.stack([np.asarray(p.convert("RGB") if hasattr(p, "convert") else p) for p in pictures])
    if stack.ndim != 4 or stack.shape[-1] != 3 or stack.dtype != np.uint8:
        raise ValueError(f"pictures must be uint8 [K, H, W, 3] (or PIL images), got {stack.dtype} {stack.shape}")
    pixels = torch.from_numpy(stack).permute(0, 3, 1, 2).to(pipe.device, pipe.vae.dtype) / 127.5 - 1
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


def train_textual_inversion(pipe, pictures, captions: list[str], *, token: str, initializer: str,
                            steps: int = 150, learning_rate: float = 1e-2, seed: int = 0,
                            log_path: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Learn ``token``'s embedding from ``pictures`` (uint8 [K, H, W, 3]) and their ``captions`` (each with token).

    Adds the token to ``pipe`` (tokenizer + embedding table) and writes the learned vector into its row, so
    ``pipe`` draws with it afterwards. Every step uses all K pictures. Seeded: same inputs, same vector.
    Returns {"token", "token_id", "embedding": [D], "initial": [D], "losses": [steps]}; ``log_path`` gets one
    JSON line per step ({"step", "loss", "norm"}).
    """
    captions = list(captions)
    if len(captions) != len(pictures):
        raise ValueError(f"one caption per picture: got {len(pictures)} pictures and {len(captions)} captions")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    missing = [caption for caption in captions if token not in caption.split()]
    if missing:
        raise ValueError(f"every caption must contain the token {token!r} as a word; these do not: {missing}")
    latents = encode_pictures(pipe, pictures)
    token_id = add_token(pipe, token, initializer)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(pipe.device)
    if not (ids == token_id).any(dim=1).all():
        raise ValueError("the token was cut off (past the 77th position) in some captions; put it earlier")
    table = pipe.text_encoder.get_input_embeddings().weight
    initial = table[token_id].detach().clone()
    vector = torch.nn.Parameter(initial.clone().float())
    optimizer = torch.optim.AdamW([vector], lr=learning_rate, weight_decay=0.0)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    generator = torch.Generator().manual_seed(seed)
    modules = (pipe.unet, pipe.vae, pipe.text_encoder)
    modes = [(module.training, [p.requires_grad for p in module.parameters()]) for module in modules]
    for module in modules:  # frozen, and no dropout: the pipeline as it draws
        module.requires_grad_(False).eval()
    losses = []
    log = open(log_path, "w") if log_path is not None else contextlib.nullcontext()
    with log as log_file, token_vector(pipe.text_encoder, token_id, vector):
        for step in tqdm(range(steps), desc=f"textual inversion {token}", disable=not progress):
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),),
                                      generator=generator).to(pipe.device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
            states = pipe.text_encoder(ids)[0]
            predicted = pipe.unet(noisy, timesteps, encoder_hidden_states=states).sample
            loss = torch.nn.functional.mse_loss(predicted.float(), target.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if log_path is not None:
                record = {"step": step, "loss": losses[-1], "norm": float(vector.detach().norm())}
                log_file.write(json.dumps(record) + "\n")
    for module, (training, grads) in zip(modules, modes):
        module.train(training)
        for parameter, grad in zip(module.parameters(), grads):
            parameter.requires_grad_(grad)
    with torch.no_grad():
        table[token_id] = vector.detach().to(table.dtype)
    return {"token": token, "token_id": token_id, "embedding": vector.detach().clone(), "initial": initial,
            "losses": torch.tensor(losses)}


def save_textual_inversion(path: str | os.PathLike, token: str, embedding: torch.Tensor) -> Path:
    """Write {token: [1, D]} as safetensors, the file ``pipe.load_textual_inversion(path)`` reads."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"textual inversion files are .safetensors, got {path.name}")
    if embedding.dim() == 1:
        embedding = embedding[None]
    if embedding.dim() != 2:
        raise ValueError(f"embedding must be [D] or [n, D], got {tuple(embedding.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: embedding.detach().float().cpu().contiguous()}, str(path), metadata={"format": "pt"})
    return path


def load_textual_inversion(pipe, path: str | os.PathLike) -> int:
    """Load a file written by ``save_textual_inversion`` through diffusers' loader; returns the token's id."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    if len(keys) != 1:
        raise ValueError(f"{path} holds {len(keys)} entries {keys}; a textual inversion file holds one token")
    pipe.load_textual_inversion(str(path))
    return pipe.tokenizer.convert_tokens_to_ids(keys[0])
