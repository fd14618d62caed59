"""The prompt syntax WebUI users write, with AUTOMATIC1111's meaning: weighting and prompt editing.

    (word)            weight x 1.1           ((word)) x 1.21, nested brackets multiply
    (word:1.3)        weight x 1.3
    [word]            weight / 1.1
    [from:to:when]    "from" until the switch, then "to"
    [to:when]         nothing until the switch, then "to"
    [from::when]      "from" until the switch, then nothing
    \\( \\) \\[ \\] \\: \\\\  the character itself (a backslash makes any character plain text)

``when`` below 1 is a fraction of the steps, otherwise a step: A1111's (old-style) rule
``min(steps, int(when * steps if when < 1 else when))``. A1111's sampler counts steps from 0 and uses
the text before the switch while ``step <= when``, so ``[cat:kitten:10]`` draws "cat" at steps 0..10 and
"kitten" from step 11 on; ``conditioning_index`` follows that rule exactly.

Where A1111 silently guesses (an unclosed bracket is closed at the end of the prompt, a weight that is
not a number becomes text), this parser raises ``PromptSyntaxError`` saying what and where: a typo then
shows up instead of quietly changing the picture. Alternation ``[a|b]``, ``AND`` and ``BREAK`` are not
supported (``|`` is refused; write ``\\|`` for the character).

    >>> schedule("a [cat:kitten:0.5] on the left", steps=10)
    [(5, [('a cat on the left', 1.0)]), (10, [('a kitten on the left', 1.0)])]
    >>> weighted_chunks("a (red:1.3) ball")
    [('a ', 1.0), ('red', 1.3), (' ball', 1.0)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*")


class PromptSyntaxError(ValueError):
    """A prompt's brackets, weights or switch steps cannot be read."""

    def __init__(self, prompt: str, position: int, problem: str):
        pointer = f"{prompt}\n{' ' * position}^"
        super().__init__(f"prompt syntax: {problem} (at character {position})\n{pointer}")
        self.prompt, self.position, self.problem = prompt, position, problem


# --- the syntax tree -----------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Weighted:
    """``(…)``, ``(…:w)`` or ``[…]``: every token inside is multiplied by ``weight``."""

    children: list
    weight: float


@dataclass
class Switch:
    """``[before:after:when]``; before is None for ``[after:when]``, after is [] for ``[before::when]``."""

    before: list | None
    after: list
    when: float
    children: list = field(default_factory=list)  # unused; keeps the node shape uniform


def parse(prompt: str) -> list:
    """The prompt as a list of Text / Weighted / Switch nodes. Raises PromptSyntaxError."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    parser = _Parser(prompt)
    nodes = parser.sequence(closers="")
    return nodes


class _Parser:
    def __init__(self, prompt: str):
        self.prompt, self.pos = prompt, 0

    def fail(self, problem: str, position: int | None = None):
        raise PromptSyntaxError(self.prompt, self.pos if position is None else position, problem)

    def sequence(self, closers: str) -> list:
        """Nodes up to (not including) the first unescaped character of ``closers`` at this depth."""
        nodes, text = [], []
        while self.pos < len(self.prompt):
            char = self.prompt[self.pos]
            if char in closers:
                break
            if char == "\\":
                if self.pos + 1 == len(self.prompt):
                    self.fail("a backslash at the end escapes nothing; write \\\\ for a backslash")
                text.append(self.prompt[self.pos + 1])
                self.pos += 2
            elif char in "([":
                _flush(text, nodes)
                nodes.append(self.round() if char == "(" else self.square())
            elif char in ")]":
                self.fail(f"'{char}' closes a bracket that was never opened (write \\{char} for the character)")
            elif char == "|":
                self.fail("alternation [a|b] is not supported (write \\| for the character)")
            else:
                text.append(char)
                self.pos += 1
        _flush(text, nodes)
        return nodes

    def round(self) -> Weighted:
        start = self.pos
        self.pos += 1
        children = self.sequence(closers=":)")
        if self.pos == len(self.prompt):
            self.fail("'(' is never closed (write \\( for the character)", start)
        weight = ROUND_MULTIPLIER
        if self.prompt[self.pos] == ":":
            weight = self.number(until=")", what="weight")
            if weight < 0:
                self.fail(f"a weight must not be negative, got {weight}")
        self.pos += 1  # the ')'
        return Weighted(children, weight)

    def square(self) -> Weighted | Switch:
        start = self.pos
        self.pos += 1
        parts = [self.sequence(closers=":]")]
        while self.pos < len(self.prompt) and self.prompt[self.pos] == ":":
            if len(parts) == 2 or self._number_follows("]"):
                when = self.number(until="]", what="switch step")
                self.pos += 1
                return self._switch(parts, when, start)
            self.pos += 1
            parts.append(self.sequence(closers=":]"))
        if self.pos == len(self.prompt):
            self.fail("'[' is never closed (write \\[ for the character)", start)
        if len(parts) == 2:
            self.fail("a switch needs a step: [from:to:when], [to:when] or [from::when]")
        self.pos += 1  # the ']'
        return Weighted(parts[0], SQUARE_MULTIPLIER)

    def _switch(self, parts: list, when: float, start: int) -> Switch:
        if when < 0:
            self.fail(f"a switch step must be >= 0 (below 1: a fraction of the steps), got {when}", start)
        if len(parts) == 1:
            return Switch(None, parts[0], when)
        return Switch(parts[0], parts[1], when)

    def _number_follows(self, closer: str) -> bool:
        end = self.prompt.find(closer, self.pos + 1)
        return end >= 0 and _NUMBER.fullmatch(self.prompt[self.pos + 1:end]) is not None

    def number(self, until: str, what: str) -> float:
        """At a ':'; read the number up to ``until`` and stop on it."""
        colon = self.pos
        end = self.prompt.find(until, colon + 1)
        if end < 0:
            self.fail(f"the ':' here is never closed with '{until}'", colon)
        raw = self.prompt[colon + 1:end]
        if not _NUMBER.fullmatch(raw):
            self.fail(f"the {what} after ':' must be a number like 1.3 or 0.5, got {raw!r}"
                      f" (write \\: for a colon in the text)", colon + 1)
        self.pos = end
        return float(raw)


def _flush(text: list, nodes: list) -> None:
    if text:
        nodes.append(Text("".join(text)))
        text.clear()


# --- what the syntax means at a step ---------------------------------------------------------------


def switch_steps(nodes: list, steps: int) -> list[int]:
    """Sorted step numbers at which some switch in ``nodes`` happens, as A1111 computes them."""
    found = set()
    for node in _walk(nodes):
        if isinstance(node, Switch):
            found.add(switch_step(node.when, steps))
    return sorted(found)


def switch_step(when: float, steps: int) -> int:
    """A1111: below 1 a fraction of the steps, else a step number; never past the last step."""
    return min(steps, int(when * steps if when < 1 else when))


def at_step(nodes: list, step: int, steps: int, weight: float = 1.0) -> list[tuple[str, float]]:
    """The (text, weight) runs the prompt stands for at schedule step ``step`` (A1111's 1-based count)."""
    runs = []
    for node in nodes:
        if isinstance(node, Text):
            runs.append((node.text, weight))
        elif isinstance(node, Weighted):
            runs.extend(at_step(node.children, step, steps, weight * node.weight))
        else:
            chosen = node.before if step <= switch_step(node.when, steps) else node.after
            runs.extend(at_step(chosen or [], step, steps, weight))
    return _merge(runs)


def weighted_chunks(prompt: str) -> list[tuple[str, float]]:
    """(text, weight) runs of a prompt without switches, neighbours of equal weight merged (A1111's
    parse_prompt_attention). A prompt with switches: use ``schedule``."""
    nodes = parse(prompt)
    if any(isinstance(node, Switch) for node in _walk(nodes)):
        raise ValueError(f"prompt {prompt!r} has [from:to:when] switches; use schedule(prompt, steps)")
    return at_step(nodes, 1, 1)


def schedule(prompt: str, steps: int) -> list[tuple[int, list[tuple[str, float]]]]:
    """A1111's prompt schedule: [(end_at_step, (text, weight) runs)], used while step <= end_at_step."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    nodes = parse(prompt)
    ends = sorted({steps, *switch_steps(nodes, steps)})
    return [(end, at_step(nodes, end, steps)) for end in ends]


def conditioning_index(entries: list, step: int) -> int:
    """Which schedule entry drives the sampler's ``step`` (0-based, as A1111 counts): the first with
    step <= end_at_step (the last one past the end)."""
    for index, (end, _) in enumerate(entries):
        if step <= end:
            return index
    return len(entries) - 1


def plain_text(runs: list[tuple[str, float]]) -> str:
    """The text of the runs, weights dropped."""
    return "".join(text for text, _ in runs)


def describe(runs: list[tuple[str, float]]) -> str:
    """The runs written back in weighting syntax: '(red:1.3)' for weighted text, plain text as is."""
    return "".join(text if weight == 1.0 else f"({text}:{weight:.4g})" for text, weight in runs)


def _walk(nodes: list):
    for node in nodes:
        yield node
        if isinstance(node, Weighted):
            yield from _walk(node.children)
        elif isinstance(node, Switch):
            yield from _walk(node.before or [])
            yield from _walk(node.after)


def _merge(runs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in runs:
        if not text:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]
