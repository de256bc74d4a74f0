"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained locally with Hugging Face `tokenizers`.

A training run says which in its ``[tokenizer]`` table (`TokenizerConfig`): bytes (the default), or a BPE
learned from the run's own training text, whose vocabulary size then sets the model's (fewer tokens per
example, so more examples per second of compute: a word problem is ~90 bytes but ~30 words).

Both satisfy the `Tokenizer` protocol. "\\n" ends every training sample (see `rmt.tasks.base.Example.text`), so
`eos_id` is defined as the single id that `encode("\\n")` returns, and the generator stops when it is emitted.

A saved tokenizer is a folder with ``tokenizer_config.json`` naming its kind (plus, for BPE, the library's own
``tokenizer.json``); `load_tokenizer` reads it back. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # imported lazily at run time, so the byte tokenizer works without the library
    import tokenizers

CONFIG_FILE = "tokenizer_config.json"
BPE_FILE = "tokenizer.json"
PAD_TOKEN = "<pad>"
END_OF_SAMPLE = "\n"


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str | Path) -> None: ...


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes of the text; 256 is padding. Any string round-trips.

    Any byte is a token, so text that is not UTF-8 can be read too: decode its bytes with
    ``errors="surrogateescape"`` (what Python does for command-line arguments) and `encode` gives those bytes back.
    """

    kind = "byte"
    pad_id = 256
    vocab_size = 257
    eos_id = END_OF_SAMPLE.encode("utf-8")[0]  # 10

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogateescape"))

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; padding is dropped, and a cut-off multi-byte character becomes U+FFFD (a model can
        emit any byte sequence, so decoding must not raise)."""
        return bytes(i for i in ids if i != self.pad_id).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"kind": self.kind}, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from Hugging Face `tokenizers`: any text round-trips exactly.

    Two deviations from a stock GPT-2 tokenizer, both for this project's end-of-sample convention: "\\n" is
    split off before BPE so it is always its own token (never merged into "\\n\\n" or "\\nThe", which would hide
    the end of an answer from the generator), and there is a "<pad>" special token.
    """

    kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self._tokenizer = tokenizer
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ValueError(f"BPETokenizer: the tokenizer has no {PAD_TOKEN!r} token")
        self.pad_id: int = pad_id
        self.vocab_size: int = tokenizer.get_vocab_size()
        newline = self.encode(END_OF_SAMPLE)
        if len(newline) != 1:
            raise ValueError(f"BPETokenizer: expected '\\n' to encode to one id, got {newline}")
        self.eos_id: int = newline[0]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> BPETokenizer:
        """Learn merges from `texts` (any iterable of strings, consumed once)."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        minimum = len(alphabet) + 1  # every byte, plus <pad>
        if vocab_size < minimum:
            raise ValueError(f"vocab_size: expected >= {minimum} (256 bytes + {PAD_TOKEN}), got {vocab_size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN],
            initial_alphabet=alphabet,  # all 256 bytes, even those absent from `texts`
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Ids back to text, dropping padding."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(directory / BPE_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps({"kind": self.kind}, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(directory: str | Path) -> ByteTokenizer | BPETokenizer:
    """Reload whichever tokenizer `save` wrote to `directory`."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file; expected a tokenizer saved by rmt ({{\"kind\": ...}})")
    kind = json.loads(config_path.read_text(encoding="utf-8")).get("kind")
    if kind == ByteTokenizer.kind:
        return ByteTokenizer()
    if kind == BPETokenizer.kind:
        return BPETokenizer.from_file(directory / BPE_FILE)
    raise ValueError(f"{config_path}: kind: expected 'byte' or 'bpe', got {kind!r}")


@dataclass
class TokenizerConfig:
    """The ``[tokenizer]`` table of a training config.

    kind "byte": `ByteTokenizer`. kind "bpe": `BPETokenizer.train` on the run's training texts with this
    vocab_size (every byte stays a token, so any text still round-trips; frequent words and numbers become one)."""

    kind: str = "byte"
    vocab_size: int = 2048  # bpe only

    def __post_init__(self) -> None:
        if self.kind not in ("byte", "bpe"):
            raise ValueError(f"tokenizer.kind: expected 'byte' or 'bpe', got {self.kind!r}")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 258:
            raise ValueError(f"tokenizer.vocab_size: expected an integer >= 258 (256 bytes + <pad> + one merge), "
                             f"got {self.vocab_size!r}")

    @classmethod
    def from_dict(cls, data: object) -> "TokenizerConfig":
        if not isinstance(data, dict):
            raise ValueError(f"tokenizer: expected a table, got {data!r}")
        known = [f for f in ("kind", "vocab_size")]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"tokenizer: unknown key(s) {unknown}; known keys: {known}")
        return cls(**data)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def build(self, texts: Iterable[str]) -> ByteTokenizer | BPETokenizer:
        """The tokenizer this config describes; `texts` (consumed once) are what a BPE learns its merges from."""
        if self.kind == "byte":
            return ByteTokenizer()
        return BPETokenizer.train(texts, vocab_size=self.vocab_size)
