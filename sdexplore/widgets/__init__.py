"""ipywidgets for notebooks: each wires sdexplore's compute, decode and plot functions to controls.

- ``SamplingExplorer``: prompt, negative prompt, guidance, steps, seed (+ strength with an image); cached.
- ``StepScrubber``: a slider over a trace's steps: x_t, x0 and a token's attention at that step.
- ``TokenPicker``: the 77-token table as chips; a click shows that token's map over the picture.
- ``AttentionExplorer``: a TokenPicker driving a StepScrubber.
- ``InterpolationSlider``: α between two words (cat ↔ kitten) or two prompts, lerp or slerp.

Every widget has ``.widget`` (its ipywidgets root) and shows itself when it is a cell's value.
"""

from .attention_explorer import AttentionExplorer
from .interpolation_slider import InterpolationSlider
from .sampling_explorer import SamplingExplorer
from .step_scrubber import StepScrubber
from .token_picker import TokenPicker

__all__ = ["AttentionExplorer", "InterpolationSlider", "SamplingExplorer", "StepScrubber", "TokenPicker"]
