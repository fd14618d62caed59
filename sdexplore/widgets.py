"""Sliders for notebooks (ipywidgets): move guidance or img2img strength, see the picture re-made.

    explorer = SamplingExplorer(pipe, "a photo of a cat", seed=0)                 # guidance slider
    explorer = SamplingExplorer(pipe, "a kitten", seed=0, image=picture)           # + strength slider
    explorer            # in a notebook cell: the sliders and the picture

The seed is fixed, so only the slider changes between pictures. Each change re-runs the pipeline
through ``trace`` (``explorer.last_run`` is that Trace), only when the slider is released.
"""

from __future__ import annotations

import io

import ipywidgets as widgets

from .capture.run import trace


class SamplingExplorer:
    """A guidance slider (and, with ``image``, a strength slider) over one fixed-seed pipeline call."""

    def __init__(self, pipe, prompt: str, *, seed: int, image=None, num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, strength: float = 0.6, display_width: int = 256):
        self.pipe, self.prompt, self.seed, self.image = pipe, prompt, seed, image
        self.num_inference_steps = num_inference_steps
        self.guidance = widgets.FloatSlider(value=guidance_scale, min=0.0, max=15.0, step=0.5,
                                            description="guidance", continuous_update=False)
        self.strength = widgets.FloatSlider(value=strength, min=0.05, max=1.0, step=0.05, description="strength",
                                            continuous_update=False, disabled=image is None)
        self.picture = widgets.Image(format="png", width=display_width)
        self.caption = widgets.Label()
        sliders = [self.guidance] + ([self.strength] if image is not None else [])
        for slider in sliders:
            slider.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox([widgets.HBox(sliders), self.picture, self.caption])
        self.last_run = None
        self.update()

    def update(self) -> None:
        """Run the pipeline with the sliders' values and show the picture."""
        kwargs = {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance.value}
        if self.image is not None:
            kwargs.update(image=self.image, strength=self.strength.value)
        self.last_run = trace(self.pipe, self.prompt, seed=self.seed, **kwargs)
        buffer = io.BytesIO()
        self.last_run.images[0].save(buffer, format="PNG")
        self.picture.value = buffer.getvalue()
        strength = f" · strength {self.strength.value:.2f}" if self.image is not None else ""
        self.caption.value = (f"guidance {self.guidance.value:.1f}{strength} · "
                              f"{self.last_run.num_steps} of {self.num_inference_steps} steps run · seed {self.seed}")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
