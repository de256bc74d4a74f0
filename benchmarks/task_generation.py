"""How fast the synthetic tasks build their splits: problems per CPU second, reported, never asserted.

    python benchmarks/task_generation.py [--tasks arithmetic,facts-synthetic] [--repeats 3] [--out FILE.json]

Each task is built from its default config `--repeats` times in a fresh object (the splits are cached per
object), and the median CPU and wall seconds of building the train split are printed with the problems per
second. The unit tests check what the splits contain (sizes, determinism, no leakage); how long building them
takes depends on the machine and its load, so it is a figure of this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rmt.tasks.registry import get_task

SYNTHETIC = ("arithmetic", "facts-synthetic")


def measure(name: str, repeats: int) -> dict:
    """Median CPU / wall seconds to build task `name`'s default train split, and its size."""
    cpu, wall, n = [], [], 0
    for _ in range(repeats):
        task = get_task(name)
        c0, w0 = time.process_time(), time.perf_counter()
        n = len(task.split("train"))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    c, w = statistics.median(cpu), statistics.median(wall)
    return {"train_examples": n, "cpu_seconds": c, "wall_seconds": w, "examples_per_cpu_second": n / c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(SYNTHETIC), help="comma-separated task names")
    parser.add_argument("--repeats", type=int, default=3, help="builds per task; the median is reported")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    res = {name: measure(name, args.repeats) for name in args.tasks.split(",")}
    for name, r in res.items():
        print(f"{name:16s} {r['train_examples']:8,d} train examples: {r['cpu_seconds']:6.2f} s CPU, "
              f"{r['wall_seconds']:6.2f} s wall, {r['examples_per_cpu_second']:9,.0f} examples per CPU second")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
