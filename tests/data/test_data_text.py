"""Text data sets: tinyshakespeare splits, windows shifted by one, local files, tokenizer choices."""

from __future__ import annotations

import pytest
import torch

import mlcanon.data as D
from mlcanon.data import files, text
from mlcanon.data.tokenizers import standardize
from mlcanon.errors import UserError


def test_tinyshakespeare_splits_and_windows(real_data):
    p = real_data / "tinyshakespeare" / "input.txt"
    assert "sha256:" + files.file_hash(p, "sha256") == text.TINYSHAKESPEARE_SHA256
    full = p.read_text(encoding="utf-8")
    parts = {s: D.load("text:tinyshakespeare", s, data_dir=real_data, block_size=64) for s in ("train", "valid", "test")}
    assert "".join(parts[s].text for s in ("train", "valid", "test")) == full  # contiguous, in order
    n = len(full)
    assert len(parts["train"].text) == round(0.9 * n) and len(parts["test"].text) == n - round(0.95 * n)
    tr = parts["train"]
    assert tr.vocab_size == 65 == tr.num_classes and tr.kind == "text" and tr.input_shape == (64,)
    assert tr.tokenizer.decode(tr.ids.tolist()) == tr.text and torch.equal(tr.x, tr.ids)
    assert len(tr) == len(tr.ids) - 64
    for i in (0, 12345, len(tr) - 1, -1):
        x, y = tr[i]
        j = i % len(tr)
        assert x.shape == y.shape == (64,) and x.dtype == torch.long
        assert torch.equal(x, tr.ids[j:j + 64]) and torch.equal(y, tr.ids[j + 1:j + 65])  # target = input shifted
        assert torch.equal(x[1:], y[:-1])
    with pytest.raises(IndexError):
        tr[len(tr)]
    xb, yb = next(iter(torch.utils.data.DataLoader(tr, batch_size=4, shuffle=True,
                                                  generator=torch.Generator().manual_seed(0))))
    assert xb.shape == yb.shape == (4, 64) and torch.equal(xb[:, 1:], yb[:, :-1])


def test_local_text_file_with_each_tokenizer(tmp_path):
    f = tmp_path / "corpus.txt"
    body = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 30
    f.write_text(body, encoding="utf-8")
    ch = D.load(f"text:{f}", "train", block_size=16)
    assert ch.tokenizer.decode(ch.ids.tolist()) == ch.text and ch.name == f"text:{f}"
    w = D.load(f"text:{f}", "valid", tokenizer="word", block_size=4)
    assert w.tokenizer.vocab[:3] == ["", "[UNK]", "to"]  # "to" is the most frequent word
    words = standardize(w.text).split()  # split edges may cut a word: that one becomes [UNK]
    assert w.tokenizer.decode(w.ids.tolist()).split() == [x if x in w.tokenizer.stoi else "[UNK]" for x in words]
    ws = D.load(f"text:{f}", "train", tokenizer="word", standardize="lower_and_split_punctuation", block_size=4)
    assert "," in ws.tokenizer.stoi and "," not in w.tokenizer.stoi
    with pytest.raises(UserError, match="word tokenizer only"):
        D.load(f"text:{f}", tokenizer="bpe", standardize="lower")
    b = D.load(f"text:{f}", "test", tokenizer="bpe", vocab_size=300, block_size=8)
    assert b.vocab_size == 300 and b.tokenizer.decode(b.ids.tolist()) == b.text
    # a tokenizer from a checkpoint (its JSON state) gives the same ids
    again = D.load(f"text:{f}", "test", tokenizer=b.tokenizer.state_dict(), block_size=8)
    assert torch.equal(again.ids, b.ids)


def test_text_errors(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("abcdefghij" * 10)
    with pytest.raises(UserError, match="block_size"):
        D.load(f"text:{f}", "valid", block_size=10)  # 5 characters in valid
    with pytest.raises(UserError, match="not found"):
        D.load(f"text:{tmp_path / 'nope.txt'}")
    with pytest.raises(UserError, match="unknown tokenizer"):
        D.load(f"text:{f}", tokenizer="sentencepiece")
    with pytest.raises(UserError, match="does not take"):
        D.load(f"text:{f}", seq_len=3)
    with pytest.raises(UserError, match="vocab_size"):
        D.load(f"text:{f}", tokenizer="char", vocab_size=10)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(UserError, match="UTF-8"):
        D.load(f"text:{bad}")
