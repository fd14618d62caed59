"""Build a CLIP-format BPE tokenizer offline, from a list of words.

Stable Diffusion's tokenizer is CLIP's: lower-case byte-level BPE, words end in ``</w>``,
``<|startoftext|>`` opens every prompt and ``<|endoftext|>`` closes and pads it to 77 tokens.
No tokenizer can be downloaded here, so the tiny and toy models learn their own merges: every
given word becomes one token, any other word falls back to sub-words (e.g. "bozuman" -> several
tokens), never to an unknown token.

The merges are learned here in plain Python with a fixed tie-break (most frequent pair first,
then the alphabetically smallest), so the same words give the same vocabulary, token ids and
merges in every process. (The ``tokenizers`` trainer breaks ties between equally frequent pairs
in hash order, which changes from one process to the next.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from transformers import CLIPTokenizer

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def train_clip_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges that turn each word into a single token, deterministically.

    Returns (vocab, merges) in CLIP's format: the 256 byte characters, the same with ``</w>``,
    then the merged tokens in the order they were learned, then the start and end tokens.
    """
    to_char = byte_to_unicode()
    unique = sorted({w.strip().lower() for w in words if w.strip()})
    pieces = []
    for word in unique:
        symbols = [to_char[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        pieces.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in pieces for pair in zip(symbols, symbols[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = [_apply_merge(symbols, best) for symbols in pieces]
    base = sorted(to_char.values())
    vocab_tokens = base + [c + END_OF_WORD for c in base]
    known = set(vocab_tokens)
    for left, right in merges:
        if left + right not in known:
            vocab_tokens.append(left + right)
            known.add(left + right)
    vocab_tokens += [START_TOKEN, END_TOKEN]
    return {tok: i for i, tok in enumerate(vocab_tokens)}, merges


def _apply_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def build_clip_tokenizer(words: Iterable[str]) -> CLIPTokenizer:
    """A CLIPTokenizer (model_max_length 77) whose vocabulary holds every word in ``words``."""
    vocab, merges = train_clip_bpe(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
