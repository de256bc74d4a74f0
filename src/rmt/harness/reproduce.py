"""`rmt reproduce`: the article's claims measured on the demo's recipe, per seed, beside a chain-of-thought GPT.

For every seed two jobs run (independent, so in parallel processes; a killed reproduction re-runs only the
jobs whose JSON is missing):

    rmt            `rmt demo`'s model and curriculum (its report: knowledge with memory on/off, arithmetic with
                   recurrence on/off, the router, bank edits), then what the demo does not measure: longer
                   problems than trained at several K (extrapolation), refinement rounds (accuracy before/after,
                   weights fingerprinted), batch-1 time per math answer and the router's per-token heat map
    cot_baseline   a GPT of the same parameter count (±10%) on the same tokenizer, data and optimizer steps,
                   trained to write step-by-step working before a math answer; knowledge questions reach it with
                   the facts in its context (`FactsBank.in_context`), as it has no bank

The ablations are switches of the one trained RMT (memory off, K = 0, router forced), as in the demo.
`DIR/report.json` holds the mean over seeds, and every seed's own numbers under "per_seed"; `rmt report DIR`
turns it into tables and plots.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rmt.baselines.cot import evaluate_gpt, matching_config, train_gpt
from rmt.baselines.gpt import GPT
from rmt.checkpoint import atomic_write, load_model
from rmt.errors import RunFolderError, UsageError
from rmt.evaluation.evaluate import evaluate_qa
from rmt.evaluation.refine import evaluate_refined
from rmt.harness.demo import DemoPlan, demo_plan, demo_tasks, run_demo, seeded_subset
from rmt.model import RMT
from rmt.rundir import claim_folder
from rmt.tasks import Example, get_task
from rmt.tokenizer import Tokenizer

N_PEOPLE_IN_CONTEXT = 4  # people whose facts a CoT knowledge prompt holds, the asked one among them


@dataclass
class ReproducePlan:
    demo: DemoPlan  # the RMT's model, curriculum, data and evaluation sizes: `rmt demo`'s
    eval_max_steps: int = 8  # extrapolation: test problems with up to this many steps (training has 1..4)
    n_extrapolation_per_steps: int = 30  # problems per step count in 1..eval_max_steps
    think_iters_eval: tuple[int, ...] = (1, 2, 4)  # K at test time; the demo trains K = 1
    refine_rounds: int = 2
    n_refine_eval: int = 200
    n_router_timing: int = 12  # math questions timed at batch size 1 (the demo times the knowledge ones)
    n_router_examples: int = 2  # questions of each kind whose per-token routing is stored for the heat map
    cot_max_new_tokens: int = 96

    @property
    def arithmetic_max_steps(self) -> int:
        """The most steps a training problem has (the arithmetic task's default, unless the demo sets it)."""
        return self.demo.arithmetic.get("max_steps", 4)


def reproduce_plan(quick: bool = False, steps_mult: float = 1.0) -> ReproducePlan:
    """The demo's recipe (`rmt demo`, or `rmt demo --quick`) plus the reproduction's own measurements."""
    plan = ReproducePlan(demo_plan(quick, steps_mult))
    if quick:
        plan.n_extrapolation_per_steps, plan.think_iters_eval, plan.refine_rounds = 4, (1, 2), 1
        plan.n_refine_eval, plan.n_router_timing, plan.cot_max_new_tokens = 16, 2, 64
    return plan


# ----------------------------------------------------------------------------------------------- data
def extrapolation_set(plan: ReproducePlan, seed: int, train: list[Example]) -> list[Example]:
    """Problems of 1..eval_max_steps steps from a separate generator, none in the training pool."""
    settings = {k: v for k, v in plan.demo.arithmetic.items() if k not in ("n_train", "max_steps", "n_test")}
    long = get_task("arithmetic", seed=seed, max_steps=plan.eval_max_steps, n_train=0,
                    n_test=plan.n_extrapolation_per_steps * plan.eval_max_steps * 2, **settings)
    seen = {ex.prompt for ex in train}
    per_steps: dict[int, list[Example]] = {}
    for ex in long.split("test"):
        if ex.prompt not in seen:
            per_steps.setdefault(ex.meta["steps"], []).append(ex)
    return [ex for s in sorted(per_steps) for ex in per_steps[s][:plan.n_extrapolation_per_steps]]


# ----------------------------------------------------------------------------------------------- measurements
def routing_examples(model: RMT, examples: list[Example], tok: Tokenizer, kind: str, bank_source=None) -> list[dict]:
    """Per-token router probabilities for a few prompts (the heat map in `rmt report`)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for ex in examples:
            ids = tok.encode(ex.prompt)
            out = model(torch.tensor([ids]), explicit_bank=bank_source([ex]) if bank_source else None)
            rows.append({"kind": kind, "prompt": ex.prompt, "tokens": [tok.decode([t]) for t in ids],
                         "p": [[round(x, 4) for x in r] for r in out.routing.probs[0].tolist()],
                         "think": out.routing.think_mask[0].int().tolist()})
    return rows


def seconds_per_answer(model: RMT, examples: list[Example], tok: Tokenizer, router: str,
                       max_new_tokens: int) -> float:
    """Median wall seconds to answer one question at batch size 1 (after one warm-up answer)."""
    model.eval()
    times = []
    with torch.no_grad():
        for i, ex in enumerate([examples[0]] + examples):
            idx = torch.tensor([tok.encode(ex.prompt)])
            t0 = time.perf_counter()
            model.generate(idx, max_new_tokens, eos_id=tok.eos_id, router=router)
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


VARIANTS = ("rmt", "cot_baseline")


def run_job(plan: ReproducePlan, seed: int, variant: str, out: Path, progress: bool = True) -> dict:
    """Train and measure one model of one seed -> its numbers, also written to out/seed-N/VARIANT.json."""
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    d = out / f"seed-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    if variant == "rmt":
        result = _measure_rmt(plan, seed, d, progress)
    elif variant == "cot_baseline":
        result = _measure_cot(plan, seed, d, progress)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write(d / f"{variant}.json", lambda f: f.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def _measure_rmt(plan: ReproducePlan, seed: int, d: Path, progress: bool) -> dict:
    """The demo (train + its measurements, in d/rmt/), then the reproduction's own measurements."""
    demo = run_demo(seed, d / "rmt", plan=plan.demo, progress=progress, overwrite=True)
    model, tok = load_model(d / "rmt" / "checkpoint")
    facts, arith, pools, _ = demo_tasks(plan.demo, seed)
    math_test = seeded_subset(arith.split("test"), plan.demo.n_math_eval, seed)
    know_test = seeded_subset(facts.split("test"), plan.demo.n_knowledge_eval, seed)
    extrapolation = extrapolation_set(plan, seed, pools["arithmetic"])
    ev = dict(progress=progress, batch_size=128, max_new_tokens=6)
    k_default = plan.demo.model.core.iters
    ks = sorted(set(plan.think_iters_eval) | {k_default})
    by_k = {str(k): evaluate_qa(model, extrapolation, tok, group_by="steps", think_iters=k,
                                desc=f"extrapolation K={k}", **ev) for k in ks}
    refine_set = math_test[:plan.n_refine_eval]
    tta = evaluate_refined(model, refine_set, tok, plan.refine_rounds, max_new_tokens=6, batch_size=128,
                           progress=progress, desc="refine")
    timing = math_test[:plan.n_router_timing]
    last = plan.demo.stages[-1]
    k, m = demo["knowledge"], demo["math"]
    bank = facts.bank_source("test", tok)
    return {
        "train_seconds": demo["train_seconds"],
        "params": demo["params"],
        "demo": {key: demo[key] for key in ("wall_seconds", "train_seconds", "tokenizer", "stages")},
        "knowledge": k,
        "math": {**m, "acc_by_steps_trained_range": m["acc_by_steps"],
                 "acc_by_steps_trained_range_recurrence_off": m["acc_by_steps_recurrence_off"],
                 # extrapolation: problems of 1..eval_max_steps, trained on 1..arithmetic_max_steps
                 "acc_by_steps": by_k[str(k_default)].by["steps"], "n_extrapolation": len(extrapolation),
                 "acc_by_think_iters": {key: r.accuracy for key, r in by_k.items()},
                 "acc_by_steps_by_think_iters": {key: r.by["steps"] for key, r in by_k.items()},
                 "train_steps_max": plan.arithmetic_max_steps,
                 "train_think_iters_mean": statistics.mean(range(last.think_iters_min, last.think_iters_max + 1)),
                 "think_iters_default": k_default},
        "tta": {"acc_before": tta.acc_before, "acc_after": tta.acc_after, "weights_unchanged": tta.weights_unchanged,
                "rounds": plan.refine_rounds, "rounds_run": tta.rounds_run, "acc_by_round": tta.accuracy_by_round,
                "tokens_per_answer": tta.tokens_per_answer, "n": len(refine_set)},
        "router": {
            "think_iters_knowledge": k["think_iters_per_token"],
            "think_iters_math": m["think_iters_per_token"],
            "ratio_math_to_knowledge": demo["router_think_ratio_math_over_knowledge"],
            "seconds_per_answer_batch1": {
                "math": {"routed": seconds_per_answer(model, timing, tok, "learned", 6),
                         "forced_think": seconds_per_answer(model, timing, tok, "think", 6)},
                "knowledge": {"routed": k["seconds_per_answer_b1_routed"],
                              "forced_think": k["seconds_per_answer_b1_forced_think"]},
            },
        },
        "router_examples": (routing_examples(model, know_test[:plan.n_router_examples], tok, "knowledge", bank)
                            + routing_examples(model, math_test[:plan.n_router_examples], tok, "math")),
    }


def _measure_cot(plan: ReproducePlan, seed: int, d: Path, progress: bool) -> dict:
    """A GPT of the RMT's size on the demo's tokenizer, data and steps, with chain-of-thought math targets."""
    facts, arith, pools, tok = demo_tasks(plan.demo, seed)
    pools = {**pools, "facts-bank": facts.in_context("train", pools["facts-bank"], N_PEOPLE_IN_CONTEXT)}
    with torch.device("meta"):
        rmt_params = RMT(plan.demo.model.replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)).num_params()
    torch.manual_seed(seed)
    gpt = GPT(matching_config(rmt_params, max_len=512, vocab_size=tok.vocab_size, pad_id=tok.pad_id))
    with (d / "metrics-cot_baseline.jsonl").open("w") as metrics:
        def log(m: dict) -> None:
            metrics.write(json.dumps(m) + "\n")
            metrics.flush()
        seconds = train_gpt(gpt, tok, pools, plan.demo.stages, seed=seed, progress=progress, on_metrics=log)
    math_test = seeded_subset(arith.split("test"), plan.demo.n_math_eval, seed)
    know_test = facts.in_context("test", seeded_subset(facts.split("test"), plan.demo.n_knowledge_eval, seed),
                                 N_PEOPLE_IN_CONTEXT)
    cot = evaluate_gpt(gpt, math_test, tok, max_new_tokens=plan.cot_max_new_tokens, group_by="steps",
                       progress=progress, desc="cot math")
    know = evaluate_gpt(gpt, know_test, tok, max_new_tokens=8, progress=progress, desc="cot knowledge")
    return {"params": gpt.num_params(), "acc": cot.accuracy, "tokens_per_answer": cot.tokens_per_answer,
            "acc_by_steps": cot.by["steps"], "knowledge_em": know.accuracy,
            "knowledge_setting": f"facts in context ({N_PEOPLE_IN_CONTEXT} people)",
            "train_seconds": round(seconds, 1), "n_layer": gpt.config.n_layer, "d_model": gpt.config.d_model}


def seed_report(plan: ReproducePlan, seed: int, jobs: dict[str, dict]) -> dict:
    """One seed's report from its jobs, in the demo's layout plus the reproduction's keys."""
    rmt = jobs["rmt"]
    return {
        "seed": seed,
        **{k: v for k, v in rmt.items() if k != "wall_seconds"},
        "wall_seconds": round(sum(j["wall_seconds"] for j in jobs.values()), 1),
        "cot_baseline": jobs["cot_baseline"],
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.demo.stages],
    }


# ----------------------------------------------------------------------------------------------- aggregation
def mean_over_seeds(reports: list[dict]) -> dict:
    """Numbers averaged over seeds, nested like one report; a leaf that is not a number keeps the first seed's."""
    def merge(values: list):
        first = values[0]
        if isinstance(first, dict):
            keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
            return {k: merge([v[k] for v in values]) for k in keys}
        if isinstance(first, bool):
            return all(values)
        if isinstance(first, (int, float)):
            return statistics.mean(values)
        return first
    skip = {"router_examples", "seed", "stages"}
    return merge([{k: v for k, v in r.items() if k not in skip} for r in reports])


def _job_in_subprocess(plan: ReproducePlan, seed: int, variant: str, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    return run_job(plan, seed, variant, out, progress=False)


# What `rmt reproduce` writes in its folder (see `rmt.rundir`).
REPRODUCE_OUTPUTS = ("plan.json", "report.json", "seed-*")


class PlanMismatch(RunFolderError, ValueError):
    """The folder holds a reproduction of another plan (a ValueError too, as this was before rmt.errors)."""


def run_reproduce(seeds: list[int], out: str | Path, quick: bool = False, steps_mult: float = 1.0,
                  progress: bool = True, jobs: int = 1, plan: ReproducePlan | None = None,
                  overwrite: bool = False) -> dict:
    """All seeds' jobs (in `jobs` processes, one thread each when more than one) -> the aggregated report.

    A job whose result is already in out/seed-N/VARIANT.json is not run again, so a killed reproduction
    continues where it stopped (run the same command again); out/plan.json guards against continuing with a
    different plan, and a folder holding anything else this command writes is refused: with `overwrite` both
    are moved to OUT.old-N first. OUT is locked while this runs.
    """
    plan = plan or reproduce_plan(quick, steps_mult)
    plan_json = json.dumps(plan_dict(plan), indent=2, sort_keys=True) + "\n"

    def same_plan(path: Path) -> bool:
        f = path / "plan.json"
        if not f.is_file():
            return False  # results without a plan: refused by claim_folder as another run
        if f.read_text() == plan_json:
            return True
        if overwrite:
            return False  # moved aside by claim_folder
        raise PlanMismatch(f"--out {path}: holds results of a different plan ({f}); choose a new --out, or pass "
                           f"--overwrite to move them aside to {path.name}.old-N (nothing is deleted)")

    with claim_folder(out, markers=REPRODUCE_OUTPUTS, overwrite=overwrite, continues=same_plan):
        return _run_reproduce(seeds, Path(out), quick, steps_mult, progress, jobs, plan, plan_json)


def _run_reproduce(seeds: list[int], out: Path, quick: bool, steps_mult: float, progress: bool, jobs: int,
                   plan: ReproducePlan, plan_json: str) -> dict:
    t0 = time.perf_counter()
    atomic_write(out / "plan.json", lambda f: f.write_text(plan_json))
    todo = [(s, v) for s in seeds for v in VARIANTS if not (out / f"seed-{s}" / f"{v}.json").is_file()]
    # Longest jobs first (the CoT GPT trains ~2x as long as the RMT): the pool takes jobs in order, so the
    # short ones fill in at the end instead of one long job running alone on the last worker.
    todo.sort(key=lambda job: job[1] != "cot_baseline")
    bar = tqdm(total=len(seeds) * len(VARIANTS), initial=len(seeds) * len(VARIANTS) - len(todo), desc="reproduce",
               unit="job", disable=not progress)
    if jobs == 1:
        for s, v in todo:
            bar.set_postfix_str(f"seed {s} {v}")
            run_job(plan, s, v, out, progress)
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_job_in_subprocess, plan, s, v, out, threads) for s, v in todo]
            for f in as_completed(futures):
                f.result()  # re-raises a job's error here
                bar.update(1)
    bar.close()
    per_seed = {}
    for s in seeds:
        results = {v: json.loads((out / f"seed-{s}" / f"{v}.json").read_text()) for v in VARIANTS}
        per_seed[str(s)] = seed_report(plan, s, results)
        (out / f"seed-{s}" / "report.json").write_text(json.dumps(per_seed[str(s)], indent=2) + "\n")
    report = {
        **mean_over_seeds(list(per_seed.values())),
        "seeds": seeds,
        "quick": quick,
        "steps_mult": steps_mult,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.demo.stages],
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
                    "cpus": os.cpu_count(), "jobs": jobs},
        "command": f"rmt reproduce --seeds {','.join(map(str, seeds))} --out {out} --jobs {jobs}"
                   + (" --quick" if quick else "") + (f" --steps-mult {steps_mult}" if steps_mult != 1.0 else ""),
        "per_seed": per_seed,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plan_dict(plan: ReproducePlan) -> dict:
    return json.loads(json.dumps(asdict(plan), default=list))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"rmt reproduce: error: --seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"rmt reproduce: error: --seeds: expected distinct seeds, got {text!r}")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train the demo's RMT and a CoT baseline per seed; measure the claims")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    p.add_argument("--out", default="runs/reproduce", help="output folder (report.json, seed-N/)")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (the demo's --quick recipe)")
    p.add_argument("--steps-mult", type=float, default=1.0, help="train this many times longer")
    p.add_argument("--jobs", type=int, default=2, help="models trained in parallel processes (default 2, one per core)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds another reproduction: it is moved to OUT.old-N first")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.steps_mult <= 0:
        raise UsageError(f"--steps-mult: expected > 0, got {args.steps_mult}")
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds)
    if args.jobs < 1:
        raise UsageError(f"--jobs: expected >= 1, got {args.jobs}")
    report = run_reproduce(seeds, args.out, quick=args.quick, steps_mult=args.steps_mult,
                           progress=not args.no_progress, jobs=args.jobs, overwrite=args.overwrite)
    from rmt.evaluation.report import headline_table
    print(headline_table([report]))
    print(f"report: {Path(args.out) / 'report.json'}; tables and plots: rmt report {args.out}")
    return 0
