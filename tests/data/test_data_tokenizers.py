"""Tokenizers: exact round trips (hypothesis for char and BPE), BPE merges, Keras-style word vocabulary."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcanon.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    standardize,
    tokenizer_from_state,
)
from mlcanon.errors import UserError

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Café naïve — déjà vu! 東京 2024, we're 100% sure; isn't it? \t tabs_and_underscores\n") * 20
BPE = BPETokenizer.train(CORPUS, 320)


def json_round_trip(tok):
    return tokenizer_from_state(json.loads(json.dumps(tok.state_dict())))


ALPHABET = "abcdeé東 \n!"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=60))
def test_char_round_trip(t):
    tok = CharTokenizer.fit(ALPHABET)
    ids = tok.encode(t)
    assert len(ids) == len(t) and tok.decode(ids) == t
    assert json_round_trip(tok).encode(t) == ids


def test_char_vocab_and_unknown():
    tok = CharTokenizer.fit("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    with pytest.raises(UserError, match="'z'"):
        tok.encode("z")
    with pytest.raises(UserError, match="out of range"):
        tok.decode([8])


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_bpe_round_trip_any_unicode(t):
    ids = BPE.encode(t)
    assert BPE.decode(ids) == t
    assert all(0 <= i < BPE.vocab_size for i in ids)
    assert len(ids) <= len(t.encode("utf-8"))  # merges never lengthen the byte sequence


def test_bpe_learns_the_textbook_merges():
    # Wikipedia's example: aaabdaaabac -> aa=Z -> ZabdZabac -> ab=Y -> ZYdZYac -> ZY=X -> XdXac
    tok = BPETokenizer.train("aaabdaaabac", 259)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.decode([258]) == "aaab"


def test_bpe_compresses_and_state_round_trips():
    assert BPE.vocab_size == 320
    text = CORPUS[:300]
    ids = BPE.encode(text)
    assert len(ids) < 0.6 * len(text.encode("utf-8"))  # trained on this text: it compresses
    again = json_round_trip(BPE)
    assert again.merges == BPE.merges and again.encode(text) == ids
    with pytest.raises(UserError, match="vocab_size"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(UserError, match="not yet defined"):
        BPETokenizer([(300, 1)])


def test_word_tokenizer_like_text_vectorization():
    tok = WordTokenizer.fit("The cat sat. The dog sat, THE end!")
    assert tok.vocab == ["", "[UNK]", "the", "sat", "cat", "dog", "end"]  # by frequency, ties by first seen
    assert tok.encode("the Cat flew!") == [2, 4, 1]
    t = "The  dog\tsat,  the cat."
    assert tok.decode(tok.encode(t)) == " ".join(standardize(t).split()) == "the dog sat the cat"
    assert tok.decode([0, 2, 0]) == "the"  # padding skipped
    small = WordTokenizer.fit("a a a b b c", max_tokens=4)
    assert small.vocab == ["", "[UNK]", "a", "b"] and small.encode("c") == [1]
    split = WordTokenizer.fit("Hi, there. Hi!", standardize="lower_and_split_punctuation")
    assert split.decode(split.encode("hi, there!")) == "hi , there !"
    assert json_round_trip(split).vocab == split.vocab and json_round_trip(split).standardize == split.standardize
    with pytest.raises(UserError, match="standardize"):
        WordTokenizer.fit("x", standardize="upper")
    with pytest.raises(UserError, match="max_tokens"):
        WordTokenizer.fit("x", max_tokens=2)


def test_standardize_modes():
    s = "Hello, World! It's"
    assert standardize(s) == "hello world its"
    assert standardize(s, "lower") == "hello, world! it's"
    assert standardize(s, "strip_punctuation") == "Hello World Its"
    assert standardize(s, None) == s
    with pytest.raises(UserError, match="tokenizer state"):
        tokenizer_from_state({"type": "sentencepiece"})
