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
from dataclasses import dataclass, field, replace as dc_replace
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
from rmt.tasks.facts_bank import FactBank
from rmt.tasks.facts_synthetic import ATTRIBUTES
from rmt.tokenizer import TokenizerConfig
from rmt.training import Stage, Trainer
from rmt.training.run import build_tokenizer


@dataclass
class DemoPlan:
    model: RMTConfig
    stages: list[Stage]
    n_knowledge_eval: int | None = None  # None = the whole test split
    n_math_eval: int = 1000
    n_edits: int = 400  # bank edits (and deletions) evaluated
    n_timed: int = 40  # knowledge answers timed at batch size 1, routed and forced to think
    arithmetic: dict = field(default_factory=lambda: {"n_train": 100_000})
    facts: dict = field(default_factory=dict)  # `facts-bank` settings
    # bytes, or a BPE learned from the demo's training texts (its vocabulary then sizes the model's)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def demo_model() -> RMTConfig:
    """The demo's RMT: the tiny preset with a token-carried GRU thinking core (2 layers, 160 wide), a fact bank
    read by softmax, and no prelude or coda layers.

    The core carries a running value from token to token (a word problem's count); the bank's keys are
    encoded as the queries that find them (`RMT.text_bank`), so a question's words find its fact. The product-
    key memory is off: the demo's knowledge lives in the bank, and the dense layers could hold a fact set
    this small anyway (experiments/README.md). No coda: the SSM coda layer took 42 % of a training step and
    gave nothing (seed 0: arithmetic 0.915 without it, 0.901 with; experiments/demo_v2/README.md)."""
    return preset("tiny", {"n_prelude": 0, "n_coda": 0, "embed_init": 0.0, "core": {"mixer": "gru", "n_layers": 2, "iters": 1, "hidden": 160},
                           "product_keys": {"enabled": False}, "bank": {"read": "softmax"},
                           "reader": {"query_ema": 8, "query_state": False}, "router": {"context": True}})


def demo_plan(quick: bool = False, steps_mult: float = 1.0) -> DemoPlan:
    """The demo's model and curriculum; `quick` is a smoke-sized version that runs in about two minutes.

    Stage 1 learns to read the fact bank (questions about people whose facts are only in the bank); stage 2
    learns easy arithmetic (1-2 steps), then all of it, with the fact questions mixed back in. The router
    pays for thinking from stage 2 on, so it learns where the core is worth running."""
    scale = (0.12 if quick else 1.0) * steps_mult

    def n(steps: int) -> int:
        return max(10, int(steps * scale))

    mixed = {"arithmetic": 0.8, "facts-bank": 0.2}
    stages = [
        # Reading the bank is learned first, with the core off (K = 0): the answer then goes from the read to the
        # head directly, and thinking is left for what needs it. The router is frozen (thinking everywhere)
        # until the core has learned something: a token it turns off before then adds nothing to the loss.
        Stage("facts", n(250), {"facts-bank": 1.0}, lr=3e-3, warmup=30, think_iters_min=0, think_iters_max=0,
              frozen=["router"], router_cost=0.0),
        Stage("math-easy", n(400), mixed, lr=3e-3, warmup=30, think_iters_min=1, think_iters_max=1,
              filters={"arithmetic": {"max_steps": 2}}, frozen=["router"], router_cost=0.0, intermediate=True),
        Stage("math", n(2400), mixed, lr=3e-3, warmup=20, think_iters_min=1, think_iters_max=1, router_cost=0.1,
              intermediate=True),
    ]
    return DemoPlan(demo_model(), stages, n_knowledge_eval=400 if quick else 1000, n_math_eval=200 if quick else 1000,
                    n_edits=100 if quick else 400, n_timed=10 if quick else 40, tokenizer=TokenizerConfig("bpe", 2048))


def demo_tasks(plan: DemoPlan, seed: int) -> tuple:
    """-> (facts-bank task, arithmetic task, training pools, tokenizer): the demo's data for a seed. The BPE is
    learned from the pools, so whatever else trains on the demo's data (its peers, the CoT baseline of
    `rmt reproduce`) gets the same tokenizer from this."""
    facts = get_task("facts-bank", seed=seed, **plan.facts)
    arith = get_task("arithmetic", seed=seed, **plan.arithmetic)
    pools = {"facts-bank": facts.split("train"), "arithmetic": arith.split("train")}
    return facts, arith, pools, build_tokenizer(plan.tokenizer, pools)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _ratio(x: float) -> str:
    """A thinking ratio; above 1000x the knowledge figure is ~0 and the quotient means nothing."""
    return f"{x:.1f}x" if x <= 1000 else "> 1000x"


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
    facts, arith, pools, tok = demo_tasks(plan, seed)

    config = plan.model.replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    facts.check_model(config)
    model = RMT(config).to(device)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")

    def log(m: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(m) + "\n")

    trainer = Trainer(model, tok, pools, seed=seed, on_metrics=log, progress=progress,
                      bank_sources={"facts-bank": facts.bank_source("train", tok)})
    for i, stage in enumerate(plan.stages):
        trainer.run_stage(stage, i)
    train_seconds = time.perf_counter() - t0
    with writing(out, "the checkpoint"):
        save_model(model, out / "checkpoint", tok)

    k_test = seeded_subset(facts.split("test"), plan.n_knowledge_eval, seed)
    m_test = seeded_subset(arith.split("test"), plan.n_math_eval, seed)
    bank = facts.bank_source("test", tok)
    ev = dict(progress=progress, batch_size=128)
    kq = dict(max_new_tokens=8, bank_source=bank, **ev)
    mq = dict(max_new_tokens=6, group_by="steps", **ev)
    know = evaluate_qa(model, k_test, tok, desc="knowledge", **kq)
    know_mem_off = evaluate_qa(model, k_test, tok, memory=False, desc="knowledge, memory off", **kq)
    know_rec_off = evaluate_qa(model, k_test, tok, think_iters=0, desc="knowledge, recurrence off", **kq)
    # the training people, each fact in the phrasing it was never asked in during training (bank of train people)
    trained = evaluate_qa(model, seeded_subset(facts.held_out_phrasing(), plan.n_knowledge_eval, seed), tok,
                          desc="knowledge, trained people", **{**kq, "bank_source": facts.bank_source("train", tok)})
    math = evaluate_qa(model, m_test, tok, desc="math", **mq)
    math_rec_off = evaluate_qa(model, m_test, tok, think_iters=0, desc="math, recurrence off", **mq)
    math_mem_off = evaluate_qa(model, m_test, tok, memory=False, desc="math, memory off", **mq)
    edits = evaluate_edits(model, facts, tok, seeded_subset(k_test, plan.n_edits, seed + 1), seed, ev)
    timing = time_knowledge_answers(model, facts, tok, k_test[: plan.n_timed])
    wall = time.perf_counter() - t0

    ratio = math.think_iters_per_token / max(know.think_iters_per_token, 1e-9)
    report = {
        "seed": seed,
        "quick": quick,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(train_seconds, 1),
        "params": model.num_params(),
        "params_without_memory_values": model.num_params(exclude_memory_values=True),
        "knowledge": {"task": "facts-bank: people never seen in training, facts only in the bank, held-out phrasing",
                      "em": know.accuracy, "em_memory_off": know_mem_off.accuracy,
                      "em_recurrence_off": know_rec_off.accuracy, "n": know.n,
                      "em_trained_people_held_out_phrasing": trained.accuracy,
                      "think_iters_per_token": know.think_iters_per_token, **edits, **timing},
        "math": {"acc": math.accuracy, "acc_recurrence_off": math_rec_off.accuracy,
                 "acc_memory_off": math_mem_off.accuracy, "n": math.n,
                 "acc_by_steps": math.by["steps"], "acc_by_steps_recurrence_off": math_rec_off.by["steps"],
                 "tokens_per_answer": math.tokens_per_answer, "think_iters_per_token": math.think_iters_per_token},
        "router_think_ratio_math_over_knowledge": ratio,
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.stages],
        "tokenizer": {"kind": plan.tokenizer.kind, "vocab_size": tok.vocab_size},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                    "threads": torch.get_num_threads()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_predictions(out / "predictions.jsonl", [("knowledge", k_test, know), ("math", m_test, math)])
    plot_training(trainer.history, out / "training.png")
    return report


def evaluate_edits(model: RMT, facts, tok, examples: list, seed: int, ev: dict) -> dict:
    """Change each asked fact's value in the bank (no weight changes) and ask again: edit success is the share
    answered with the new value. Then delete it: the share still answered with the old value."""
    rng = random.Random(f"{seed}/edits")
    edited = {e: dict(v) for e, v in facts.facts.items()}
    targets = []
    for ex in examples:
        e, attr = ex.meta["entity"], ex.meta["attribute"]
        values = [v for v in ATTRIBUTES[attr][0] if v != facts.facts[e][attr]]
        edited[e][attr] = rng.choice(values)
        targets.append(dc_replace(ex, target=" " + edited[e][attr]))
    deleted = {e: dict(v) for e, v in facts.facts.items()}
    for ex in examples:
        deleted[ex.meta["entity"]].pop(ex.meta["attribute"], None)

    def source(table):
        return lambda rows: FactBank.from_texts(facts.bank_entries("test", rows, facts=table), tok, len(rows))

    after_edit = evaluate_qa(model, targets, tok, max_new_tokens=8, bank_source=source(edited), desc="edits", **ev)
    after_delete = evaluate_qa(model, examples, tok, max_new_tokens=8, bank_source=source(deleted),
                               desc="deletions", **ev)
    return {"edit_success": after_edit.accuracy, "n_edits": len(examples),
            "deleted_still_answered": after_delete.accuracy}


def time_knowledge_answers(model: RMT, facts, tok, examples: list) -> dict:
    """Seconds per knowledge answer at batch size 1 (prefill + greedy decoding + the bank), with the learned
    router and with the router forced to think on every token: what routing saves."""
    bank = facts.bank_source("test", tok)
    out = {}
    for name, router in (("routed", "learned"), ("forced_think", "think")):
        evaluate_qa(model, examples[:2], tok, max_new_tokens=8, bank_source=bank, batch_size=1, router=router)
        t = time.perf_counter()
        evaluate_qa(model, examples, tok, max_new_tokens=8, bank_source=bank, batch_size=1, router=router)
        out[f"seconds_per_answer_b1_{name}"] = (time.perf_counter() - t) / max(len(examples), 1)
    return out


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
    """The demo's tables: the double dissociation (each ablation on each task) and what routing does."""
    k, m = r["knowledge"], r["math"]
    lines = ["| | RMT | memory off | recurrence off (K=0) | n |", "|---|---|---|---|---|",
             f"| knowledge EM (run-time facts, held-out phrasing) | {_fmt(k['em'])} | {_fmt(k['em_memory_off'])} | "
             f"{_fmt(k['em_recurrence_off'])} | {k['n']} |",
             f"| arithmetic accuracy (unseen problems) | {_fmt(m['acc'])} | {_fmt(m['acc_memory_off'])} | "
             f"{_fmt(m['acc_recurrence_off'])} | {m['n']} |"]
    by = " / ".join(f"{v:.2f}" for _, v in sorted(m["acc_by_steps"].items()))
    by_off = " / ".join(f"{v:.2f}" for _, v in sorted(m["acc_by_steps_recurrence_off"].items()))
    lines.append("")
    lines.append(f"arithmetic accuracy by steps 1/2/3/4: {by}  (recurrence off: {by_off})")
    lines.append(f"knowledge EM on the training people (facts in the bank, each in its held-out phrasing): "
                 f"{_fmt(k['em_trained_people_held_out_phrasing'])}")
    lines.append(f"bank edits answered with the new value: {_fmt(k['edit_success'])} of {k['n_edits']}; "
                 f"deleted facts still answered: {_fmt(k['deleted_still_answered'])}")
    lines.append(f"thinking iterations per token: math {m['think_iters_per_token']:.3f}, knowledge "
                 f"{k['think_iters_per_token']:.3f} (ratio {_ratio(r['router_think_ratio_math_over_knowledge'])}); "
                 f"a knowledge answer at batch 1: {1000 * k['seconds_per_answer_b1_routed']:.1f} ms routed, "
                 f"{1000 * k['seconds_per_answer_b1_forced_think']:.1f} ms forced to think")
    lines.append(f"params {r['params']:,}, wall time {r['wall_seconds']:.0f} s (training {r['train_seconds']:.0f} s), "
                 f"seed {r['seed']}")
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
