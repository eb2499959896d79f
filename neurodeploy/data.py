"""Corpus loading, tokenizers and the train/validation split.

The default corpus is tiny-Shakespeare (public domain), bundled with the
package. Any UTF-8 text file can replace it.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import NeurodeployError

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "tinyshakespeare.txt"
UTF8_BOM = b"\xef\xbb\xbf"


def read_corpus(path: str | Path | None, tokenizer: str) -> tuple[str, bytes]:
    """Read a corpus and return its text and raw bytes (BOM stripped).

    ``path=None`` reads the bundled tiny-Shakespeare corpus. With the
    character tokenizer the bytes must be UTF-8; the byte tokenizer accepts
    anything and decodes the text with replacement only for logging.
    """
    if path is None:
        resource = importlib.resources.files("neurodeploy.corpora")
        raw = (resource / DEFAULT_CORPUS).read_bytes()
        source = f"bundled corpus {DEFAULT_CORPUS}"
    else:
        path = Path(path)
        if not path.is_file():
            raise NeurodeployError(
                f"corpus not found: {path}; give the path to a UTF-8 text "
                "file, or omit --corpus to use the bundled corpus"
            )
        raw = path.read_bytes()
        source = str(path)

    if raw.startswith(UTF8_BOM):
        log.info("%s: stripped the UTF-8 byte-order mark", source)
        raw = raw[len(UTF8_BOM):]
    if not raw.strip():
        raise NeurodeployError(
            f"corpus {source} is empty; give a text file with content"
        )

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        if tokenizer == "byte":
            text = raw.decode("utf-8", errors="replace")
        else:
            raise NeurodeployError(
                f"corpus {source} is not valid UTF-8: invalid byte "
                f"0x{raw[error.start]:02x} at offset {error.start}; convert "
                "the file to UTF-8 or set tokenizer=byte"
            ) from error
    return text, raw


class CharTokenizer:
    """One token per Unicode character of a vocabulary built from a corpus."""

    kind = "char"

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise NeurodeployError(
                "a character vocabulary must be a non-empty string of "
                "distinct characters"
            )
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise NeurodeployError(
                f"characters outside the vocabulary: {missing!r}; remove "
                "them or train with tokenizer=byte"
            )
        return [self.index[c] for c in text]

    def decode(self, tokens: list[int]) -> str:
        return "".join(self.alphabet[t] for t in tokens)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alphabet": self.alphabet}


class ByteTokenizer:
    """One token per UTF-8 byte: 256 symbols, any input."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        return list(data)

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def tokenizer_from_dict(data: dict) -> CharTokenizer | ByteTokenizer:
    """Rebuild a tokenizer saved with ``to_dict``."""
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(str(data.get("alphabet", "")))
    if kind == "byte":
        return ByteTokenizer()
    raise NeurodeployError(
        f"unknown tokenizer kind {kind!r}; expected 'char' or 'byte'"
    )


@dataclass
class Corpus:
    """A tokenised corpus split into contiguous train and validation parts.

    ``chars_per_token`` converts per-token losses to per-character ones;
    it is 1 for the character tokenizer.
    """

    train: torch.Tensor
    val: torch.Tensor
    chars_per_token: float


def split_corpus(text: str, raw: bytes, tokenizer, context: int,
                 validation_fraction: float) -> Corpus:
    """Tokenise and split: the last ``validation_fraction`` validates.

    Both parts must hold at least one window of ``context + 1`` tokens.
    """
    if isinstance(tokenizer, ByteTokenizer):
        tokens = tokenizer.encode(raw)
    else:
        tokens = tokenizer.encode(text)
    data = torch.tensor(tokens, dtype=torch.long)

    n_val = int(len(data) * validation_fraction)
    minimum = context + 1
    if len(data) - n_val < minimum or n_val < minimum:
        needed = int(minimum / min(validation_fraction,
                                   1 - validation_fraction)) + 1
        raise NeurodeployError(
            f"corpus too short: {len(data)} tokens cannot fill a window of "
            f"context+1={minimum} tokens in both the training and the "
            f"validation split; use a corpus of at least {needed} tokens "
            "or a smaller context"
        )

    chars_per_token = len(text) / len(data) if data.numel() else 1.0
    return Corpus(data[:-n_val], data[-n_val:], chars_per_token)


def sample_batch(data: torch.Tensor, context: int, batch_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw random windows: inputs and next-token targets, shape (B, P)."""
    starts = torch.randint(0, len(data) - context, (batch_size,),
                           generator=generator)
    offsets = torch.arange(context)
    index = starts[:, None] + offsets[None, :]  # (B, P)
    return data[index], data[index + 1]
