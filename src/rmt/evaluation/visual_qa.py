"""Evaluation of visual question answering (R8): each question is answered with its image in the memory bank.

For every batch of questions the rows' images are encoded and written into a fresh explicit bank, and the
answer is generated greedily through the cached generator (`RMT.generate`), the same path as `evaluate.py`
takes for text questions; it is right when its first line, stripped, equals the target word (exact match, no
restriction to the ten answer words: a model that answers "sq" is wrong). Accuracy is split by the examples'
``meta["type"]`` (Sort-of-CLEVR: non_relational / relational) and ``meta["question"]``, with memory off (no
read at all: the image is never seen) and recurrence off (K = 0: the thinking core never runs) as ablations.
`plot_attention` draws which patches the memory reads attended to.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmt.model.memory import SoftmaxMemoryBank
from rmt.model import RMT
from rmt.tasks import Example
from rmt.tasks.image_encoder import ImageBank
from rmt.tasks.scoring import exact_match
from rmt.tokenizer import Tokenizer

# Ablations reported next to the full model: suffix -> forward switches.
ABLATIONS: dict[str, dict[str, Any]] = {"": {}, "_recurrence_off": {"think_iters": 0}, "_memory_off": {"memory": False}}


@torch.no_grad()
def answer_visual(model: RMT, examples: list[Example], images: np.ndarray, tok: Tokenizer, *, batch_size: int = 100,
                  max_new_tokens: int = 8, memory: bool = True, **generate_kwargs) -> list[str]:
    """Greedy answers (text up to the end-of-answer newline) to `examples`, each read with its image
    ``images[meta["image"]]`` ((N, H, W, 3) uint8) in the explicit bank. Rows are grouped by prompt length so a
    batch is prefilled in parallel."""
    model.eval()
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    encoded = [tok.encode(ex.prompt) for ex in examples]
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    preds = [""] * len(examples)
    for _, rows_all in sorted(by_len.items()):
        for j in range(0, len(rows_all), batch_size):
            rows = rows_all[j:j + batch_size]
            idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
            bank = None
            if memory:
                imgs = torch.from_numpy(images[[examples[i].meta["image"] for i in rows]]).to(device)
                bank, _ = ImageBank(imgs).build(model)
            res = model.generate(idx, max_new_tokens, eos_id=tok.eos_id, memory=memory, explicit_bank=bank,
                                 **generate_kwargs)
            for r, i in enumerate(rows):
                ids = res.tokens[r].tolist()
                if tok.eos_id in ids:
                    ids = ids[:ids.index(tok.eos_id)]
                preds[i] = tok.decode([t for t in ids if t != tok.pad_id])
    return preds


def accuracy_by(examples: list[Example], preds: list[str], key: str) -> dict[str, float]:
    """Exact-match accuracy per value of meta[key] -> {value: accuracy}."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, p in zip(examples, preds):
        groups[str(ex.meta[key])].append(exact_match(p, ex.target))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def visual_report(model: RMT, examples: list[Example], images: np.ndarray, tok: Tokenizer, *,
                  batch_size: int = 100) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str]]:
    """-> ({"<type>_acc<ablation>": accuracy}, {"<question>_acc<ablation>": accuracy}, full-model predictions).

    E.g. for Sort-of-CLEVR: non_relational_acc, relational_acc, ..._recurrence_off, ..._memory_off.
    """
    flat: dict[str, float] = {}
    per_question: dict[str, dict[str, float]] = {}
    full_preds: list[str] = []
    for suffix, switches in ABLATIONS.items():
        preds = answer_visual(model, examples, images, tok, batch_size=batch_size, **switches)
        if not suffix:
            full_preds = preds
        for kind, acc in accuracy_by(examples, preds, "type").items():
            flat[f"{kind}_acc{suffix}"] = acc
        per_question[f"by_question{suffix}"] = accuracy_by(examples, preds, "question")
    return flat, per_question, full_preds


@torch.no_grad()
def read_attention(model: RMT, examples: list[Example], images: np.ndarray, tok: Tokenizer) -> list[np.ndarray]:
    """For each example, the attention of its memory reads at the last prompt token over the image's patches,
    averaged over heads: (n_reads, G, G) per example -- read 0 is the prelude's read, reads 1..K the thinking
    core's (one per iteration, when the core reads memory). Needs the softmax read (the linear read has no
    per-entry weights to show)."""
    model.eval()
    device = next(model.parameters()).device
    grid = model.encoders["image"].grid
    out = []
    for ex in examples:
        idx = torch.tensor([tok.encode(ex.prompt)], dtype=torch.long, device=device)
        bank, _ = ImageBank(torch.from_numpy(images[[ex.meta["image"]]]).to(device)).build(model)
        if not isinstance(bank, SoftmaxMemoryBank):
            raise ValueError("read_attention needs bank.read = 'softmax'")
        views = [bank] + ([bank.core_view] if bank.core_view is not None else [])  # core reads: own keys
        for view in views:
            view.record = True
        model(idx, explicit_bank=bank)
        recorded = [w for view in views for w in view.recorded]  # the prelude's read first, then the core's
        weights = [w[0, -1].float().mean(0).view(grid, grid).cpu().numpy() for w in recorded]
        out.append(np.stack(weights))
    return out


def plot_attention(model: RMT, examples: list[Example], images: np.ndarray, preds: list[str], tok: Tokenizer,
                   path: str | Path) -> Path:
    """PNG: one row per example -- the image with question, answer and prediction, then a heat map over the
    patches for each memory read (prelude read, then each core iteration's read) at the last prompt token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = read_attention(model, examples, images, tok)
    n_reads = max(m.shape[0] for m in maps)
    fig, axes = plt.subplots(len(examples), 1 + n_reads, figsize=(2.3 * (1 + n_reads), 2.5 * len(examples)),
                             squeeze=False)
    for r, (ex, pred, amap) in enumerate(zip(examples, preds, maps)):
        img = images[ex.meta["image"]]
        size = img.shape[0]
        ax = axes[r, 0]
        ax.imshow(img)
        ok = "right" if pred.strip() == ex.target.strip() else "WRONG"
        question = ex.prompt.removeprefix("Q: ").removesuffix(" A:")
        ax.set_title(f"{question}\nanswer {ex.target.strip()!r}, model {ascii(pred.strip())} ({ok})", fontsize=6)
        for k in range(n_reads):
            ax = axes[r, 1 + k]
            ax.imshow(img)
            if k < amap.shape[0]:
                ax.imshow(amap[k], cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="nearest")
            ax.set_title("prelude read" if k == 0 else f"core read, iteration {k}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_visual_report(model: RMT, task_name: str, examples: list[Example], images: np.ndarray, tok: Tokenizer,
                        out: str | Path, train_seconds: float, n_plot: int = 6) -> dict[str, Any]:
    """Evaluate, then write OUT/report.json ({task_key: {...}}, merged with an existing report),
    OUT/predictions_<task_key>.jsonl and OUT/<task_key>_attention.png. -> the task's report entry."""
    out = Path(out)
    key = task_name.replace("-", "_")
    flat, per_question, preds = visual_report(model, examples, images, tok)
    entry: dict[str, Any] = {**flat, "train_wall_seconds": train_seconds, "n": len(examples), **per_question,
                             "decoding": "greedy, exact match of the first line"}
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report[key] = entry
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    with (out / f"predictions_{key}.jsonl").open("w") as f:
        for ex, p in zip(examples, preds):
            f.write(json.dumps({"prompt": ex.prompt, "target": ex.target.strip(), "prediction": p.strip(),
                                **ex.meta}) + "\n")
    if model.config.bank.read == "softmax" and n_plot > 0:
        # A spread of question kinds: the first example of each question subtype, in order.
        picked, seen = [], set()
        for i, ex in enumerate(examples):
            if ex.meta["question"] not in seen:
                seen.add(ex.meta["question"])
                picked.append(i)
        picked = picked[:n_plot]
        plot_attention(model, [examples[i] for i in picked], images, [preds[i] for i in picked], tok,
                       out / f"{key}_attention.png")
    return entry
