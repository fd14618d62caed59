"""Build a CLIP-format BPE tokenizer offline, from a list of words.

Stable Diffusion's tokenizer is CLIP's: lower-case byte-level BPE, words end in ``</w>``,
``<|startoftext|>`` opens every prompt and ``<|endoftext|>`` closes and pads it to 77 tokens.
No tokenizer can be downloaded here, so the tiny and toy models train their own merges with
the ``tokenizers`` library: every given word becomes one token, any other word falls back
to sub-words (e.g. "bozuman" -> several tokens), never to an unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77


def train_clip_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges that turn each word into a single token.

    Returns (vocab, merges) in CLIP's format: the 256 byte characters, the same with ``</w>``,
    then merged tokens, then the start and end tokens.
    """
    words = sorted({w.lower() for w in words if w.strip()})
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    merges_needed = sum(len(w.encode()) for w in words)
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + merges_needed + 2,
        min_frequency=1,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer=trainer)
    learned = bpe.get_vocab()
    merges = _merge_pairs(bpe)
    base = sorted(alphabet)
    vocab_tokens = base + [c + "</w>" for c in base]
    vocab_tokens += [tok for tok in sorted(learned, key=learned.get) if tok not in set(vocab_tokens)]
    vocab_tokens += [START_TOKEN, END_TOKEN]
    return {tok: i for i, tok in enumerate(vocab_tokens)}, merges


def _merge_pairs(bpe: Tokenizer) -> list[tuple[str, str]]:
    """The learned merges, in rank order, read from the serialised model."""
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def build_clip_tokenizer(words: Iterable[str]) -> CLIPTokenizer:
    """A CLIPTokenizer (model_max_length 77) whose vocabulary holds every word in ``words``."""
    vocab, merges = train_clip_bpe(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
