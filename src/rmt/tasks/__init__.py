"""Tasks: datasets turned into train/validation/test splits of `Example`s, plus their scoring.

    from rmt.tasks import get_task
    task = get_task("facts-synthetic", n_entities=100, seed=1)
    train = task.split("train")          # list[Example]
    print(train[0].text())

Tasks: facts-synthetic, facts-bank, arithmetic, facts-real, gsm8k, triviaqa, text, sort-of-clevr (see `TASKS`). A new task is one
module and one entry in `registry.py`. Scoring that matches
lm-evaluation-harness lives in `rmt.tasks.scoring`; the `rmt data` and `rmt score` commands in
`rmt.tasks.commands`.
"""

from rmt.tasks.base import SPLITS, Example, Task, check_leakage
from rmt.tasks.paths import data_dir
from rmt.tasks.registry import TASKS, get_task

__all__ = ["SPLITS", "TASKS", "Example", "Task", "check_leakage", "data_dir", "get_task"]
