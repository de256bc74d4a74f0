"""Tokenizers: exact round trips (including non-ASCII), the newline end-of-sample id, save/load."""

from __future__ import annotations

import json

import pytest

from rmt.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

TRICKY = "naïve café — 東京 🙂"
SAMPLES = [
    "Q: Where does Vorla Minet live? A: Paris\n",
    "Vorla Minet lives in Paris.\n",
    "Q: Mia has 7 apples. She gets 5 more. How many apples now? A: 12\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
] * 50


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(iter(SAMPLES), vocab_size=400)


def test_byte_tokenizer():
    tokenizer = ByteTokenizer()
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.vocab_size, tokenizer.pad_id) == (257, 256)
    assert tokenizer.encode("\n") == [tokenizer.eos_id] == [10]
    ids = tokenizer.encode(TRICKY)
    assert ids == list(TRICKY.encode("utf-8")) and max(ids) < 256
    assert tokenizer.decode(ids) == TRICKY
    assert tokenizer.decode([tokenizer.pad_id, *ids, tokenizer.pad_id]) == TRICKY  # padding ignored
    assert tokenizer.decode(ids[:-1]) == TRICKY[:-1] + "\ufffd"  # a cut-off emoji does not raise


@pytest.mark.parametrize("text", [TRICKY, "", "\n\n", "Q: x? A: 1\n", "\x00\x7f tabs\tand  spaces  "])
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_properties(bpe):
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size <= 400
    assert bpe.encode("\n") == [bpe.eos_id]
    # The newline is never merged, so the end of every sample is visible as eos_id.
    assert bpe.encode("\n\n") == [bpe.eos_id, bpe.eos_id]
    assert bpe.encode("Paris\n")[-1] == bpe.eos_id
    assert bpe.encode(" \nThe")[1] == bpe.eos_id
    assert len(bpe.encode(SAMPLES[0])) < len(SAMPLES[0])  # merges were learned
    ids = bpe.encode(TRICKY)
    assert bpe.pad_id not in ids and bpe.decode([bpe.pad_id, *ids]) == TRICKY


def test_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size: expected >= 257"):
        BPETokenizer.train(["abc"], vocab_size=100)


def test_save_load_round_trip(tmp_path, bpe):
    for tokenizer in (ByteTokenizer(), bpe):
        directory = tmp_path / tokenizer.kind
        tokenizer.save(directory)
        assert json.loads((directory / "tokenizer_config.json").read_text()) == {"kind": tokenizer.kind}
        loaded = load_tokenizer(directory)
        assert type(loaded) is type(tokenizer)
        for attribute in ("vocab_size", "pad_id", "eos_id"):
            assert getattr(loaded, attribute) == getattr(tokenizer, attribute)
        for text in (TRICKY, *SAMPLES[:4]):
            assert loaded.encode(text) == tokenizer.encode(text)
            assert loaded.decode(loaded.encode(text)) == text
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json: no such file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="kind: expected 'byte' or 'bpe', got 'wordpiece'"):
        load_tokenizer(tmp_path)
