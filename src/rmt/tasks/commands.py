"""The `rmt data show` and `rmt score` sub-commands.

    rmt data show arithmetic --n 3 --split test
    rmt score gsm8k --predictions preds.jsonl --data /path/to/gsm8k/test.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rmt.tasks.base import SPLITS, Example, Task
from rmt.tasks.gsm8k import load_gsm8k
from rmt.tasks.jsonl import read_jsonl
from rmt.tasks.registry import TASKS, get_task
from rmt.tasks.scoring import gsm8k_metrics, triviaqa_metrics
from rmt.tasks.triviaqa import load_triviaqa

TOP_ANSWERS = 10
PREDICTION_FORMAT = '{"prediction": "..."}'
# Exit status for a usage or data error (argparse uses 2 for the same).
ERROR = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` and `score` to the `rmt` command line."""
    data = subparsers.add_parser("data", help="inspect a task's dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    show = data_commands.add_parser("show", help="print samples and statistics of a task split")
    show.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    show.add_argument("--n", type=int, default=5, help="number of samples to print (default 5)")
    show.add_argument("--split", choices=SPLITS, default="train")
    show.add_argument("--path", help="the file or folder the task reads (its config's `path`); a file given to "
                                     "gsm8k, which reads a folder of train.jsonl + test.jsonl, is read as --split")
    show.add_argument("--seed", type=int, help="the task config's seed")
    show.set_defaults(func=show_data)

    score = subparsers.add_parser("score", help="score predictions the way lm-evaluation-harness does")
    score.add_argument("task", choices=("gsm8k", "triviaqa"))
    score.add_argument("--predictions", required=True, help=f"JSONL, one {PREDICTION_FORMAT} per data line")
    score.add_argument("--data", required=True, help="the task's JSONL file the predictions answer, same order")
    score.set_defaults(func=score_predictions)


def _fail(command: str, error: Exception) -> int:
    print(f"rmt {command}: error: {error}", file=sys.stderr)
    return ERROR


# --- rmt data show ---


def _path_overrides(task: str, path: str, split: str) -> dict[str, Any]:
    """Config overrides for `--path PATH`: the path, and for a file given to a task that reads a folder of
    per-split files (gsm8k's `file_split`), which split the file is read as: the one asked for."""
    overrides: dict[str, Any] = {"path": path}
    if task not in TASKS or Path(path).is_dir():
        return overrides
    config_fields = {f.name for f in dataclasses.fields(TASKS[task].Config)}
    if "file_split" in config_fields:
        overrides["file_split"] = split
    elif "path" in config_fields and Path(path).is_file():
        default = TASKS[task].Config().path
        if not Path(default).suffix:  # the task reads a folder of several files
            raise ValueError(f"--path {path}: {task} reads a folder (like its default, {default}), not a file")
    return overrides


def show_data(args: argparse.Namespace) -> int:
    try:
        if args.n < 0:
            raise ValueError(f"--n: expected >= 0, got {args.n}")
        overrides = _path_overrides(args.task, args.path, args.split) if args.path is not None else {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        task = get_task(args.task, **overrides)
        splits = {name: task.split(name) for name in SPLITS}
    except (ValueError, FileNotFoundError) as error:
        return _fail("data show", error)

    examples = splits[args.split]
    print(f"task {task.name}: {task.config}")
    print("split sizes: " + ", ".join(f"{name} {len(split)}" for name, split in splits.items()))
    print(f"\n== {min(args.n, len(examples))} samples from {args.split} ==")
    for i, example in enumerate(examples[: args.n]):
        print(_format_example(i, example))
    print(f"\n== statistics of {args.split} ==")
    for line in _statistics(task, examples):
        print(line)
    return 0


def _format_example(i: int, example: Example) -> str:
    lines = [f"[{i}] {example.kind}"]
    if example.prompt:
        lines.append(f"  prompt: {example.prompt!r}")
    lines.append(f"  target: {example.target!r}")
    if example.cot is not None:
        lines.append(f"  cot:    {example.cot!r}")
    if example.aliases:
        more = f" ... ({len(example.aliases)} in all)" if len(example.aliases) > 5 else ""
        lines.append(f"  aliases: {list(example.aliases[:5])}{more}")
    lines.append(f"  meta:   {json.dumps(example.meta, ensure_ascii=False)}")
    return "\n".join(lines)


def _length_line(label: str, lengths: list[int]) -> str:
    return f"{label}: min {min(lengths)}, mean {statistics.fmean(lengths):.1f}, max {max(lengths)}"


def _statistics(task: Task, examples: list[Example]) -> list[str]:
    if not examples:
        return ["(empty split)"]
    lines = ["kinds: " + ", ".join(f"{kind} {n}" for kind, n in Counter(e.kind for e in examples).most_common())]
    lines.append(_length_line("length in characters (full sample text)", [len(e.text()) for e in examples]))
    questions = [e for e in examples if e.kind == "qa"]
    if questions:
        lines.append(_length_line("  prompt", [len(e.prompt) for e in questions]))
        lines.append(_length_line("  target", [len(e.target) for e in questions]))
        if any(e.cot is not None for e in questions):
            lines.append(_length_line("  full sample with cot", [len(e.text(cot=True)) for e in questions]))
        answers = Counter(e.target.strip() for e in questions)
        top = ", ".join(f"{answer!r} {n}" for answer, n in answers.most_common(TOP_ANSWERS))
        lines.append(f"answers: {len(answers)} distinct; top {min(TOP_ANSWERS, len(answers))}: {top}")
    for name, counts in task.meta_stats(examples).items():
        lines.append(f"{name}: " + ", ".join(f"{value}: {n}" for value, n in counts.items()))
    return lines


# --- rmt score ---


def score_predictions(args: argparse.Namespace) -> int:
    try:
        predictions = [
            record["prediction"]
            for record in read_jsonl(
                args.predictions,
                ("prediction",),
                PREDICTION_FORMAT,
                check=lambda r: None if isinstance(r["prediction"], str) else "'prediction' must be a string",
            )
        ]
        records = load_gsm8k(args.data) if args.task == "gsm8k" else load_triviaqa(args.data)
        if len(predictions) != len(records):
            raise ValueError(
                f"{args.predictions} has {len(predictions)} predictions but {args.data} has {len(records)} records; "
                "expected one prediction per record, in the same order"
            )
        metrics: dict[str, Any] = {"task": args.task, "n": len(records)}
        if args.task == "gsm8k":
            metrics |= gsm8k_metrics(predictions, [record["answer"] for record in records])
        else:
            metrics |= triviaqa_metrics(predictions, [record["aliases"] for record in records])
    except (ValueError, FileNotFoundError) as error:
        return _fail("score", error)
    print(json.dumps(metrics))
    return 0
