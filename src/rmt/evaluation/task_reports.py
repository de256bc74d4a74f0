"""A task's own report at the end of `rmt train`: tasks whose evaluation is more than the QA scorer register it here.

    TASK_REPORTS[name](model, task, tokenizer, out, train_seconds)

Sort-of-CLEVR writes accuracy by question kind with the memory-off and recurrence-off ablations to
OUT/report.json and a picture of the memory reads (`visual_qa.write_visual_report`). To give a new task a
report, add its function here; training itself knows nothing of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rmt.evaluation.visual_qa import write_visual_report
from rmt.model import RMT
from rmt.tasks import Task, get_task
from rmt.tokenizer import Tokenizer


def _sort_of_clevr(model: RMT, task: Task, tok: Tokenizer, out: Path, train_seconds: float) -> None:
    write_visual_report(model, task.name, task.split("test"), task.images("test"), tok, out, train_seconds)


TASK_REPORTS: dict[str, Callable[[RMT, Task, Tokenizer, Path, float], Any]] = {"sort-of-clevr": _sort_of_clevr}


def write_task_reports(model: RMT, task_settings: dict[str, dict[str, Any]], tok: Tokenizer, out: str | Path,
                       train_seconds: float) -> None:
    """Write the report of every task in `task_settings` (name -> config overrides) that has one."""
    for name in sorted(task_settings):
        if name in TASK_REPORTS:
            TASK_REPORTS[name](model, get_task(name, **task_settings[name]), tok, Path(out), train_seconds)
