"""Task names -> task classes, and `get_task` to build one with config overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from rmt.tasks.arithmetic import Arithmetic
from rmt.tasks.base import Task
from rmt.tasks.facts_bank import FactsBank
from rmt.tasks.facts_real import FactsReal
from rmt.tasks.facts_synthetic import FactsSynthetic
from rmt.tasks.gsm8k import GSM8K
from rmt.tasks.sort_of_clevr import SortOfClevr
from rmt.tasks.text import TextCorpus
from rmt.tasks.triviaqa import TriviaQA

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (FactsSynthetic, FactsBank, Arithmetic, FactsReal, GSM8K, TriviaQA, TextCorpus, SortOfClevr)
}


def get_task(name: str, **config_overrides: Any) -> Task:
    """Build task `name` with its default config, changed by `config_overrides` (field name -> value).

    Raises ValueError for an unknown task (listing the known ones), an unknown config field (listing the
    task's fields) or an invalid value (the config's own check).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    task_class = TASKS[name]
    fields = [f.name for f in dataclasses.fields(task_class.Config)]
    unknown = sorted(set(config_overrides) - set(fields))
    if unknown:
        raise ValueError(f"task {name!r} has no config field {unknown[0]!r}; its fields: {', '.join(fields)}")
    return task_class(task_class.Config(**config_overrides))
