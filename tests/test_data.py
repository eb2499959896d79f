"""Corpus reading, tokenizers and the train/validation split."""

import pytest
import torch

from neurodeploy import data
from neurodeploy.errors import NeurodeployError


def test_bundled_corpus_is_tiny_shakespeare():
    text, raw = data.read_corpus(None, "char")
    assert len(text) == 1_115_394
    assert len(set(text)) == 65
    assert raw.decode("utf-8") == text


def test_char_tokenizer_round_trip(shakespeare):
    tokenizer = data.CharTokenizer.from_text(shakespeare)
    sample = shakespeare[:500]
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert tokenizer.vocab_size == 65


def test_char_tokenizer_saved_and_restored(shakespeare):
    tokenizer = data.CharTokenizer.from_text(shakespeare)
    restored = data.tokenizer_from_dict(tokenizer.to_dict())
    assert restored.alphabet == tokenizer.alphabet


def test_char_tokenizer_names_unknown_characters():
    tokenizer = data.CharTokenizer.from_text("abc")
    with pytest.raises(NeurodeployError, match=r"\['x', 'z'\]"):
        tokenizer.encode("axbz")


def test_byte_tokenizer_round_trip_any_text():
    tokenizer = data.ByteTokenizer()
    text = "naïve 東京 ✓"
    tokens = tokenizer.encode(text)
    assert max(tokens) < 256
    assert tokenizer.decode(tokens) == text
    assert tokenizer.encode(b"\xff\x00") == [255, 0]


def test_missing_corpus(tmp_path):
    with pytest.raises(NeurodeployError, match="corpus not found"):
        data.read_corpus(tmp_path / "absent.txt", "char")


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n")
    with pytest.raises(NeurodeployError, match="is empty"):
        data.read_corpus(path, "char")


def test_non_utf8_corpus_reports_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello w\xf6rld")
    with pytest.raises(NeurodeployError, match="0xf6 at offset 7"):
        data.read_corpus(path, "char")


def test_non_utf8_corpus_accepted_by_byte_tokenizer(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello w\xf6rld")
    _, raw = data.read_corpus(path, "byte")
    assert raw == b"hello w\xf6rld"


def test_byte_order_mark_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfabc")
    text, raw = data.read_corpus(path, "char")
    assert text == "abc"
    assert raw == b"abc"


def test_corpus_shorter_than_context():
    tokenizer = data.CharTokenizer.from_text("abcdef")
    with pytest.raises(NeurodeployError, match="corpus too short"):
        data.split_corpus("abcdef" * 10, b"", tokenizer, context=64,
                          validation_fraction=0.1)


def test_split_is_contiguous_tail(shakespeare):
    text = shakespeare[:10000]
    tokenizer = data.CharTokenizer.from_text(text)
    corpus = data.split_corpus(text, text.encode(), tokenizer, 16, 0.1)
    assert len(corpus.val) == 1000
    assert tokenizer.decode(corpus.val.tolist()) == text[-1000:]
    assert tokenizer.decode(corpus.train.tolist()) == text[:-1000]


def test_chars_per_token_for_bytes():
    text = "é" * 500
    corpus = data.split_corpus(text, text.encode(), data.ByteTokenizer(),
                               16, 0.1)
    assert corpus.chars_per_token == pytest.approx(0.5)


def test_batches_are_next_token_pairs():
    series = torch.arange(100)
    generator = torch.Generator().manual_seed(0)
    x, y = data.sample_batch(series, 8, 5, generator)
    assert x.shape == (5, 8)
    assert torch.equal(y, x + 1)
