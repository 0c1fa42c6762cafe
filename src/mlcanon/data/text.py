"""Text data sets for language models: ``text:tinyshakespeare`` and ``text:<PATH>`` (any UTF-8 file).

The text is split by characters: the first ``1 - val_fraction - test_fraction`` (90%) is train, the next
``val_fraction`` (5%) valid, the last ``test_fraction`` (5%) test. The tokenizer is fitted on the whole
text for ``char`` (so every split's characters are known, as nanoGPT does) and on the train part for
``word`` and ``bpe``; a ready tokenizer (or its ``state_dict()``) may be passed instead, e.g. from a
checkpoint. Item ``i`` is the window ``(ids[i : i+B], ids[i+1 : i+B+1])``: the target is the input
shifted by one token (next-token prediction).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlcanon.data.base import check_fraction, check_split
from mlcanon.data.files import fetch
from mlcanon.data.tokenizers import (
    TOKENIZERS,
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    tokenizer_from_state,
)
from mlcanon.errors import UserError

TINYSHAKESPEARE_SHA256 = "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_BPE_VOCAB = 512
WORD_STANDARDIZE = "lower_and_strip_punctuation"  # Keras TextVectorization's default
_fitted: dict[tuple, object] = {}  # (file, size, mtime, kind, vocab_size, fractions) -> tokenizer


class TextDataset(torch.utils.data.Dataset):
    """Token ids of one split with (block, next-block) windows of ``block_size``.

    Attributes: ``text`` (this split's text), ``tokenizer``, ``ids`` (LongTensor) = ``x``, ``targets``
    (None), ``block_size``, ``vocab_size`` = ``num_classes``, ``input_shape`` = (block_size,),
    ``name``, ``split``, ``kind`` = "text".
    """

    def __init__(self, name: str, split: str, text: str, tokenizer, block_size: int):
        self.name, self.split, self.kind = name, split, "text"
        self.text = text
        self.tokenizer = tokenizer
        self.ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        self.x = self.ids
        self.targets = None
        self.block_size = block_size
        self.vocab_size = self.num_classes = tokenizer.vocab_size
        self.input_shape = (block_size,)
        if len(self.ids) <= block_size:
            raise UserError(f"{name} {split} split has {len(self.ids)} tokens, not more than block_size="
                            f"{block_size}; use a smaller block_size or a longer text")

    def __len__(self) -> int:
        """Number of windows: every start offset with a full block and its next token."""
        return len(self.ids) - self.block_size

    def __getitem__(self, i):
        """``(ids[i:i+B], ids[i+1:i+B+1])``."""
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        chunk = self.ids[i:i + self.block_size + 1]
        return chunk[:-1], chunk[1:]  # target = input shifted by one

    def __repr__(self) -> str:
        return (f"TextDataset(name={self.name!r}, split={self.split!r}, tokens={len(self.ids)}, "
                f"vocab_size={self.vocab_size}, block_size={self.block_size})")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from e


def _tokenizer(spec, vocab_size, text: str, train_text: str, key: tuple,
               standardize: str | None = WORD_STANDARDIZE):
    """A tokenizer from a name ("char" | "word" | "bpe"), an instance, or a state dict."""
    if isinstance(spec, (CharTokenizer, WordTokenizer, BPETokenizer)):
        if vocab_size is not None:
            raise UserError("vocab_size applies when a tokenizer is trained; drop it with a ready tokenizer")
        return spec
    if isinstance(spec, dict):
        return tokenizer_from_state(spec)
    if spec not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {spec!r}: use one of {', '.join(TOKENIZERS)}")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)):
        raise UserError(f"vocab_size must be an int, got {vocab_size!r}")
    if spec != "word" and standardize != WORD_STANDARDIZE:
        raise UserError(f"standardize applies to the word tokenizer only, not {spec!r}; drop it")
    if spec == "char" and vocab_size is not None:
        raise UserError("vocab_size does not apply to the char tokenizer (its vocabulary is the text's characters)")
    cache_key = key + (spec, vocab_size, standardize)
    if cache_key not in _fitted:
        if spec == "char":
            tok = CharTokenizer.fit(text)
        elif spec == "word":
            tok = WordTokenizer.fit(train_text, max_tokens=vocab_size, standardize=standardize)
        else:
            tok = BPETokenizer.train(train_text, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
        _fitted[cache_key] = tok
    return _fitted[cache_key]


def load(source: str, split: str, data_dir=None, tokenizer="char", vocab_size: int | None = None,
         block_size: int = 128, val_fraction: float = 0.05, test_fraction: float = 0.05,
         standardize: str | None = WORD_STANDARDIZE) -> TextDataset:
    """``text:<source>``: ``tinyshakespeare`` (fetched, sha256-checked) or a path to a local text file.

    ``vocab_size``: number of ids for ``bpe`` (default 512) or the most for ``word`` (Keras max_tokens);
    ``standardize``: the word tokenizer's text standardization (see :func:`tokenizers.standardize`).
    """
    check_split(split)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"block_size must be a positive int, got {block_size!r}")
    v, t = check_fraction("val_fraction", val_fraction), check_fraction("test_fraction", test_fraction)
    if v + t >= 1:
        raise UserError(f"val_fraction + test_fraction must be < 1, got {v + t}")
    if source == "tinyshakespeare":
        path = fetch("tinyshakespeare", "input.txt", data_dir, checksum=TINYSHAKESPEARE_SHA256)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"text file {source!r} not found: use text:tinyshakespeare or text:<PATH> with "
                            f"the path of an existing UTF-8 text file")
    text = _read_text(path)
    n = len(text)
    a, b = round((1 - v - t) * n), round((1 - t) * n)  # [0, a) train, [a, b) valid, [b, n) test
    parts = {"train": text[:a], "valid": text[a:b], "test": text[b:]}
    st = path.stat()
    tok = _tokenizer(tokenizer, vocab_size, text, parts["train"],
                     (str(path.resolve()), st.st_size, st.st_mtime_ns, v, t), standardize)
    return TextDataset(f"text:{source}", split, parts[split], tok, block_size)
