"""Trace: what happened at every denoising step of one pipeline run, as plain data.

Names follow the papers and diffusers: x_t is ``latents[i]`` (entering step i), x_{t-1} is
``latents[i + 1]``, ``x0[i]`` the predicted clean latents, ``noise_pred*`` the denoiser's raw
prediction (epsilon, v or the flow-matching velocity, as ``prediction_kind`` says; the name is
diffusers'). All tensors live on the CPU, detached, float32. N = steps actually run (img2img
runs int(steps * strength) of them). Latents are [C, h, w] per image on every family (Flux's
packed tokens are unpacked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..prompts import Token
from .inputs import check_path, describe
from .storage import TraceFileError, load_tensors, save_tensors

_STEP_FIELDS = ("x0", "noise_pred", "noise_pred_text", "noise_pred_uncond", "scheduler_x0")


@dataclass
class Trace:
    """One traced run.

    timesteps          [N]                  the scheduler's timestep at each step
    latents            [N+1, B, C, h, w]    x_T entering step 0 ... latents after the last step
    x0                 [N, B, C, h, w]      predicted clean latents at each step
    noise_pred         [N, B, C, h, w]      guided prediction the scheduler used (epsilon, v or velocity)
    noise_pred_text    [N, B, C, h, w]      denoiser prediction with the prompt
    noise_pred_uncond  [N, B, C, h, w]      with the negative/empty prompt; None without CFG (Flux)
    scheduler_x0       [N, B, C, h, w]      x0 as the scheduler reported it; None if it does not
    prompt_embeds      [B, T, D]            the text sequence the denoiser attends to (T = 77 for SD/SDXL,
                                            77 + 256 for SD3, 512 for Flux by default)
    negative_prompt_embeds [B, T, D]        for the negative/empty prompt; None without CFG
    images             list of B PIL images (the pipeline's output)
    tokens             per prompt, the token table of that text sequence, one row per position
                       (see sdexplore.prompts.Token and sdexplore.capture.families.sequence_tokens)
    params             seed, prompt, pipeline kwargs, model, family, scheduler, prediction kind, latent
                       channels, VAE scaling and shift factors, versions (JSON-safe)
    inputs             input images/masks as uint8 tensors [H, W, C]
    attention          cross-attention maps (AttentionMaps) when traced with attention
    token_tables       encoder name ("clip", "clip_2", "t5") -> per prompt, that encoder's own table
    pooled_prompt_embeds [B, P]             pooled text embedding (SDXL, SD3, Flux); None where there is none
    negative_pooled_prompt_embeds [B, P]    its negative half; None without CFG
    time_ids           [B, 6]               SDXL's added time ids (original size, crop, target size)
    negative_time_ids  [B, 6]               their negative half
    sigmas             [N]                  the scheduler's own sigma at each step, where it keeps sigmas
    """

    timesteps: torch.Tensor
    latents: torch.Tensor
    x0: torch.Tensor
    noise_pred: torch.Tensor
    noise_pred_text: torch.Tensor
    noise_pred_uncond: torch.Tensor | None
    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    images: list[Image.Image]
    tokens: list[list[Token]]
    params: dict
    scheduler_x0: torch.Tensor | None = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    attention: object | None = None
    token_tables: dict[str, list[list[Token]]] = field(default_factory=dict)
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    negative_time_ids: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None

    # --- reading ---------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """N, the number of denoising steps actually run."""
        return int(self.timesteps.shape[0])

    @property
    def seed(self) -> int:
        return self.params["seed"]

    @property
    def prompt(self) -> str | list[str]:
        return self.params["prompt"]

    @property
    def prediction_kind(self) -> str:
        """What noise_pred* hold: "epsilon", "v_prediction", "sample" or "flow" (flow-matching velocity)."""
        return self.params.get("prediction_kind", self.params.get("prediction_type", "epsilon"))

    def step_index(self, step: int) -> int:
        """``step`` as a non-negative index; negative counts from the end. IndexError if out of range."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        if not -self.num_steps <= step < self.num_steps:
            raise IndexError(
                f"step {step} does not exist: this trace has {self.num_steps} steps "
                f"(0..{self.num_steps - 1}, or -1..-{self.num_steps} from the end)"
            )
        return int(step) % self.num_steps

    def step(self, step: int) -> dict:
        """Everything recorded at one step: timestep, sigma (None where the scheduler keeps none), the
        prediction kind, x_t, x_prev, x0 and the predictions [B, C, h, w]."""
        i = self.step_index(step)
        record = {"step": i, "timestep": float(self.timesteps[i]),
                  "sigma": None if self.sigmas is None else float(self.sigmas[i]),
                  "prediction_kind": self.prediction_kind,
                  "x_t": self.latents[i], "x_prev": self.latents[i + 1]}
        for name in _STEP_FIELDS:
            value = getattr(self, name)
            record[name] = None if value is None else value[i]
        return record

    def latent(self, step: int, which: str = "x0") -> torch.Tensor:
        """[B, C, h, w]: ``which`` is "x0" (clean estimate), "x_t" (entering the step) or "x_prev" (after it)."""
        choices = {"x0": lambda i: self.x0[i], "x_t": lambda i: self.latents[i],
                   "x_prev": lambda i: self.latents[i + 1]}
        if which not in choices:
            raise ValueError(f"unknown latent {which!r}; choose one of: {', '.join(choices)}")
        return choices[which](self.step_index(step))

    def preview(self, step: int = -1, which: str = "x0", method: str = "approx", **decoder) -> list[Image.Image]:
        """PIL pictures of one step's latents; method "approx", "vae" (pipe=) or "taesd" (taesd=)."""
        from ..decode import preview

        return preview(self, step, which, method, **decoder)

    def token_table(self, prompt_index: int = 0, encoder: str | None = None) -> list[Token]:
        """The token table of one prompt of the batch: the text sequence's (77 rows for SD/SDXL, plus any
        truncated tokens), or one encoder's own ("clip", "clip_2", "t5": see ``token_tables``)."""
        if encoder is not None:
            if encoder not in self.token_tables:
                raise ValueError(f"encoder {encoder!r} has no token table in this trace; it has: "
                                 f"{', '.join(self.token_tables) or 'none (an older trace: use encoder=None)'}")
            tables = self.token_tables[encoder]
            return tables[self._prompt_index(prompt_index, len(tables))]
        return self.tokens[self._prompt_index(prompt_index, len(self.tokens))]

    def _prompt_index(self, prompt_index, count: int) -> int:
        if isinstance(prompt_index, bool) or not isinstance(prompt_index, (int, np.integer)):
            raise TypeError(f"prompt_index must be an int, got {describe(prompt_index)}")
        if not -count <= prompt_index < count:
            raise IndexError(f"prompt_index {prompt_index} does not exist: this trace has {count} "
                             f"token table(s) (one per prompt; none for a run made from prompt_embeds)")
        return int(prompt_index)

    # --- saving ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike):
        """Write the trace to one safetensors file (tensors) with JSON metadata, sealed by one checksum, atomically."""
        path = check_path(path)
        tensors = {name: value for name, value in self._tensor_fields().items() if value is not None}
        tensors["images"] = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in self.images])) \
            if self.images else torch.zeros(0, dtype=torch.uint8)
        tensors.update({f"inputs.{name}": value for name, value in self.inputs.items()})
        metadata = {"params": self.params, "tokens": [[t.to_dict() for t in table] for table in self.tokens]}
        if self.token_tables:
            metadata["token_tables"] = {name: [[t.to_dict() for t in table] for table in tables]
                                        for name, tables in self.token_tables.items()}
        if self.attention is not None:
            tensors.update({f"attention.{k}": v for k, v in self.attention.to_tensors().items()})
            metadata["attention"] = self.attention.to_metadata()
        return save_tensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a trace written by ``save`` (no pickle); TraceFileError if the file is not one."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or pathlib.Path), got {describe(path)}")
        tensors, metadata = load_tensors(path)
        try:
            return cls._from_saved(tensors, metadata)
        except (KeyError, TypeError, ValueError) as error:
            message = f"{path} is not a complete sdexplore trace: {type(error).__name__}: {error}"
            raise TraceFileError(message) from error

    @classmethod
    def _from_saved(cls, tensors: dict, metadata: dict) -> "Trace":
        tokens = [[Token(**row) for row in table] for table in metadata["tokens"]]
        token_tables = {name: [[Token(**row) for row in table] for table in tables]
                        for name, tables in metadata.get("token_tables", {}).items()}
        images = [Image.fromarray(array) for array in tensors.pop("images").numpy()]
        inputs = {k.removeprefix("inputs."): tensors.pop(k) for k in list(tensors) if k.startswith("inputs.")}
        attention_tensors = {k.removeprefix("attention."): tensors.pop(k)
                             for k in list(tensors) if k.startswith("attention.")}
        attention = None
        if "attention" in metadata:
            from .attention import AttentionMaps

            attention = AttentionMaps.from_saved(attention_tensors, metadata["attention"], tokens)
        fields = {name: tensors.get(name) for name in cls._tensor_names()}
        return cls(**fields, images=images, tokens=tokens, params=metadata["params"], inputs=inputs,
                   attention=attention, token_tables=token_tables)

    def _tensor_fields(self) -> dict[str, torch.Tensor | None]:
        return {name: getattr(self, name) for name in self._tensor_names()}

    @staticmethod
    def _tensor_names() -> tuple[str, ...]:
        return ("timesteps", "latents", "x0", "noise_pred", "noise_pred_text", "noise_pred_uncond",
                "scheduler_x0", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds", "time_ids", "negative_time_ids", "sigmas")

    def __repr__(self) -> str:
        batch, channels, h, w = self.latents.shape[1:]
        extras = ", attention" if self.attention is not None else ""
        return (f"Trace(prompt={self.prompt!r}, seed={self.seed}, steps={self.num_steps}, "
                f"latents=[{self.num_steps + 1}, {batch}, {channels}, {h}, {w}]{extras})")
