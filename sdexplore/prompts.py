"""Prompts as the model sees them: the 77-token table, sub-words merged back into words.

CLIP's tokenizer turns a prompt into ``<|startoftext|>``, sub-word tokens (a word's last
sub-word ends in ``</w>``), ``<|endoftext|>``, then end tokens as padding up to 77. Words past
the 77th position are cut off; the table keeps them, flagged ``truncated``, so a user sees what
the model never saw.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

MAX_TOKENS = 77


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder's 77-token context."""


@dataclass(frozen=True)
class Token:
    """One row of the token table.

    position: index in the 77-token context (>= 77 for truncated tokens, which the model never sees);
    kind: "start", "word", "end" (the first end token), "padding" (the end tokens after it);
    word_index: which word of the prompt this sub-word belongs to (None for start/end/padding);
    word: that whole word, sub-words merged ("bozuman" for "b", "o", ..., "an</w>").
    """

    position: int
    id: int
    text: str
    kind: str
    word_index: int | None
    word: str | None
    truncated: bool

    @property
    def is_padding(self) -> bool:
        return self.kind == "padding"

    def to_dict(self) -> dict:
        return asdict(self)


def token_table(tokenizer, prompt: str, *, warn: bool = True) -> list[Token]:
    """All tokens of ``prompt``: the 77 the model sees, then any that were cut off.

    Warns (PromptTruncatedWarning) when the prompt is longer than the context.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r:.60}")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError("tokenizer must be a transformers tokenizer (e.g. pipe.tokenizer), "
                        f"got {type(tokenizer).__name__}")
    max_length = getattr(tokenizer, "model_max_length", MAX_TOKENS)
    if not isinstance(max_length, int) or max_length > 10_000:
        max_length = MAX_TOKENS
    word_ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    room = max_length - 2
    kept, cut = word_ids[:room], word_ids[room:]
    if cut and warn:
        warnings.warn(
            f"prompt has {len(word_ids)} word tokens but the text encoder sees only {room} "
            f"(77 with start and end tokens); {len(cut)} were cut: "
            f"{tokenizer.decode(cut)!r}. The token table lists them with truncated=True.",
            PromptTruncatedWarning,
            stacklevel=3,
        )
    tokens = [_special(tokenizer, 0, tokenizer.bos_token_id, "start")]
    words = _words_of(tokenizer, word_ids)
    for offset, (token_id, (word_index, word)) in enumerate(zip(kept, words)):
        tokens.append(_word_token(tokenizer, 1 + offset, token_id, word_index, word, truncated=False))
    tokens.append(_special(tokenizer, len(tokens), tokenizer.eos_token_id, "end"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    while len(tokens) < max_length:
        tokens.append(_special(tokenizer, len(tokens), pad_id, "padding"))
    for offset, (token_id, (word_index, word)) in enumerate(zip(cut, words[room:])):
        tokens.append(_word_token(tokenizer, max_length + offset, token_id, word_index, word, truncated=True))
    return tokens


@dataclass(frozen=True)
class TokenGroup:
    """Tokens that belong together in the table: the start token, one word (its sub-words), the end token, or all
    the padding. label: "<start>", the word, "<end>" or "<pad>"; pieces: each token's text without "</w>"."""

    kind: str
    label: str
    positions: tuple[int, ...]
    pieces: tuple[str, ...]


def token_groups(tokens: list[Token]) -> list[TokenGroup]:
    """The table's visible tokens (< 77) grouped: start, each word with its sub-words (in order), end, padding."""
    groups: list[TokenGroup] = []
    labels = {"start": "<start>", "end": "<end>", "padding": "<pad>"}
    previous: Token | None = None
    for token in (t for t in tokens if not t.truncated):
        piece = token.text.removesuffix("</w>")
        same_word = token.kind == "word" and previous is not None and previous.kind == "word" \
            and previous.word_index == token.word_index
        if same_word or (token.kind == "padding" and previous is not None and previous.kind == "padding"):
            last = groups[-1]
            groups[-1] = TokenGroup(last.kind, last.label, last.positions + (token.position,), last.pieces + (piece,))
        else:
            label = token.word if token.kind == "word" else labels[token.kind]
            groups.append(TokenGroup(token.kind, label, (token.position,), (piece,)))
        previous = token
    return groups


def word_positions(tokens: list[Token], word: str) -> list[int]:
    """Positions (< 77) of every sub-word token of every occurrence of ``word``.

    Raises ValueError listing the prompt's words when ``word`` is not one of them.
    """
    wanted = word.strip().lower()
    positions = [t.position for t in tokens if t.word == wanted and not t.truncated]
    if not positions:
        available = sorted({t.word for t in tokens if t.word and not t.truncated})
        raise ValueError(f"word {word!r} is not in the prompt; its words are: {', '.join(available)}")
    return positions


def _words_of(tokenizer, token_ids: list[int]) -> list[tuple[int, str]]:
    """(word_index, whole word) for each sub-word token; a word ends at a token ending in </w>."""
    pieces = tokenizer.convert_ids_to_tokens(token_ids)
    result, current, word_index = [], [], 0
    for token_id, piece in zip(token_ids, pieces):
        current.append(token_id)
        if piece.endswith("</w>"):
            result.extend(_close_word(tokenizer, current, word_index))
            current, word_index = [], word_index + 1
    if current:
        result.extend(_close_word(tokenizer, current, word_index))
    return result


def _close_word(tokenizer, token_ids: list[int], word_index: int) -> list[tuple[int, str]]:
    word = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
    return [(word_index, word)] * len(token_ids)


def _word_token(tokenizer, position, token_id, word_index, word, *, truncated) -> Token:
    text = tokenizer.convert_ids_to_tokens(token_id)
    return Token(position, int(token_id), text, "word", word_index, word, truncated)


def _special(tokenizer, position, token_id, kind) -> Token:
    return Token(position, int(token_id), tokenizer.convert_ids_to_tokens(token_id), kind, None, None, False)
