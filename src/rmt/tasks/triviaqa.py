"""`triviaqa`: a 2,500-question subsample of TriviaQA (via mosaicml/llm-foundry), read in place.

Each record already holds the lm-evaluation-harness prompt: ``{"context": "Question: ...\\nAnswer:",
"answer": "Onion", "aliases": ["Onion", "Onions", ...]}``. The target is " {answer}"; any alias also counts as
correct (see `rmt.tasks.scoring.triviaqa_metrics`). Seeded 80/10/10 train/validation/test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmt.tasks.base import Example, Task, seeded_rng
from rmt.tasks.jsonl import read_jsonl
from rmt.tasks.paths import data_dir

RECORD_FORMAT = '{"context": "Question: ...\\nAnswer:", "answer": "...", "aliases": ["...", ...]}'


def _check_record(record: dict[str, Any]) -> str | None:
    if not isinstance(record["context"], str) or not isinstance(record["answer"], str):
        return "'context' and 'answer' must be strings"
    aliases = record["aliases"]
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        return "'aliases' must be a list of strings"
    return None


def load_triviaqa(path: Path) -> list[dict[str, Any]]:
    """The records of a TriviaQA JSONL file in the llm-foundry format, validated."""
    return read_jsonl(path, ("context", "answer", "aliases"), RECORD_FORMAT, check=_check_record)


@dataclass(frozen=True)
class TriviaQAConfig:
    path: Path = field(default_factory=lambda: data_dir() / "triviaqa" / "triviaqa_sub_2500.jsonl")
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a value in (0, 1), got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "validation_fraction + test_fraction: expected < 1 (leave a training split), "
                f"got {self.validation_fraction + self.test_fraction}"
            )


class TriviaQA(Task):
    name = "triviaqa"
    Config = TriviaQAConfig

    def _build_splits(self) -> dict[str, list[Example]]:
        records = load_triviaqa(self.config.path)
        examples = [
            Example(
                prompt=record["context"],
                target=" " + record["answer"],
                kind="qa",
                meta={"index": i},
                aliases=tuple(record["aliases"]),
            )
            for i, record in enumerate(records)
        ]
        seeded_rng(self.config.seed, "split").shuffle(examples)
        n_validation = round(self.config.validation_fraction * len(examples))
        n_test = round(self.config.test_fraction * len(examples))
        validation = examples[:n_validation]
        test = examples[n_validation : n_validation + n_test]
        held_out = {example.prompt for example in validation + test}
        # Questions in the shipped file are unique; this guards other copies against train/eval duplicates.
        train = [e for e in examples[n_validation + n_test :] if e.prompt not in held_out]
        return {"train": train, "validation": validation, "test": test}
