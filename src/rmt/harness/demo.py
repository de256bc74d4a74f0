"""`rmt demo`: train a tiny RMT on the CPU with a two-stage curriculum, evaluate it with ablations, report.

Stage 1 reads fact text (invented people and their attributes) so the memory bank fills up; stage 2 trains
the thinking core on multi-step arithmetic word problems, easy ones first, with the facts mixed back in.
Evaluation asks held-out questions: facts in a phrasing never used for that fact in training (memory on and
off), and 1,000 unseen arithmetic problems (thinking core on, and off with K = 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rmt.checkpoint import save_model
from rmt.model.config import RMTConfig
from rmt.model.presets import preset
from rmt.errors import UsageError
from rmt.evaluation.evaluate import QAResult, evaluate_qa
from rmt.model import RMT
from rmt.evaluation.plots import plot_training
from rmt.rundir import claim_folder, writing
from rmt.tasks import get_task
from rmt.tokenizer import TokenizerConfig
from rmt.training import Stage, Trainer
from rmt.training.run import build_tokenizer


@dataclass
class DemoPlan:
    model: RMTConfig
    stages: list[Stage]
    n_knowledge_eval: int | None = None  # None = the whole test split
    n_math_eval: int = 1000
    arithmetic: dict = field(default_factory=lambda: {"n_train": 100_000})
    facts: dict = field(default_factory=dict)
    # bytes, or a BPE learned from the demo's training texts (its vocabulary then sizes the model's)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def demo_plan(quick: bool = False, steps_mult: float = 1.0) -> DemoPlan:
    """The demo's model and curriculum; `quick` is a smoke-sized version that runs in about two minutes.

    Tokens are a BPE learned from the demo's training texts (a word problem is ~30 tokens instead of ~90 bytes,
    so a step costs about a third), and the step counts are what then fits the 10-minute budget on a 2-core CPU
    (about 8.5 minutes of training). `steps_mult` trains proportionally longer.
    """
    model = preset("tiny", {"core": {"iters": 4}})
    scale = (0.12 if quick else 1.0) * steps_mult

    def n(steps: int) -> int:
        return max(10, int(steps * scale))

    facts_only = {"facts-synthetic": 1.0}
    mixed = {"arithmetic": 0.75, "facts-synthetic": 0.25}
    stages = [
        # The router is frozen (thinking everywhere) while nothing needs thinking yet: a compute cost here
        # would teach it to skip a core that has not learned anything, and it would never come back.
        Stage("facts", n(1200), facts_only, lr=3e-3, warmup=30, think_iters_min=1, think_iters_max=1, bptt=1,
              frozen=["router"], router_cost=0.0),
        Stage("math-easy", n(480), mixed, lr=3e-3, warmup=30, think_iters_min=1, think_iters_max=2,
              filters={"arithmetic": {"max_steps": 2}}, router_cost=0.0),
        Stage("math", n(800), mixed, lr=2e-3, warmup=20, think_iters_min=1, think_iters_max=4, router_cost=0.002),
    ]
    return DemoPlan(model, stages, n_knowledge_eval=400 if quick else None, n_math_eval=200 if quick else 1000,
                    tokenizer=TokenizerConfig("bpe", 2048))


def _fmt(x: float) -> str:
    return f"{x:.3f}"


# What `rmt demo` writes in its folder: a folder holding any of these holds an earlier demo (see `rmt.rundir`).
DEMO_OUTPUTS = ("metrics.jsonl", "checkpoint", "report.json", "predictions.jsonl", "training.png")


def run_demo(seed: int = 0, out: str | Path = "runs/demo", quick: bool = False, steps_mult: float = 1.0,
             progress: bool = True, plan: DemoPlan | None = None, device: str = "cpu", overwrite: bool = False) -> dict:
    """Train, evaluate and report into `out`, which is locked meanwhile; a folder holding an earlier demo is
    refused unless `overwrite` (the earlier one is moved to OUT.old-N)."""
    with claim_folder(out, markers=DEMO_OUTPUTS, overwrite=overwrite):
        return _run_demo(seed, Path(out), quick, steps_mult, progress, plan, device)


def _run_demo(seed: int, out: Path, quick: bool, steps_mult: float, progress: bool, plan: DemoPlan | None,
              device: str) -> dict:
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    plan = plan or demo_plan(quick, steps_mult)
    facts = get_task("facts-synthetic", seed=seed, **plan.facts)
    arith = get_task("arithmetic", seed=seed, **plan.arithmetic)
    pools = {"facts-synthetic": facts.split("train"), "arithmetic": arith.split("train")}
    tok = build_tokenizer(plan.tokenizer, pools)

    model = RMT(plan.model.replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)).to(device)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")

    def log(m: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(m) + "\n")

    trainer = Trainer(model, tok, pools, seed=seed, on_metrics=log, progress=progress)
    for i, stage in enumerate(plan.stages):
        trainer.run_stage(stage, i)
    train_seconds = time.perf_counter() - t0
    with writing(out, "the checkpoint"):
        save_model(model, out / "checkpoint", tok)

    k_test = seeded_subset(facts.split("test"), plan.n_knowledge_eval, seed)
    m_test = seeded_subset(arith.split("test"), plan.n_math_eval, seed)
    ev = dict(progress=progress, batch_size=128)
    know = evaluate_qa(model, k_test, tok, max_new_tokens=16, desc="knowledge", **ev)
    know_off = evaluate_qa(model, k_test, tok, max_new_tokens=16, memory=False, desc="knowledge, memory off", **ev)
    math = evaluate_qa(model, m_test, tok, max_new_tokens=6, group_by="steps", desc="math", **ev)
    math_off = evaluate_qa(model, m_test, tok, max_new_tokens=6, group_by="steps", think_iters=0,
                           desc="math, recurrence off", **ev)
    wall = time.perf_counter() - t0

    report = {
        "seed": seed,
        "quick": quick,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(train_seconds, 1),
        "params": model.num_params(),
        "params_without_memory_values": model.num_params(exclude_memory_values=True),
        "knowledge": {"em": know.accuracy, "em_memory_off": know_off.accuracy, "n": know.n,
                      "think_iters_per_token": know.think_iters_per_token},
        "math": {"acc": math.accuracy, "acc_recurrence_off": math_off.accuracy, "n": math.n,
                 "acc_by_steps": math.by["steps"], "acc_by_steps_recurrence_off": math_off.by["steps"],
                 "tokens_per_answer": math.tokens_per_answer, "think_iters_per_token": math.think_iters_per_token},
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.stages],
        "tokenizer": {"kind": plan.tokenizer.kind, "vocab_size": tok.vocab_size},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                    "threads": torch.get_num_threads()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_predictions(out / "predictions.jsonl", [("knowledge", k_test, know), ("math", m_test, math)])
    plot_training(trainer.history, out / "training.png")
    return report


def seeded_subset(examples: list, n: int | None, seed: int) -> list:
    """A seeded random subset in the split's order (test splits are ordered, e.g. by number of steps)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _write_predictions(path: Path, runs: list[tuple[str, list, QAResult]]) -> None:
    with path.open("w") as f:
        for name, examples, res in runs:
            for ex, pred in zip(examples, res.predictions):
                f.write(json.dumps({"task": name, "prompt": ex.prompt, "target": ex.target, "prediction": pred}) + "\n")


def format_table(r: dict) -> str:
    k, m = r["knowledge"], r["math"]
    rows = [
        ("knowledge EM (held-out phrasing)", _fmt(k["em"]), _fmt(k["em_memory_off"]), "memory off", k["n"]),
        ("arithmetic accuracy (unseen problems)", _fmt(m["acc"]), _fmt(m["acc_recurrence_off"]), "recurrence off (K=0)",
         m["n"]),
    ]
    lines = [f"| task | RMT | ablated | ablation | n |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    by = " / ".join(f"{v:.2f}" for _, v in sorted(m["acc_by_steps"].items()))
    by_off = " / ".join(f"{v:.2f}" for _, v in sorted(m["acc_by_steps_recurrence_off"].items()))
    lines.append("")
    lines.append(f"arithmetic accuracy by steps 1/2/3/4: {by}  (recurrence off: {by_off})")
    lines.append(f"params {r['params']:,} ({r['params_without_memory_values']:,} without memory values), "
                 f"wall time {r['wall_seconds']:.0f} s (training {r['train_seconds']:.0f} s), seed {r['seed']}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a tiny RMT on the CPU, evaluate with ablations, print a table")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (about two minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="output folder (report.json, metrics.jsonl, checkpoint/)")
    p.add_argument("--steps-mult", type=float, default=1.0, help="train this many times longer than the default")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], default="bpe",
                   help="a BPE learned from the demo's training texts (the default), or bytes")
    p.add_argument("--bpe-vocab", type=int, default=2048, help="the BPE's vocabulary size (with --tokenizer bpe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", default="cpu", help="cpu (the default, what the budget is set for) or cuda")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds an earlier demo: it is moved to OUT.old-N first, not deleted")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.steps_mult <= 0:
        raise UsageError(f"--steps-mult: expected > 0, got {args.steps_mult}")
    try:
        tokenizer = TokenizerConfig(args.tokenizer, args.bpe_vocab)
    except ValueError as e:
        raise UsageError(f"--bpe-vocab: {e}") from None
    plan = demo_plan(args.quick, args.steps_mult)
    plan.tokenizer = tokenizer
    report = run_demo(seed=args.seed, out=args.out, quick=args.quick, steps_mult=args.steps_mult,
                      progress=not args.no_progress, device=args.device, overwrite=args.overwrite, plan=plan)
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
