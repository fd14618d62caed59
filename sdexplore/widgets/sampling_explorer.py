"""Make a picture, change one thing, see what changed: prompt, negative prompt, guidance, steps, seed (and
img2img strength when an image is given), one fixed-seed ``trace`` per set of values.

    explorer = SamplingExplorer(pipe, "a photo of a cat", seed=0)                 # text to image
    explorer = SamplingExplorer(pipe, "a kitten", seed=0, image=picture)           # + a strength slider
    explorer            # in a notebook cell: the controls, a progress bar, the picture, its caption

Results are kept by their values in a size-bounded LRU (``cache_size``): going back to values already seen
shows their picture without running anything. A new set of values runs the pipeline once, with the progress
bar fed by ``callback_on_step_end``. Values that cannot run (an empty prompt, steps < 1, a seed that is not a
whole number, a strength that leaves no step to run) or a run that raises show the error above the picture;
the picture and its caption stay those of the last good run, and the caption names the values they are for.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from ..capture.run import trace
from ..studies.img2img import steps_run
from .common import LRU, Explorer, error_html, picture_box, png_bytes

MAX_SEED = 2**63 - 1


class SamplingExplorer(Explorer):
    """Controls over one pipeline call; ``last_run`` is the Trace behind the picture shown, ``runs`` counts
    pipeline runs (cache misses that ran), ``cache`` holds the results by their values."""

    def __init__(self, pipe, prompt: str, *, seed: int, image=None, negative_prompt: str = "",
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, strength: float = 0.6,
                 cache_size: int = 32, display_width: int = 256):
        self.pipe, self.image = pipe, image
        wide = widgets.Layout(width="95%")
        self.prompt = widgets.Text(value=prompt, description="prompt", continuous_update=False, layout=wide)
        self.negative_prompt = widgets.Text(value=negative_prompt, description="negative", continuous_update=False,
                                            placeholder="(none)", layout=wide)
        self.guidance = widgets.FloatSlider(value=guidance_scale, min=0.0, max=15.0, step=0.5,
                                            description="guidance", continuous_update=False)
        self.steps = widgets.IntText(value=num_inference_steps, description="steps", continuous_update=False)
        # A text box, not an IntText: a browser's IntText silently drops what is not a number; this one says so.
        self.seed = widgets.Text(value=str(seed), description="seed", continuous_update=False)
        self.strength = widgets.FloatSlider(value=strength, min=0.05, max=1.0, step=0.05, description="strength",
                                            continuous_update=False, disabled=image is None)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps run")
        self.error = widgets.HTML()
        self.picture = picture_box(display_width)
        self.caption = widgets.HTML()
        self.cache = LRU(cache_size)
        self.runs = 0
        self.last_run = None
        self.shown: dict | None = None  # the values the picture is for
        numbers = [self.guidance, self.steps, self.seed] + ([self.strength] if image is not None else [])
        for control in [self.prompt, self.negative_prompt, *numbers]:
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox([self.prompt, self.negative_prompt, widgets.HBox(numbers[:2]),
                                    widgets.HBox(numbers[2:]), self.progress, self.error, self.picture, self.caption])
        self.update()

    # --- reading the controls -----------------------------------------------------------------

    def values(self) -> dict:
        """The controls' values as trace() keywords; ValueError naming the control when they cannot run."""
        prompt = self.prompt.value.strip()
        if not prompt:
            raise ValueError("prompt is empty: type what the picture should show")
        steps = self.steps.value
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        seed_text = self.seed.value.strip()
        try:
            seed = int(seed_text)
        except ValueError:
            raise ValueError(f"seed must be a whole number in 0..2**63-1, got {self.seed.value!r}") from None
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in 0..2**63-1, got {seed}")
        values = {"prompt": prompt, "seed": seed, "num_inference_steps": steps,
                  "guidance_scale": float(self.guidance.value)}
        if self.negative_prompt.value.strip():
            values["negative_prompt"] = self.negative_prompt.value.strip()
        if self.image is not None:
            strength = round(float(self.strength.value), 4)
            if steps_run(steps, strength) < 1:
                raise ValueError(f"strength {strength:.2f} with {steps} steps runs int({steps} × {strength:.2f}) = 0 "
                                 f"steps; raise strength to at least {1 / steps:.2f} or raise the steps")
            values["strength"] = strength
        return values

    # --- what a change does -------------------------------------------------------------------

    def update(self) -> None:
        """Show the picture for the controls' values: from the cache, or run once; on failure show why."""
        try:
            values = self.values()
            key = tuple(sorted(values.items()))
            result = self.cache.get(key)
            if result is None:
                result = self._run(values)
                self.cache.put(key, result)
            else:
                self.progress.value, self.progress.bar_style = self.progress.max, "success"
        except Exception as error:  # noqa: BLE001 -- any failure is shown in the widget, nothing else changes
            self.error.value = error_html(error)
            self.progress.bar_style = "danger"
            return
        self.error.value = ""
        self.last_run, png = result
        self.picture.value = png
        self.shown = values
        self.caption.value = self.describe(values, self.last_run)

    def describe(self, values: dict, run) -> str:
        """The caption: every value the picture is for, and the steps that ran."""
        prompt = html.escape(repr(values["prompt"]))
        negative = f" · negative {html.escape(repr(values['negative_prompt']))}" if "negative_prompt" in values else ""
        strength = f" · strength {values['strength']:.2f}" if "strength" in values else ""
        return (f"<b>{prompt}</b>{negative} · guidance {values['guidance_scale']:.1f}{strength} · "
                f"{run.num_steps} of {values['num_inference_steps']} steps run · seed {values['seed']}")

    def _run(self, values: dict):
        """One trace with the progress bar following its steps; (Trace, PNG bytes of its picture)."""
        expected = steps_run(values["num_inference_steps"], values.get("strength", 1.0))
        self.progress.max, self.progress.value, self.progress.bar_style = max(expected, 1), 0, "info"

        def advance(pipe, step_index, timestep, callback_kwargs):
            self.progress.max = getattr(pipe, "num_timesteps", None) or self.progress.max
            self.progress.value = step_index + 1
            return {}

        kwargs = {k: v for k, v in values.items() if k not in ("prompt", "seed")}
        if self.image is not None:
            kwargs["image"] = self.image
        self.runs += 1
        run = trace(self.pipe, values["prompt"], seed=values["seed"], callback_on_step_end=advance, **kwargs)
        self.progress.bar_style = "success"
        return run, png_bytes(run.images[0])
