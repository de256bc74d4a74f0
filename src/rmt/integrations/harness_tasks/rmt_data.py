"""Datasets for this folder's lm-eval tasks, built from `rmt.tasks` (the shared JSONL files and the synthetic
generators), never downloaded: every task YAML here names one of these functions as its `custom_dataset`.

lm-eval calls each with the task's metadata and dataset_kwargs as keyword arguments; `seed` (default 0) picks
the synthetic tasks' and TriviaQA's split, the same seed `rmt train` configs use.
"""

from __future__ import annotations

from typing import Any

import datasets

from rmt.tasks import get_task
from rmt.tasks.gsm8k import load_gsm8k
from rmt.tasks.paths import data_dir


def gsm8k(**kwargs: Any) -> datasets.DatasetDict:
    """The GSM8K records as lm-eval's gsm8k task reads them: {"question", "answer" (full solution)}.
    test = test.jsonl, train = train.jsonl (the few-shot pool)."""
    folder = data_dir() / "gsm8k"
    return datasets.DatasetDict({split: datasets.Dataset.from_list(load_gsm8k(folder / f"{split}.jsonl"))
                                 for split in ("train", "test")})


def _qa_split(task: str, split: str, seed: int) -> datasets.Dataset:
    """An rmt QA task's split as {"prompt", "target" (stripped), "answers" (target and aliases, stripped)}."""
    rows = []
    for ex in get_task(task, seed=seed).split(split):
        target = ex.target.strip()
        answers = [target] + [a for a in ex.aliases if a != target]
        rows.append({"prompt": ex.prompt, "target": target, "answers": answers})
    return datasets.Dataset.from_list(rows)


def triviaqa(seed: int = 0, **kwargs: Any) -> datasets.DatasetDict:
    """rmt's TriviaQA splits (seeded 80/10/10 of the 2,500 shared questions): test and, for few-shot, train."""
    return datasets.DatasetDict({s: _qa_split("triviaqa", s, int(seed)) for s in ("train", "test")})


def facts_synthetic(seed: int = 0, **kwargs: Any) -> datasets.DatasetDict:
    """The facts-synthetic test split (questions in the held-out phrasing)."""
    return datasets.DatasetDict({"test": _qa_split("facts-synthetic", "test", int(seed))})


def arithmetic(seed: int = 0, **kwargs: Any) -> datasets.DatasetDict:
    """The arithmetic test split (problems never seen in training)."""
    return datasets.DatasetDict({"test": _qa_split("arithmetic", "test", int(seed))})

