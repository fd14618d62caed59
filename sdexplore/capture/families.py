"""What differs between the pipeline families sdexplore traces, in one place.

A ``Family`` says, for SD 1.x/2.x, SDXL, SD3/3.5 and Flux.1:
- which module denoises (``pipe.unet`` or ``pipe.transformer``) and how to read its call: the
  keyword names of the latent input, the text sequence, the pooled text embedding and SDXL's
  time ids (every call is bound to the module's own ``forward`` signature, so positional and
  keyword calls read the same);
- whether its latents travel packed (Flux: 2x2 patches of a [C, h, w] latent as 4C-wide tokens);
- its text encoders (tokenizer and encoder attribute names, which prompt keyword each reads, the
  length each pads to) and which of them make the text sequence the denoiser attends to.

``sequence_tokens(pipe, prompt)`` is the token table of that sequence (one row per position),
``token_tables(pipe, prompt)`` the table of every encoder. What a trace captures on each family is
the README's table, printed by ``python -m sdexplore.capture.table``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from ..prompts import Token, token_table

PREDICTION_KINDS = ("epsilon", "v_prediction", "sample", "flow")


@dataclass(frozen=True)
class Encoder:
    """One text encoder of a pipeline.

    name: the key of its token table ("clip", "clip_2", "t5"); tokenizer / text_encoder: the
    pipeline's attribute names; prompt_arg: the call keyword it reads (falls back to ``prompt``);
    length: tokens it pads to, an int or "max_sequence_length" (the call's, else its default).
    """

    name: str
    tokenizer: str
    text_encoder: str
    prompt_arg: str
    length: int | str = 77


@dataclass(frozen=True)
class Family:
    """How one family's pipelines call their denoiser and encode their prompt (see the module docstring).

    pooled / time_ids: where the denoiser's call carries them ("added_cond_kwargs.text_embeds" reads a
    key of a dict keyword); sequence: names of the encoders whose tokens the denoiser attends to, in
    order; true_cfg_calls: CFG (when asked) is two denoiser calls per step, text first (Flux's true CFG);
    size_from_image: img2img/inpainting make a picture of image='s size when height/width are not given
    (Flux's default to 1024x1024 and resize the picture: sdexplore then passes the picture's size).
    """

    name: str
    denoiser: str
    latent_arg: str
    encoders: tuple[Encoder, ...]
    sequence: tuple[str, ...]
    text_arg: str = "encoder_hidden_states"
    pooled: str | None = None
    time_ids: str | None = None
    packed: bool = False
    true_cfg_calls: bool = False
    size_from_image: bool = True

    def encoder(self, name: str) -> Encoder:
        return next(e for e in self.encoders if e.name == name)


_CLIP = Encoder("clip", "tokenizer", "text_encoder", "prompt")
_CLIP_2 = Encoder("clip_2", "tokenizer_2", "text_encoder_2", "prompt_2")

SD = Family("sd", "unet", "sample", (_CLIP,), ("clip",))
SDXL = Family("sdxl", "unet", "sample", (_CLIP, _CLIP_2), ("clip",),
              pooled="added_cond_kwargs.text_embeds", time_ids="added_cond_kwargs.time_ids")
SD3 = Family("sd3", "transformer", "hidden_states",
             (_CLIP, _CLIP_2, Encoder("t5", "tokenizer_3", "text_encoder_3", "prompt_3", "max_sequence_length")),
             ("clip", "t5"), pooled="pooled_projections")
FLUX = Family("flux", "transformer", "hidden_states",
              (_CLIP, Encoder("t5", "tokenizer_2", "text_encoder_2", "prompt_2", "max_sequence_length")),
              ("t5",), pooled="pooled_projections", packed=True, true_cfg_calls=True,
              size_from_image=False)
FAMILIES = {family.name: family for family in (SD, SDXL, SD3, FLUX)}


def family_of(pipe) -> Family:
    """The family of a diffusers pipeline, from its components; TypeError naming the supported ones."""
    components = getattr(pipe, "components", None) or {}
    transformer = components.get("transformer")
    if transformer is not None:
        if "text_encoder_3" in components or "tokenizer_3" in components:
            return SD3
        if type(transformer).__name__.startswith("Flux") and "tokenizer_2" in components:
            return FLUX
    elif components.get("unet") is not None:
        return SDXL if "text_encoder_2" in components else SD
    raise TypeError(f"{type(pipe).__name__} is not a pipeline family sdexplore traces: it traces Stable Diffusion "
                    "1.x/2.x and SDXL (a unet), SD3/3.5 (an SD3 transformer with three text encoders) and "
                    "Flux.1 (a Flux transformer)")


def denoiser_of(pipe) -> torch.nn.Module:
    """The module that predicts at every step: ``pipe.unet`` or ``pipe.transformer``."""
    return getattr(pipe, family_of(pipe).denoiser)


def prediction_kind(pipe) -> str:
    """What the denoiser predicts: "epsilon", "v_prediction", "sample" or "flow" (a velocity, flow matching)."""
    scheduler = pipe.scheduler
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow"
    return scheduler.config.get("prediction_type", "epsilon")


def latent_channels(pipe) -> int:
    """Channels of the unpacked latents [C, h, w] (4 for SD/SDXL, 16 for SD3 and Flux)."""
    return int(pipe.vae.config.latent_channels)


# --- reading one denoiser call ------------------------------------------------------------------------


@dataclass
class DenoiserCall:
    """What one denoiser call was given. latents: [B*, C, h, w] (UNet, SD3) or [B*, L, 4C] (Flux, packed);
    text: [B*, T, D]; pooled: [B*, P]; time_ids: [B*, 6]; grid: (h, w) of the unpacked latents (Flux)."""

    latents: torch.Tensor
    timestep: torch.Tensor | float
    text: torch.Tensor | None
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    grid: tuple[int, int] | None


def read_call(family: Family, module, args: tuple, kwargs: dict,
              signature: inspect.Signature | None = None) -> DenoiserCall:
    """Bind a forward call to ``module.forward``'s signature (give it once per run) and pick out what ``family``
    names."""
    signature = signature or inspect.signature(module.forward)
    bound = signature.bind_partial(*args, **kwargs).arguments
    grid = None
    if family.packed:
        grid = packed_grid(bound.get("img_ids"), bound[family.latent_arg].shape[1])
    return DenoiserCall(latents=bound[family.latent_arg], timestep=bound.get("timestep"),
                        text=bound.get(family.text_arg), pooled=_dotted(bound, family.pooled),
                        time_ids=_dotted(bound, family.time_ids), grid=grid)


def _dotted(arguments: dict, path: str | None):
    """arguments["a"]["b"] for path "a.b"; None for no path, or where any part is missing."""
    if not path:
        return None
    value = arguments
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# --- Flux's packed latents ------------------------------------------------------------------------------


def packed_grid(img_ids: torch.Tensor | None, length: int) -> tuple[int, int]:
    """(h, w) of the unpacked latents from Flux's image position ids [L, 3] (0, row, column) of the 2x2 patches."""
    if img_ids is None:
        raise ValueError("the Flux transformer was called without img_ids: cannot tell the latents' height and width")
    ids = img_ids.reshape(-1, img_ids.shape[-1])[-length:]
    rows, cols = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if rows * cols != length:
        raise ValueError(f"Flux img_ids describe a {rows}x{cols} grid but the latents hold {length} tokens")
    return 2 * rows, 2 * cols


def unpack_latents(packed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, (h/2)(w/2), 4C] Flux tokens -> [B, C, h, w] latents.

    Each token is one 2x2 patch, its 4C features ordered (channel, dy, dx), tokens in row-major
    patch order: the inverse of FluxPipeline's packing.
    """
    height, width = grid
    batch, length, features = packed.shape
    channels = features // 4
    patches = packed.reshape(batch, height // 2, width // 2, channels, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: the inverse of ``unpack_latents``."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


# --- token tables -----------------------------------------------------------------------------------------


def encoders_present(pipe) -> list[Encoder]:
    """The family's encoders the pipeline has, tokenizer and model (SDXL's refiner has no first CLIP, SD3 may
    be loaded without T5)."""
    return [e for e in family_of(pipe).encoders
            if getattr(pipe, e.tokenizer, None) is not None and getattr(pipe, e.text_encoder, None) is not None]


def token_tables(pipe, prompt: str, *, warn: bool = True, **call_kwargs) -> dict[str, list[Token]]:
    """The token table of ``prompt`` for every text encoder present, keyed by encoder name.

    call_kwargs: the pipeline call's keywords; prompt_2/prompt_3 and max_sequence_length are read as
    the pipeline reads them.
    """
    tables = {}
    for encoder in encoders_present(pipe):
        text = call_kwargs.get(encoder.prompt_arg) or prompt
        tables[encoder.name] = token_table(getattr(pipe, encoder.tokenizer), text, warn=warn,
                                           max_length=_length(pipe, encoder, call_kwargs), encoder=encoder.name)
    return tables


def sequence_tokens(pipe, prompt: str, *, warn: bool = True, tables: dict | None = None,
                    **call_kwargs) -> list[Token]:
    """One Token per position of the text sequence the denoiser attends to, in order; ``position`` is the index.

    SD 1.x/2.x and SDXL: the 77 CLIP positions (SDXL's two encoders are concatenated along features,
    so they share positions: the first one's table is used), then any truncated tokens (positions >= 77,
    truncated=True). SD3: 77 CLIP positions, then max_sequence_length T5 positions (CLIP's truncated
    tokens are only in its own table; loaded without T5, max_sequence_length positions of zeros, text
    "<no T5: zeros>").
    Flux: the max_sequence_length T5 positions, then any truncated.
    """
    family = family_of(pipe)
    tables = tables if tables is not None else token_tables(pipe, prompt, warn=warn, **call_kwargs)
    parts = [name for name in family.sequence if name in tables]
    if family is SD3 and "clip" not in tables and "clip_2" in tables:
        parts = ["clip_2", *parts]
    if not parts and tables:  # SDXL's refiner: the second CLIP encoder only
        parts = [next(iter(tables))]
    rows, offset = [], 0
    for index, name in enumerate(parts):
        last = index == len(parts) - 1 and not (family is SD3 and "t5" not in tables)
        visible = [t for t in tables[name] if last or not t.truncated]
        rows += [replace(t, position=t.position + offset) for t in visible]
        offset += sum(not t.truncated for t in tables[name])
    if family is SD3 and "t5" not in tables and tables:  # without T5, SD3 attends to max_sequence_length zeros
        length = _length(pipe, family.encoder("t5"), call_kwargs)
        rows += [Token(offset + i, 0, "<no T5: zeros>", "padding", None, None, False, "t5") for i in range(length)]
    return rows


def _length(pipe, encoder: Encoder, call_kwargs: dict) -> int:
    if isinstance(encoder.length, int):
        return encoder.length
    from .inputs import default_of

    return int(call_kwargs.get("max_sequence_length") or default_of(pipe, "max_sequence_length", 256))
