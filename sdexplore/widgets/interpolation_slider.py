"""Slide between two words (cat ↔ kitten) or two prompts with α and watch the picture: morph or jump?

    InterpolationSlider(pipe, "a photo of a large grey cat at the center, plain white background", "cat", "kitten",
                        seed=0)                                       # one word's token embedding slid
    InterpolationSlider(pipe, "a grey cat, sea background", target_prompt="a grey kitten, sand background",
                        seed=0, mode="slerp")                         # the two prompts' encoder outputs mixed

Each α runs ``sdexplore.studies.interpolation`` (same seed every time) once and is kept, so moving back is
free. On the toy model the toy world's judge says what it sees (kind, colour, position) under the picture.
"""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from ..models import TOY_WEIGHTS
from ..studies.interpolation import MODES, single_token_id, trace_interpolation, trace_prompt_interpolation
from .common import LRU, Explorer, error_html, picture_box, png_bytes


class InterpolationSlider(Explorer):
    """An α slider (and lerp/slerp buttons) over a word or prompt interpolation; ``cache`` maps (mode, α) to
    (Trace, PNG bytes, judge's label); ``runs`` counts the pipeline runs made.

    judge: None (on when ``pipe`` is the toy model), True or False. count: how many α values the slider has.
    cache_size: how many (mode, α) results are kept (least recently shown forgotten first).
    """

    def __init__(self, pipe, prompt: str, word_a: str | None = None, word_b: str | None = None, *, seed: int,
                 mode: str = "lerp", target_prompt: str | None = None, count: int = 17, judge: bool | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, display_width: int = 192,
                 cache_size: int = 34, **pipeline_kwargs):
        self.pipe, self.prompt, self.word_a, self.word_b, self.target_prompt = pipe, prompt, word_a, word_b, \
            target_prompt
        self._check_choice(pipe, prompt, word_a, word_b, target_prompt, mode, count)
        self.seed = seed
        self.pipeline_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                                **pipeline_kwargs}
        self.judge = _is_toy(pipe) if judge is None else bool(judge)
        self.cache = LRU(cache_size)
        self.runs = 0
        self.last_run = None
        ends = (word_a, word_b) if target_prompt is None else (prompt, target_prompt)
        self.slider = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=1 / (count - 1), description="α",
                                          continuous_update=False, readout_format=".3f")
        self.mode = widgets.ToggleButtons(options=MODES, value=mode, description="mode")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps run")
        self.error = widgets.HTML()
        self.picture = picture_box(display_width)
        self.caption = widgets.HTML()
        for control in (self.slider, self.mode):
            control.observe(lambda _change: self.update(), names="value")
        ends = [html.escape(str(end)) for end in ends]
        ends_label = widgets.HTML(f"<small>α = 0: {ends[0]} · α = 1: {ends[1]}</small>")
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.mode]), ends_label, self.progress, self.error,
                                    self.picture, self.caption])
        self.update()

    def update(self) -> None:
        """Show the picture at the slider's α (run once per (mode, α)); on failure keep the last one, say why."""
        key = (self.mode.value, round(float(self.slider.value), 6))
        try:
            result = self.cache.get(key)
            if result is None:
                result = self._compute(*key)
                self.cache.put(key, result)
            else:
                self.progress.value, self.progress.bar_style = self.progress.max, "success"
        except Exception as error:  # noqa: BLE001 -- shown in the widget; the picture stays the last good one
            self.error.value = error_html(error)
            self.progress.bar_style = "danger"
            return
        self.error.value = ""
        self.last_run, png, label = result
        self.picture.value = png
        judged = f" · the judge sees: <b>{label}</b>" if label else ""
        what = f"{self.word_a!r} → {self.word_b!r}" if self.target_prompt is None else "prompt A → prompt B"
        what = html.escape(what)
        self.caption.value = f"α {key[1]:.3f} ({key[0]}) along {what} · seed {self.seed}{judged}"

    def _compute(self, mode: str, alpha: float):
        """(Trace, PNG bytes, judge's label or "") of one α, through sdexplore.studies.interpolation."""
        self.progress.value, self.progress.bar_style = 0, "info"
        self.progress.max = self.pipeline_kwargs["num_inference_steps"]

        def advance(pipe, step_index, timestep, callback_kwargs):
            self.progress.value = step_index + 1
            return {}

        common = {"seed": self.seed, "mode": mode, "callback_on_step_end": advance, **self.pipeline_kwargs}
        self.runs += 1
        if self.target_prompt is None:
            run = trace_interpolation(self.pipe, self.prompt, self.word_a, self.word_b, [alpha], **common)[0]
        else:
            run = trace_prompt_interpolation(self.pipe, self.prompt, self.target_prompt, [alpha], **common)[0]
        self.progress.bar_style = "success"
        return run, png_bytes(run.images[0]), self._judged(run.images[0])

    def _judged(self, image) -> str:
        if not self.judge:
            return ""
        from ..toy.judge import get_judge

        seen = get_judge().predict(np.asarray(image.convert("RGB"))[None])[0]
        return f"{seen['kind']} ({seen['color']}, {seen['position']})"

    @staticmethod
    def _check_choice(pipe, prompt, word_a, word_b, target_prompt, mode, count) -> None:
        """Words or a second prompt, not both; single-token words; a known mode; at least 2 α values."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"count (how many α values) must be an int >= 2, got {count!r}")
        if target_prompt is None:
            if word_a is None or word_b is None:
                raise ValueError("give two words (word_a, word_b, e.g. 'cat', 'kitten') or target_prompt=")
            for word in (word_a, word_b):
                single_token_id(pipe.tokenizer, word)
            if word_a not in prompt.replace(",", " ").split():
                raise ValueError(f"word_a {word_a!r} is not a word of the prompt {prompt!r}")
        elif word_a is not None or word_b is not None:
            raise ValueError("give either two words (word_a, word_b) or target_prompt=, not both")
        elif not str(target_prompt).strip():
            raise ValueError("target_prompt is empty: give the prompt α = 1 should draw")


def _is_toy(pipe) -> bool:
    """Whether ``pipe`` was loaded from the shipped toy model (the judge reads only toy-world pictures)."""
    source = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return bool(source) and Path(str(source)).resolve() == TOY_WEIGHTS.resolve()
