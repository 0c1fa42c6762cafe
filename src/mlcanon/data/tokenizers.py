"""Tokenizers: character level, word level (Keras TextVectorization style) and byte-level BPE.

All share ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``, and
``state_dict()`` / ``from_state(dict)`` made of JSON-able values only (for checkpoints; never pickle).
:func:`tokenizer_from_state` rebuilds any of them from its state dict.

Round trips:

- :class:`CharTokenizer`: ``decode(encode(t)) == t`` for any ``t`` made of characters in the vocabulary.
- :class:`WordTokenizer`: ``decode(encode(t)) == " ".join(standardize(t).split())`` when every word of
  ``t`` is in the vocabulary (out-of-vocabulary words come back as ``[UNK]``; whitespace runs become one space).
- :class:`BPETokenizer`: ``decode(encode(t)) == t`` exactly for every string ``t`` (any unicode).
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter

from mlcanon.errors import UserError


class CharTokenizer:
    """One id per character; vocabulary = the sorted distinct characters of the fitting text."""

    def __init__(self, chars: list[str] | str):
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise UserError("CharTokenizer needs a list of distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """Vocabulary of the distinct characters of ``text``, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; UserError naming any character not in the vocabulary."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary of "
                            f"{self.vocab_size}; fit the tokenizer on text that contains it") from None

    def decode(self, ids) -> str:
        """Characters of ``ids`` joined."""
        return "".join(self.chars[_id(i, self.vocab_size)] for i in ids)

    def state_dict(self) -> dict:
        """JSON-able state."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_state(cls, state: dict) -> CharTokenizer:
        """Inverse of :meth:`state_dict`."""
        _expect_type(state, "char")
        return cls(list(state["chars"]))


# ---------------------------------------------------------------------------------------------- word
#: Keras TextVectorization's punctuation set (``string.punctuation``), stripped or split off.
PUNCTUATION = string.punctuation
_PUNCT_RE = re.compile("[" + re.escape(PUNCTUATION) + "]")
STANDARDIZE = ("lower_and_strip_punctuation", "strip_punctuation", "lower",
               "lower_and_split_punctuation", "split_punctuation", None)


def standardize(text: str, mode: str | None = "lower_and_strip_punctuation") -> str:
    """Text standardization as Keras TextVectorization's ``standardize`` (plus ``*_split_punctuation``).

    ``lower``: lowercase; ``strip_punctuation``: delete the characters of :data:`PUNCTUATION`;
    ``split_punctuation``: surround each punctuation character with spaces so it becomes its own word.
    """
    if mode not in STANDARDIZE:
        raise UserError(f"unknown standardize {mode!r}: use one of {STANDARDIZE}")
    if mode is None:
        return text
    if mode.startswith("lower"):
        text = text.lower()
    if mode.endswith("strip_punctuation"):
        text = _PUNCT_RE.sub("", text)
    elif mode.endswith("split_punctuation"):
        text = _PUNCT_RE.sub(lambda m: f" {m.group(0)} ", text)
    return text


_standardize = standardize  # alias: WordTokenizer's argument of the same name shadows the function


class WordTokenizer:
    """Word-level vocabulary like Keras TextVectorization: id 0 = "" (padding), 1 = "[UNK]", then words by
    decreasing frequency (ties by first appearance); text is standardized then split on whitespace."""

    PAD, UNK = "", "[UNK]"

    def __init__(self, vocab: list[str], standardize: str | None = "lower_and_strip_punctuation"):
        if vocab[:2] != [self.PAD, self.UNK] or len(set(vocab)) != len(vocab):
            raise UserError('WordTokenizer vocab must start with "" and "[UNK]" and hold distinct words')
        if standardize not in STANDARDIZE:
            raise UserError(f"unknown standardize {standardize!r}: use one of {STANDARDIZE}")
        self.vocab = list(vocab)
        self.standardize = standardize
        self.stoi = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def fit(cls, text: str, max_tokens: int | None = None,
            standardize: str | None = "lower_and_strip_punctuation") -> WordTokenizer:
        """Frequency-ranked vocabulary of ``text``'s words, at most ``max_tokens`` entries (incl. "" and [UNK])."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 3):
            raise UserError(f"max_tokens must be an int >= 3 (it counts '' and [UNK]), got {max_tokens!r}")
        counts = Counter(_standardize(text, standardize).split())
        counts.pop(cls.UNK, None)
        # Counter.most_common sorts by count, stable for ties -> first appearance order
        words = [w for w, _ in counts.most_common()]
        if max_tokens is not None:
            words = words[: max_tokens - 2]
        return cls([cls.PAD, cls.UNK] + words, standardize)

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding and [UNK] included."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of the standardized words of ``text`` (1 = [UNK] for unknown words)."""
        return [self.stoi.get(w, 1) for w in standardize(text, self.standardize).split()]

    def decode(self, ids) -> str:
        """Words of ``ids`` joined by single spaces; padding (id 0) is skipped."""
        return " ".join(self.vocab[_id(i, self.vocab_size)] for i in ids if int(i) != 0)

    def state_dict(self) -> dict:
        """JSON-able state."""
        return {"type": "word", "vocab": list(self.vocab), "standardize": self.standardize}

    @classmethod
    def from_state(cls, state: dict) -> WordTokenizer:
        """Inverse of :meth:`state_dict`."""
        _expect_type(state, "word")
        return cls(list(state["vocab"]), state["standardize"])


# ----------------------------------------------------------------------------------------------- BPE
# Pre-tokenization (GPT-2 style, without \p classes): contractions, optional space + letters / digits /
# other symbols, whitespace. The last alternative matches any single character, so the chunks always
# tile the text and byte-level encoding is exactly invertible.
_PRETOKEN_RE = re.compile(
    r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+|[\s\S]"""
)


def _merge(seq: tuple[int, ...], pair: tuple[int, int], new: int) -> tuple[int, ...]:
    """Replace every non-overlapping occurrence (left to right) of ``pair`` in ``seq`` by ``new``."""
    out, i, n = [], 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


class BPETokenizer:
    """Byte-level byte-pair encoding (Sennrich et al. 2016; GPT-2's byte variant).

    Ids 0..255 are the bytes; id 256 + k is merge k, the pair ``merges[k]`` of two earlier ids. Training
    repeatedly merges the most frequent adjacent pair (ties: the smallest pair) within pre-tokenized chunks;
    encoding applies merges in the order learned (lowest rank first).
    """

    def __init__(self, merges: list[tuple[int, int]] | None = None):
        self.merges = [tuple(int(a) for a in m) for m in (merges or [])]
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + k and 0 <= b < 256 + k):
                raise UserError(f"BPE merge {k} = ({a}, {b}) refers to an id not yet defined")
        self.ranks = {m: k for k, m in enumerate(self.merges)}
        self._bytes: list[bytes] = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges on ``text`` (fewer when no adjacent pair is left to merge)."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256:
            raise UserError(f"vocab_size must be an int >= 256 (the 256 bytes), got {vocab_size!r}")
        chunk_counts = Counter(_PRETOKEN_RE.findall(text))
        words = [tuple(c.encode("utf-8")) for c in chunk_counts]
        freq = list(chunk_counts.values())
        pairs: Counter = Counter()  # pair -> number of occurrences, weighted by chunk frequency
        where: dict[tuple[int, int], set[int]] = {}  # pair -> chunks that contain it
        for wi, w in enumerate(words):
            for p in itertools.pairwise(w):
                pairs[p] += freq[wi]
                where.setdefault(p, set()).add(wi)
        merges: list[tuple[int, int]] = []
        while 256 + len(merges) < vocab_size and pairs:
            best = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))[0]
            if pairs[best] < 1:
                break
            new = 256 + len(merges)
            merges.append(best)
            for wi in list(where.get(best, ())):
                old = words[wi]
                for p in itertools.pairwise(old):  # remove the chunk's old pairs ...
                    pairs[p] -= freq[wi]
                    if pairs[p] <= 0:
                        del pairs[p]
                    where[p].discard(wi)
                w = _merge(old, best, new)
                words[wi] = w
                for p in itertools.pairwise(w):  # ... and add the merged chunk's pairs
                    pairs[p] += freq[wi]
                    where.setdefault(p, set()).add(wi)
            where.pop(best, None)
        return cls(merges)

    @property
    def vocab_size(self) -> int:
        """256 byte ids plus one per merge."""
        return 256 + len(self.merges)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        seq = tuple(chunk.encode("utf-8"))
        while len(seq) > 1:
            ranked = [(self.ranks[p], p) for p in itertools.pairwise(seq) if p in self.ranks]
            if not ranked:
                break
            rank, pair = min(ranked)  # the earliest-learned merge applies first
            seq = _merge(seq, pair, 256 + rank)
        if len(self._cache) < 200_000:
            self._cache[chunk] = seq
        return seq

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (UTF-8 bytes, merged)."""
        out: list[int] = []
        for chunk in _PRETOKEN_RE.findall(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def decode(self, ids) -> str:
        """Text of ``ids``: the bytes joined and decoded as UTF-8 (invalid sequences become U+FFFD; never
        the case for ids from :meth:`encode`)."""
        return b"".join(self._bytes[_id(i, self.vocab_size)] for i in ids).decode("utf-8", errors="replace")

    def state_dict(self) -> dict:
        """JSON-able state."""
        return {"type": "bpe", "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_state(cls, state: dict) -> BPETokenizer:
        """Inverse of :meth:`state_dict`."""
        _expect_type(state, "bpe")
        return cls([tuple(m) for m in state["merges"]])


# ---------------------------------------------------------------------------------------------- misc
TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}


def tokenizer_from_state(state: dict):
    """Rebuild a Char/Word/BPE tokenizer from its ``state_dict()``."""
    kind = state.get("type") if isinstance(state, dict) else None
    if kind not in TOKENIZERS:
        raise UserError(f"not a tokenizer state (type {kind!r}); expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].from_state(state)


def _expect_type(state: dict, kind: str) -> None:
    if not isinstance(state, dict) or state.get("type") != kind:
        raise UserError(f"expected a {kind!r} tokenizer state, got type {state.get('type') if isinstance(state, dict) else state!r}")


def _id(i, n: int) -> int:
    """``int(i)``, with UserError when out of range [0, n)."""
    i = int(i)
    if not 0 <= i < n:
        raise UserError(f"token id {i} out of range for a vocabulary of {n}")
    return i
