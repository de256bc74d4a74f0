"""`text`: a plain UTF-8 text file as a language-modelling corpus (default: Tiny Shakespeare).

The split is contiguous, as in the char-level GPT benchmarks (nanoGPT's shakespeare_char): the first 90% of the
characters are training text, the last 10% are both validation and test. On Tiny Shakespeare that gives
1,003,854 / 111,540 characters.

`corpus(split)` returns the raw text, which is what a language-model trainer should sample windows from.
`split(name)` cuts it into consecutive `chunk_length`-character "text" examples for code that wants Examples;
note that `Example.text()` appends the end-of-sample newline to each chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from rmt.tasks.base import SPLITS, Example, Task
from rmt.tasks.paths import data_dir


@dataclass(frozen=True)
class TextConfig:
    path: Path = field(default_factory=lambda: data_dir() / "tinyshakespeare" / "input.txt")
    chunk_length: int = 256  # characters per Example from split()
    train_fraction: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.chunk_length < 1:
            raise ValueError(f"chunk_length: expected >= 1, got {self.chunk_length}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction: expected a value in (0, 1), got {self.train_fraction}")


class TextCorpus(Task):
    name = "text"
    Config = TextConfig

    @functools.cached_property
    def _text(self) -> str:
        path = self.config.path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; expected a plain UTF-8 text file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: the file is empty; expected a plain UTF-8 text file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None

    def corpus(self, split: str) -> str:
        """The raw text of `split`: the first `train_fraction` of the file for train, the rest otherwise."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        boundary = int(len(self._text) * self.config.train_fraction)
        return self._text[:boundary] if split == "train" else self._text[boundary:]

    def _build_splits(self) -> dict[str, list[Example]]:
        n = self.config.chunk_length

        def chunks(split: str) -> list[Example]:
            text = self.corpus(split)
            return [
                Example(prompt="", target=text[i : i + n], kind="text", meta={"offset": i}, terminated=False)
                for i in range(0, len(text), n)
            ]

        held_out = chunks("validation")
        return {"train": chunks("train"), "validation": held_out, "test": list(held_out)}
