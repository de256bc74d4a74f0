"""`gsm8k`: the real GSM8K grade-school maths problems (openai/grade-school-math), read in place.

    prompt  "Question: {question}\\nAnswer:"      (lm-evaluation-harness's gsm8k prompt)
    target  " 18"                                (the number after "####", commas removed)
    cot     " Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day ... #### 18"

The chain of thought is the reference solution with the calculator annotations ``<<16-3-4=9>>`` removed and its
line breaks turned into spaces: "\\n" is this project's end-of-answer marker, so a generated solution must not
contain one before it is finished.

Splits: test = test.jsonl; validation = a seeded 10% of train.jsonl; train = the rest of train.jsonl.

`path` may also be one JSONL file in this format, read as one of the two: as test.jsonl when `file_split` is
"test", as train.jsonl (so train and validation come from it) when it is "train" or "validation"; the other
splits are then empty. Without `file_split`, a file named train.jsonl or test.jsonl is read as that one.
`rmt data show gsm8k --path FILE --split S` reads FILE as split S.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmt.tasks.base import SPLITS, Example, Task, seeded_rng
from rmt.tasks.jsonl import read_jsonl
from rmt.tasks.paths import data_dir

PROMPT = "Question: {question}\nAnswer:"
RECORD_FORMAT = '{"question": "...", "answer": "<worked solution> #### <number>"}'
CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")
ANSWER_MARKER = "####"


def final_answer(solution: str) -> str:
    """The number after the last "####", without thousands separators: "... #### 1,600" -> "1600"."""
    return solution.rsplit(ANSWER_MARKER, 1)[-1].strip().replace(",", "")


def chain_of_thought(solution: str) -> str:
    """The solution as one line, without calculator annotations, ending in "#### N" (N as in `final_answer`)."""
    reasoning = solution.rsplit(ANSWER_MARKER, 1)[0]
    reasoning = " ".join(CALCULATOR_ANNOTATION.sub("", reasoning).split())
    return f" {reasoning} {ANSWER_MARKER} {final_answer(solution)}"


def _check_record(record: dict[str, Any]) -> str | None:
    if not isinstance(record["question"], str) or not isinstance(record["answer"], str):
        return "'question' and 'answer' must be strings"
    if ANSWER_MARKER not in record["answer"]:
        return f"'answer' has no {ANSWER_MARKER!r} final-answer marker"
    if not re.fullmatch(r"-?[0-9.]+", final_answer(record["answer"])):
        return f"the final answer {final_answer(record['answer'])!r} is not a number"
    return None


def load_gsm8k(path: Path) -> list[dict[str, Any]]:
    """The records of one GSM8K JSONL file, validated."""
    return read_jsonl(path, ("question", "answer"), RECORD_FORMAT, check=_check_record)


def to_example(record: dict[str, Any], source: str, line: int) -> Example:
    return Example(
        prompt=PROMPT.format(question=record["question"]),
        target=" " + final_answer(record["answer"]),
        kind="qa",
        meta={"source": source, "index": line},
        cot=chain_of_thought(record["answer"]),
    )


@dataclass(frozen=True)
class GSM8KConfig:
    """`path` is the folder holding ``train.jsonl`` and ``test.jsonl``, or one such file; `file_split` says
    which split a file is read as (see the module docstring)."""

    path: Path = field(default_factory=lambda: data_dir() / "gsm8k")
    seed: int = 0
    validation_fraction: float = 0.1  # of train.jsonl
    file_split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction: expected a value in (0, 1), got {self.validation_fraction}")
        if self.file_split is not None and self.file_split not in SPLITS:
            raise ValueError(f"file_split: expected one of {SPLITS}, got {self.file_split!r}")

    def files(self) -> tuple[Path | None, Path | None]:
        """(the file read as train.jsonl, the file read as test.jsonl); None for one that is not read."""
        if self.path.is_dir() or (not self.path.exists() and not self.path.suffix):
            # A folder (or a missing one: then reading train.jsonl names what is missing).
            return self.path / "train.jsonl", self.path / "test.jsonl"
        role = self.file_split or {"train.jsonl": "train", "test.jsonl": "test"}.get(self.path.name)
        if role is None:
            raise ValueError(f"{self.path}: a single GSM8K file is read as one split; set file_split to 'test' "
                             "(test = the file) or 'train' (train and validation come from it); `rmt data show "
                             "--split` sets it")
        return (None, self.path) if role == "test" else (self.path, None)


class GSM8K(Task):
    name = "gsm8k"
    Config = GSM8KConfig

    def _build_splits(self) -> dict[str, list[Example]]:
        train_file, test_file = self.config.files()
        train_records = load_gsm8k(train_file) if train_file else []
        test_records = load_gsm8k(test_file) if test_file else []
        test = [to_example(record, test_file.name, i) for i, record in enumerate(test_records)]

        order = list(range(len(train_records)))
        seeded_rng(self.config.seed, "validation").shuffle(order)
        validation_ids = set(order[: round(self.config.validation_fraction * len(order))])
        validation, train = [], []
        for i, record in enumerate(train_records):
            (validation if i in validation_ids else train).append(to_example(record, train_file.name, i))

        # The shipped files have no duplicate questions, but another copy might: never train on an eval question.
        held_out = {example.prompt for example in validation + test}
        train = [example for example in train if example.prompt not in held_out]
        return {"train": train, "validation": validation, "test": test}
