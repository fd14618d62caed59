"""Scrub through the steps of a traced run: x_t, the predicted x0 and (traced with attention) one token's map.

    scrubber = StepScrubber(run, pipe)             # previews with the pipeline's VAE ("approx" without pipe)
    scrubber = StepScrubber(run, pipe, token="cat")
    scrubber                                        # in a notebook cell: the slider, three pictures, a caption

It reads the trace only (no pipeline call). A move decodes at most one batch (x_t and x0 of the new step
together, through ``sdexplore.decode``); decoded previews and the pictures shown are kept per (step, which)
(and per token for the attention overlay), so going back costs no decode and no drawing.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import torch

from ..decode import decode, to_pil
from ..plot.attention import overlay_picture
from ..studies.attention import most_attended_word, tokens_map
from .common import LRU, Explorer, picture_box, png_bytes

LATENTS = ("x_t", "x0")


class StepScrubber(Explorer):
    """One slider over the steps of ``run``; shows x_t, x0 and the selected token's attention at that step.

    token: a word of the prompt ("cat"; all its sub-words), a position 0..76, a list of positions, or None
    (the word that takes the most attention). method: preview decoder, "vae" when ``pipe`` is given, else
    "approx" (``decoder`` keywords go to ``sdexplore.decode.decode``, e.g. taesd=..., latent_rgb=...).
    """

    def __init__(self, run, pipe=None, token=None, *, method: str | None = None, prompt_index: int = 0,
                 display_width: int = 192, cache_size: int = 256, **decoder):
        self.run, self.prompt_index = run, prompt_index
        self.method = method or ("vae" if pipe is not None else "approx")
        self.decoder = {"pipe": pipe, **decoder} if self.method == "vae" else decoder
        if self.method == "approx":
            self.decoder = {"run": run, **self.decoder}  # the approx map of the model that made the run
        self.decodes = 0  # decode calls made so far (one per step first seen)
        self._previews = LRU(cache_size)  # (step, which) -> PIL picture
        self._pngs = LRU(2 * cache_size)  # (step, which) or (step, "attention", positions) -> PNG bytes shown
        self.has_attention = run.attention is not None
        self.token_label, self.positions = self._resolve_token(token) if self.has_attention else ("", ())
        self.slider = widgets.IntSlider(value=0, min=0, max=run.num_steps - 1, description="step",
                                        continuous_update=True)
        self.pictures = {which: picture_box(display_width) for which in LATENTS}
        self.attention_picture = picture_box(display_width)
        self.caption = widgets.HTML()
        shown = [_titled(self.pictures["x_t"], "x_t (the sampler's latent)"),
                 _titled(self.pictures["x0"], "x0 (predicted clean)")]
        if self.has_attention:
            shown.append(_titled(self.attention_picture, "attention over x0"))
        self.widget = widgets.VBox([self.slider, widgets.HBox(shown), self.caption])
        self.slider.observe(lambda _change: self.show(), names="value")
        self.show()

    # --- what a move does ----------------------------------------------------------------------

    def show(self) -> None:
        """Draw the slider's step: previews (decoded once per step), the token's map, the caption."""
        step = self.slider.value
        for which in LATENTS:
            self.pictures[which].value = self._png((step, which), lambda w=which: self.previews(step)[w])
        if self.has_attention:
            self.attention_picture.value = self._png(
                (step, "attention", self.positions),
                lambda: overlay_picture(self.previews(step)["x0"], self.attention_map(step)))
        self.caption.value = self.describe(step)

    def previews(self, step: int) -> dict:
        """{"x_t": PIL, "x0": PIL} of one step; both decoded in one batch the first time, then from the cache."""
        if any((step, which) not in self._previews for which in LATENTS):
            latents = [self.run.latent(step, which)[self.prompt_index: self.prompt_index + 1] for which in LATENTS]
            images = to_pil(decode(torch.cat(latents), self.method, **self.decoder),
                            upscale=8 if self.method == "approx" else 1)
            self.decodes += 1
            for which, image in zip(LATENTS, images):
                self._previews.put((step, which), image)
        return {which: self._previews.get((step, which)) for which in LATENTS}

    def attention_map(self, step: int):
        """[h, w]: the selected token(s)' map at ``step`` (the mean over all steps if only that was kept)."""
        return tokens_map(self.run.attention, self.positions, self._attention_step(step), self.prompt_index)

    def set_token(self, token, label: str | None = None) -> None:
        """Show another token's map: a word, a position, a list of positions (``label`` names it in the caption)."""
        self.token_label, self.positions = self._resolve_token(token)
        if label is not None:
            self.token_label = repr(label)
        self.show()

    def describe(self, step: int) -> str:
        """The caption: step number of N, the scheduler's timestep, which token's map is shown."""
        text = (f"step <b>{step}</b> of {self.run.num_steps} (0..{self.run.num_steps - 1}) · "
                f"timestep <b>{float(self.run.timesteps[step]):g}</b>")
        if self.has_attention:
            when = "this step" if self._attention_step(step) is not None else "mean over all steps"
            text += f" · attention to <b>{html.escape(self.token_label)}</b> ({when})"
        return text

    # --- helpers -------------------------------------------------------------------------------

    def _png(self, key, picture) -> bytes:
        """The PNG bytes of ``picture()`` (a PIL image), made once per key."""
        png = self._pngs.get(key)
        if png is None:
            png = png_bytes(picture())
            self._pngs.put(key, png)
        return png

    def _attention_step(self, step: int) -> int | None:
        maps = self.run.attention
        return step if maps.keep != "summed" and maps.num_steps == self.run.num_steps else None

    def _resolve_token(self, token) -> tuple[str, tuple[int, ...]]:
        """(label, positions) of a word, a position or positions; None: the word taking the most attention
        (position 1 when the run was made from embeddings and its tokens are not known)."""
        maps = self.run.attention
        known = bool(maps.tokens)
        if token is None:
            if not known:
                return "position 1", (1,)
            best = most_attended_word(maps, self.prompt_index)
            return repr(best.label), best.positions
        if isinstance(token, str):
            return repr(token), tuple(maps.word_positions(token, self.prompt_index))
        positions = (token,) if isinstance(token, int) else tuple(token)
        for position in positions:
            if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < maps.num_tokens:
                raise ValueError(f"token positions must be ints in 0..{maps.num_tokens - 1}, got {token!r}")
        labels = maps.token_labels(self.prompt_index) if known else [f"position {p}" for p in range(maps.num_tokens)]
        return " + ".join(labels[p] for p in positions[:3]) + (" …" if len(positions) > 3 else ""), positions


def _titled(picture: widgets.Image, title: str) -> widgets.VBox:
    return widgets.VBox([widgets.HTML(f"<small>{title}</small>"), picture])
