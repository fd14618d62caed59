"""A StepScrubber and a TokenPicker together: pick a token, scrub the steps, see where it looks when.

    AttentionExplorer(run, pipe)      # run traced with attention=True

Clicking a chip sets the scrubber's token: the scrubber shows that token's map at the scrubbed step (over
that step's x0), the picker its mean over all steps (over the final picture).
"""

from __future__ import annotations

import ipywidgets as widgets

from .common import Explorer
from .step_scrubber import StepScrubber
from .token_picker import TokenPicker


class AttentionExplorer(Explorer):
    """``.scrubber`` (StepScrubber) above ``.picker`` (TokenPicker); the picker's selection drives both."""

    def __init__(self, run, pipe=None, *, method: str | None = None, prompt_index: int = 0,
                 display_width: int = 192, **decoder):
        self.scrubber = StepScrubber(run, pipe, method=method, prompt_index=prompt_index,
                                     display_width=display_width, **decoder)
        self.picker = TokenPicker(run, prompt_index=prompt_index, display_width=display_width,
                                  on_select=lambda label, positions: self.scrubber.set_token(list(positions), label))
        self.widget = widgets.VBox([self.picker.widget, self.scrubber.widget])
