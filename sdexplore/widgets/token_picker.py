"""The 77-token table as clickable chips; a click shows that token's (or word's) attention over the picture.

    picker = TokenPicker(run)        # run traced with attention=True
    picker                           # start, the words (sub-words beside their word), end, the padding (folded)

A word's chip shows the sum of its sub-words' maps (as ``run.attention.word_map``); a sub-word chip one
token's map. The map is the mean over every step (``step=None``) or one step's (``picker.show(step=...)``).
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as widgets

from ..plot.attention import overlay_picture
from ..prompts import token_groups
from ..studies.attention import most_attended_word, tokens_map
from .common import Explorer, picture_box, png_bytes

SPECIAL_TEXT = "#b00020"  # start, end and padding chips, as in the attention plots


class TokenPicker(Explorer):
    """Chips for the prompt's 77 tokens; clicking one shows its map over the run's picture.

    on_select: called with (label, positions) after each click (AttentionExplorer hands it to a StepScrubber).
    The word taking the most attention is selected first.
    """

    def __init__(self, run, *, step: int | None = None, prompt_index: int = 0, display_width: int = 192,
                 on_select: Callable | None = None):
        if run.attention is None:
            raise ValueError("this run has no attention maps: trace it with attention=True")
        self.run, self.step, self.prompt_index, self.on_select = run, step, prompt_index, on_select
        self.groups = token_groups(run.attention.token_table(prompt_index)[: run.attention.num_tokens])
        self.chips: list[tuple[widgets.Button, str, tuple[int, ...]]] = []
        self.picture = picture_box(display_width)
        self.caption = widgets.HTML()
        self.widget = widgets.VBox([self._chip_rows(), widgets.HBox([self.picture]), self.caption])
        first = most_attended_word(run.attention, prompt_index)
        self.select(first.label, first.positions)

    def chip(self, label: str) -> widgets.Button:
        """The first chip showing ``label`` (a word, a sub-word, "<start>", "<end>", "all padding", "<pad> 40")."""
        for button, _, _ in self.chips:
            if button.description == label:
                return button
        raise KeyError(f"no chip {label!r}; chips: {', '.join(dict.fromkeys(b.description for b, _, _ in self.chips))}")

    def select(self, label: str, positions: tuple[int, ...]) -> None:
        """Show the map of the tokens at ``positions``, mark their chip, tell ``on_select``."""
        self.label, self.positions = label, tuple(positions)
        for button, _, chip_positions in self.chips:
            button.button_style = "info" if chip_positions == self.positions else ""
        self.show()
        if self.on_select is not None:
            self.on_select(label, self.positions)

    def show(self, step: int | None | str = "unchanged") -> None:
        """Redraw the map over the final picture: mean over the steps (step=None) or at one ``step``."""
        if step != "unchanged":
            self.step = step
        heat = tokens_map(self.run.attention, self.positions, self.step, self.prompt_index)
        self.picture.value = png_bytes(overlay_picture(self.run.images[self.prompt_index], heat))
        when = "mean over all steps" if self.step is None else f"step {self.step}"
        plural = "s" if len(self.positions) > 1 else ""
        positions = ", ".join(str(p) for p in self.positions[:6]) + (" …" if len(self.positions) > 6 else "")
        self.caption.value = (f"attention to <b>{html.escape(self.label)}</b> (position{plural} {positions}) · "
                              f"{when}, over the final picture")

    # --- layout --------------------------------------------------------------------------------

    def _chip_rows(self) -> widgets.VBox:
        """Start, each word as a group (its chip, then its sub-word chips), end; the padding folded below."""
        row, padding = [], None
        for group in self.groups:
            if group.kind == "padding":
                padding = self._padding_fold(group)
            elif group.kind == "word" and len(group.positions) > 1:
                pieces = [self._chip(piece, (position,)) for piece, position in zip(group.pieces, group.positions)]
                row.append(widgets.HBox([self._chip(group.label, group.positions), *pieces],
                                        layout=widgets.Layout(border="1px solid #bbb", padding="1px")))
            else:
                row.append(self._chip(group.label, group.positions, special=group.kind != "word"))
        chips = widgets.HBox(row, layout=widgets.Layout(flex_flow="row wrap"))
        return widgets.VBox([chips] + ([padding] if padding is not None else []))

    def _padding_fold(self, group) -> widgets.Accordion:
        """The padding tokens, folded: one chip for all of them, then one per position."""
        chips = [self._chip("all padding", group.positions, special=True)]
        chips += [self._chip(f"<pad> {p}", (p,), special=True) for p in group.positions]
        fold = widgets.Accordion([widgets.HBox(chips, layout=widgets.Layout(flex_flow="row wrap"))])
        fold.set_title(0, f"padding: {len(group.positions)} end tokens (positions "
                          f"{group.positions[0]}..{group.positions[-1]})")
        fold.selected_index = None
        return fold

    def _chip(self, label: str, positions: tuple[int, ...], *, special: bool = False) -> widgets.Button:
        button = widgets.Button(description=label, tooltip=f"positions {list(positions)}",
                                layout=widgets.Layout(width="auto", height="28px", margin="1px"))
        if special:
            button.style.text_color = SPECIAL_TEXT
        button.on_click(lambda _button: self.select(label, positions))
        self.chips.append((button, label, tuple(positions)))
        return button
