"""PNG plots of runs (matplotlib, drawn off-screen)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(history: list[dict], path: str | Path, title: str = "training loss per task") -> Path:
    """Per-task training loss against optimizer step (grey lines: stage starts) -> the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({k for m in history for k in m if k.startswith("loss/")}):
        pts = [(m["step"], m[key]) for m in history if key in m]
        ax.plot(*zip(*pts), label=key.removeprefix("loss/"))
    val = [(m["step"], m["val_loss"]) for m in history if "val_loss" in m]
    if val:
        ax.plot(*zip(*val), "k--", marker=".", label="validation")
    for m in history:
        if "loss" in m and m["step"] == min(h["step"] for h in history if h["stage"] == m["stage"]):
            ax.axvline(m["step"], color="grey", lw=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens / text)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    if not history:
        raise ValueError("no metrics to plot")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def read_metrics(run: str | Path) -> list[dict]:
    """The metrics.jsonl of a run folder; a malformed line is reported with its number."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a run folder written by `rmt train` or `rmt demo`")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return rows
