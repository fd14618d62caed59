"""Prompts as the model sees them: the token table, sub-words merged back into words.

CLIP's tokenizer turns a prompt into ``<|startoftext|>``, sub-word tokens (a word's last
sub-word ends in ``</w>``), ``<|endoftext|>``, then end tokens as padding up to 77. T5's
(SentencePiece) has no start token: sub-words (a word's first begins with "▁"), ``</s>``, then
``<pad>`` up to the pipeline's max_sequence_length. Words past the context are cut off; the
table keeps them, flagged ``truncated``, so a user sees what the model never saw.
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

    position: index in the context (>= its length, 77 for CLIP, for truncated tokens, which the model never sees);
    kind: "start", "word", "end" (the first end token), "padding" (the end/pad tokens after it);
    word_index: which word of the prompt this sub-word belongs to (None for start/end/padding);
    word: that whole word, sub-words merged ("bozuman" for "b", "o", ..., "an</w>");
    encoder: which text encoder's table this row is from ("clip", "clip_2", "t5").
    """

    position: int
    id: int
    text: str
    kind: str
    word_index: int | None
    word: str | None
    truncated: bool
    encoder: str = "clip"

    @property
    def is_padding(self) -> bool:
        return self.kind == "padding"

    def to_dict(self) -> dict:
        return asdict(self)


def token_table(tokenizer, prompt: str, *, warn: bool = True, max_length: int | None = None,
                encoder: str | None = None) -> list[Token]:
    """All tokens of ``prompt``: the ``max_length`` the model sees, then any that were cut off.

    max_length: the context (default: the tokenizer's model_max_length, 77 for CLIP; give the
    pipeline's max_sequence_length for T5). encoder: the rows' ``encoder`` ("clip" for a CLIP
    tokenizer, "t5" for a SentencePiece one, unless given). Warns (PromptTruncatedWarning) when the
    prompt is longer than the context.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r:.60}")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError("tokenizer must be a transformers tokenizer (e.g. pipe.tokenizer), "
                        f"got {type(tokenizer).__name__}")
    sentencepiece = is_sentencepiece(tokenizer)
    encoder = encoder or ("t5" if sentencepiece else "clip")
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", MAX_TOKENS)
        if not isinstance(max_length, int) or max_length > 10_000:
            max_length = MAX_TOKENS
    word_ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    room = max_length - (1 if sentencepiece else 2)
    kept, cut = word_ids[:room], word_ids[room:]
    if cut and warn:
        specials = "an end token" if sentencepiece else "start and end tokens"
        warnings.warn(
            f"prompt has {len(word_ids)} word tokens but the {'' if encoder == 'clip' else encoder + ' '}text encoder "
            f"sees only {room} "
            f"({max_length} with {specials}); {len(cut)} were cut: "
            f"{tokenizer.decode(cut)!r}. The token table lists them with truncated=True.",
            PromptTruncatedWarning,
            stacklevel=3,
        )
    tokens = [] if sentencepiece else [_special(tokenizer, 0, tokenizer.bos_token_id, "start", encoder)]
    words = _words_of(tokenizer, word_ids, sentencepiece)
    for token_id, (word_index, word) in zip(kept, words):
        tokens.append(_word_token(tokenizer, len(tokens), token_id, word_index, word, False, encoder))
    tokens.append(_special(tokenizer, len(tokens), tokenizer.eos_token_id, "end", encoder))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    while len(tokens) < max_length:
        tokens.append(_special(tokenizer, len(tokens), pad_id, "padding", encoder))
    for offset, (token_id, (word_index, word)) in enumerate(zip(cut, words[room:])):
        tokens.append(_word_token(tokenizer, max_length + offset, token_id, word_index, word, True, encoder))
    return tokens


def is_sentencepiece(tokenizer) -> bool:
    """True for a T5-style tokenizer: no start token, words begin with "▁" (CLIP's end with "</w>")."""
    return tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None


@dataclass(frozen=True)
class TokenGroup:
    """Tokens that belong together in the table: the start token, one word (its sub-words), the end token, or all
    the padding. label: "<start>", the word, "<end>" or "<pad>"; pieces: each token's text without "</w>" or "▁"."""

    kind: str
    label: str
    positions: tuple[int, ...]
    pieces: tuple[str, ...]


def token_groups(tokens: list[Token]) -> list[TokenGroup]:
    """The table's visible tokens grouped: start, each word with its sub-words (in order), end, padding; a
    sequence table of several encoders (SD3: CLIP then T5) gives each encoder's groups in turn."""
    groups: list[TokenGroup] = []
    labels = {"start": "<start>", "end": "<end>", "padding": "<pad>"}
    previous: Token | None = None
    for token in (t for t in tokens if not t.truncated):
        piece = token.text.removesuffix("</w>").removeprefix("▁")
        same_encoder = previous is not None and previous.encoder == token.encoder
        same_word = token.kind == "word" and same_encoder and previous.kind == "word" \
            and previous.word_index == token.word_index
        if same_word or (token.kind == "padding" and same_encoder and previous.kind == "padding"):
            last = groups[-1]
            groups[-1] = TokenGroup(last.kind, last.label, last.positions + (token.position,), last.pieces + (piece,))
        else:
            label = token.word if token.kind == "word" else labels[token.kind]
            groups.append(TokenGroup(token.kind, label, (token.position,), (piece,)))
        previous = token
    return groups


def word_positions(tokens: list[Token], word: str) -> list[int]:
    """Positions (the ones the model sees) of every sub-word token of every occurrence of ``word``.

    Raises ValueError listing the prompt's words when ``word`` is not one of them.
    """
    wanted = word.strip().lower()
    positions = [t.position for t in tokens if t.word == wanted and not t.truncated]
    if not positions:
        available = sorted({t.word for t in tokens if t.word and not t.truncated})
        raise ValueError(f"word {word!r} is not in the prompt; its words are: {', '.join(available)}")
    return positions


def _words_of(tokenizer, token_ids: list[int], sentencepiece: bool = False) -> list[tuple[int, str]]:
    """(word_index, whole word) for each sub-word token.

    CLIP: a word ends at a token ending in </w>. T5: a word starts at a token beginning with "▁";
    punctuation pieces (no letter or digit) are words of their own, as CLIP spells them.
    """
    pieces = tokenizer.convert_ids_to_tokens(token_ids)
    result, current, word_index = [], [], 0
    for token_id, piece in zip(token_ids, pieces):
        if sentencepiece and current and (piece.startswith("▁") or _is_punctuation(piece)
                                          or _is_punctuation(pieces[len(result) + len(current) - 1])):
            result.extend(_close_word(tokenizer, current, word_index))
            current, word_index = [], word_index + 1
        current.append(token_id)
        if not sentencepiece and piece.endswith("</w>"):
            result.extend(_close_word(tokenizer, current, word_index))
            current, word_index = [], word_index + 1
    if current:
        result.extend(_close_word(tokenizer, current, word_index))
    return result


def _is_punctuation(piece: str) -> bool:
    text = piece.removeprefix("▁")
    return bool(text) and not any(c.isalnum() for c in text)


def _close_word(tokenizer, token_ids: list[int], word_index: int) -> list[tuple[int, str]]:
    word = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
    return [(word_index, word)] * len(token_ids)


def _word_token(tokenizer, position, token_id, word_index, word, truncated, encoder) -> Token:
    text = tokenizer.convert_ids_to_tokens(token_id)
    return Token(position, int(token_id), text, "word", word_index, word, truncated, encoder)


def _special(tokenizer, position, token_id, kind, encoder) -> Token:
    return Token(position, int(token_id), tokenizer.convert_ids_to_tokens(token_id), kind, None, None, False, encoder)
