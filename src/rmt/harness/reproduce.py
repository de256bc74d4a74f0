"""`rmt reproduce`: the article's claims measured at a scale this CPU trains, side by side with baselines.

For every seed it trains, on the same data and the same optimizer steps:

    rmt            the RMT of the demo (memory + thinking core + router), curriculum facts -> easy math -> math;
                   the last stage also sees refinement-format problems (see ``refine.py``)
    no_memory      the same architecture built without the product-key memory, trained from scratch
    no_think       the same architecture trained from scratch with the thinking core never run (K = 0)
    cot_baseline   a GPT of the same parameter count (±10%) writing step-by-step working before math answers

and measures: knowledge EM with memory on/off; math accuracy with recurrence on/off; generated tokens per
answer (RMT vs chain of thought); extrapolation (math trained on 1–4 steps, tested on 1–8 steps with K from 1 to
4× the training mean); refinement rounds (accuracy before/after, weights fingerprinted before/after); the
router's thinking iterations per token on knowledge vs math and the batch-1 wall time per answer with routing
on vs forced to think. `DIR/report.json` holds the mean over seeds under the demo's keys plus the new ones, and
every seed's own numbers under "per_seed"; `rmt report DIR` turns it into tables and plots.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from rmt.baselines.cot import evaluate_gpt, matching_config, train_gpt
from rmt.baselines.gpt import GPT
from rmt.checkpoint import atomic_write, save_model
from rmt.model.config import RMTConfig
from rmt.model.presets import preset
from rmt.errors import RunFolderError, UsageError
from rmt.harness.demo import seeded_subset
from rmt.evaluation.evaluate import evaluate_qa
from rmt.model import RMT
from rmt.evaluation.refine import evaluate_refined, refinement_examples
from rmt.rundir import claim_folder
from rmt.tasks import Example, get_task
from rmt.tokenizer import ByteTokenizer
from rmt.training import Stage, Trainer

REFINE_POOL = "arithmetic-refine"


@dataclass
class ReproducePlan:
    model: RMTConfig
    stages: list[Stage]
    # 60 people x 4 attributes = 240 facts: few enough to be seen ~8 times each in the facts stage
    facts: dict = field(default_factory=lambda: {"n_entities": 60, "n_validation": 40})
    arithmetic: dict = field(default_factory=lambda: {"n_train": 50_000, "max_steps": 4})
    eval_max_steps: int = 8  # extrapolation: test problems with up to this many steps
    n_knowledge_eval: int = 200
    n_math_eval: int = 400  # 1..max_steps problems (in distribution)
    n_extrapolation_per_steps: int = 30  # problems per step count in 1..eval_max_steps
    think_iters_eval: tuple[int, ...] = (1, 2, 4, 6, 10)  # up to 4x the training mean of K (2.5)
    refine_rounds: int = 2
    n_refine_eval: int = 200
    n_router_timing: int = 12  # questions of each kind timed at batch size 1
    n_router_examples: int = 2  # questions of each kind whose per-token routing is stored for the heat map
    cot_max_new_tokens: int = 96


def reproduce_plan(quick: bool = False, steps_mult: float = 1.0) -> ReproducePlan:
    """Stage lengths fit four trainings per seed and three seeds in an hour on a 2-core CPU; `quick` is a
    smoke-sized run, `steps_mult` trains proportionally longer (what a GPU affords)."""
    model = preset("tiny", {"core": {"iters": 4}})
    scale = (0.1 if quick else 1.0) * steps_mult

    def n(steps: int) -> int:
        return max(5, int(steps * scale))

    mixed = {"arithmetic": 0.75, "facts-synthetic": 0.25}
    stages = [
        Stage("facts", n(150), {"facts-synthetic": 1.0}, lr=3e-3, warmup=20, think_iters_min=1, think_iters_max=1,
              bptt=1, frozen=["router"], router_cost=0.0),
        Stage("math-easy", n(60), mixed, lr=3e-3, warmup=15, think_iters_min=1, think_iters_max=2,
              filters={"arithmetic": {"max_steps": 2}}, router_cost=0.0),
        Stage("math", n(90), {"arithmetic": 0.6, REFINE_POOL: 0.15, "facts-synthetic": 0.25}, lr=2e-3, warmup=10,
              think_iters_min=1, think_iters_max=4, router_cost=0.002),
    ]
    if quick:
        return ReproducePlan(model, stages, n_knowledge_eval=40, n_math_eval=40, n_extrapolation_per_steps=4,
                             think_iters_eval=(1, 4, 10), refine_rounds=1, n_refine_eval=16, n_router_timing=2,
                             cot_max_new_tokens=64)
    return ReproducePlan(model, stages)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    pools: dict[str, list[Example]]
    knowledge_test: list[Example]
    math_test: list[Example]  # 1..max_steps (the training range)
    extrapolation_test: list[Example]  # 1..eval_max_steps, none seen in training


def build_data(plan: ReproducePlan, seed: int) -> Data:
    facts = get_task("facts-synthetic", seed=seed, **plan.facts)
    arith = get_task("arithmetic", seed=seed, **plan.arithmetic)
    train = arith.split("train")
    # A separate generator for longer problems; anything also in the training pool is dropped.
    long = get_task("arithmetic", seed=seed, max_steps=plan.eval_max_steps, n_train=0,
                    n_test=plan.n_extrapolation_per_steps * plan.eval_max_steps * 2,
                    **{k: v for k, v in plan.arithmetic.items() if k not in ("n_train", "max_steps", "n_test")})
    seen = {ex.prompt for ex in train}
    per_steps: dict[int, list[Example]] = {}
    for ex in long.split("test"):
        if ex.prompt not in seen:
            per_steps.setdefault(ex.meta["steps"], []).append(ex)
    extrapolation = [ex for s in sorted(per_steps) for ex in per_steps[s][:plan.n_extrapolation_per_steps]]
    pools = {"facts-synthetic": facts.split("train"), "arithmetic": train,
             REFINE_POOL: refinement_examples(train[:20_000], seed)}
    return Data(pools, seeded_subset(facts.split("test"), plan.n_knowledge_eval, seed),
                seeded_subset(arith.split("test"), plan.n_math_eval, seed), extrapolation)


# ----------------------------------------------------------------------------------------------- training
def train_rmt(config: RMTConfig, stages: list[Stage], data: Data, seed: int, progress: bool, log) -> tuple[RMT, float]:
    torch.manual_seed(seed)
    model = RMT(config)
    trainer = Trainer(model, ByteTokenizer(), data.pools, seed=seed, on_metrics=log, progress=progress)
    for i, stage in enumerate(stages):
        trainer.run_stage(stage, i)
    return model, trainer.train_seconds


def without_thinking(stages: list[Stage]) -> list[Stage]:
    """The same curriculum with the core never run (K = 0) and no compute cost to pay."""
    return [replace(s, think_iters_min=0, think_iters_max=0, router_cost=0.0) for s in stages]


def for_gpt(stages: list[Stage]) -> list[Stage]:
    """The same curriculum for the baseline; the refinement-format share goes to plain math problems."""
    out = []
    for s in stages:
        tasks = dict(s.tasks)
        if REFINE_POOL in tasks:
            tasks["arithmetic"] = tasks.get("arithmetic", 0.0) + tasks.pop(REFINE_POOL)
        out.append(replace(s, tasks=tasks))
    return out


# ----------------------------------------------------------------------------------------------- measurements
def routing_examples(model: RMT, examples: list[Example], tok: ByteTokenizer, kind: str) -> list[dict]:
    """Per-token router probabilities for a few prompts (the heat map in `rmt report`)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for ex in examples:
            ids = tok.encode(ex.prompt)
            out = model(torch.tensor([ids]))
            rows.append({"kind": kind, "prompt": ex.prompt, "tokens": [tok.decode([t]) for t in ids],
                         "p": [[round(x, 4) for x in r] for r in out.routing.probs[0].tolist()],
                         "think": out.routing.think_mask[0].int().tolist()})
    return rows


def seconds_per_answer(model: RMT, examples: list[Example], tok: ByteTokenizer, router: str,
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


VARIANTS = ("rmt", "no_memory", "no_think", "cot_baseline")


def run_job(plan: ReproducePlan, seed: int, variant: str, out: Path, progress: bool = True) -> dict:
    """Train and measure one model of one seed -> its numbers, also written to out/seed-N/VARIANT.json.

    Jobs are independent (each builds its own data from the seed), so they can run in parallel processes
    and a killed reproduction re-runs only the jobs whose JSON is missing.
    """
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    d = out / f"seed-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    tok = ByteTokenizer()
    data = build_data(plan, seed)
    ev = dict(progress=progress, batch_size=128)
    with (d / f"metrics-{variant}.jsonl").open("w") as metrics:
        def log(m: dict) -> None:
            metrics.write(json.dumps({"model": variant, **m}) + "\n")
            metrics.flush()

        if variant == "rmt":
            result = _measure_rmt(plan, data, seed, d, tok, log, ev, progress)
        elif variant == "no_memory":
            model, seconds = train_rmt(plan.model.replace(product_keys={"enabled": False}), plan.stages, data, seed,
                                       progress, log)
            result = {"em": evaluate_qa(model, data.knowledge_test, tok, max_new_tokens=16, desc="no_memory knowledge",
                                        **ev).accuracy,
                      "acc": evaluate_qa(model, data.math_test, tok, max_new_tokens=6, desc="no_memory math",
                                         **ev).accuracy,
                      "train_seconds": round(seconds, 1)}
        elif variant == "no_think":
            model, seconds = train_rmt(plan.model, without_thinking(plan.stages), data, seed, progress, log)
            result = {"em": evaluate_qa(model, data.knowledge_test, tok, max_new_tokens=16, think_iters=0,
                                        desc="no_think knowledge", **ev).accuracy,
                      "acc": evaluate_qa(model, data.math_test, tok, max_new_tokens=6, think_iters=0,
                                         desc="no_think math", **ev).accuracy,
                      "train_seconds": round(seconds, 1)}
        elif variant == "cot_baseline":
            with torch.device("meta"):
                rmt_params = RMT(plan.model).num_params()
            torch.manual_seed(seed)
            gpt = GPT(matching_config(rmt_params))
            seconds = train_gpt(gpt, tok, data.pools, for_gpt(plan.stages), seed=seed, progress=progress,
                                on_metrics=log)
            cot = evaluate_gpt(gpt, data.math_test, tok, max_new_tokens=plan.cot_max_new_tokens, group_by="steps",
                               progress=progress, desc="cot math")
            know = evaluate_gpt(gpt, data.knowledge_test, tok, max_new_tokens=16, progress=progress,
                                desc="cot knowledge")
            result = {"params": gpt.num_params(), "acc": cot.accuracy, "tokens_per_answer": cot.tokens_per_answer,
                      "acc_by_steps": cot.by["steps"], "knowledge_em": know.accuracy,
                      "train_seconds": round(seconds, 1), "n_layer": gpt.config.n_layer,
                      "d_model": gpt.config.d_model}
        else:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write(d / f"{variant}.json", lambda f: f.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def _measure_rmt(plan: ReproducePlan, data: Data, seed: int, d: Path, tok: ByteTokenizer, log, ev: dict,
                 progress: bool) -> dict:
    """The full model: train, save, then every measurement that needs it."""
    k_mean = statistics.mean(range(plan.stages[-1].think_iters_min, plan.stages[-1].think_iters_max + 1))
    model, seconds = train_rmt(plan.model, plan.stages, data, seed, progress, log)
    save_model(model, d / "checkpoint", tok)
    know = evaluate_qa(model, data.knowledge_test, tok, max_new_tokens=16, desc="knowledge", **ev)
    know_off = evaluate_qa(model, data.knowledge_test, tok, max_new_tokens=16, memory=False,
                           desc="knowledge, memory off", **ev)
    math = evaluate_qa(model, data.math_test, tok, max_new_tokens=6, group_by="steps", desc="math", **ev)
    math_off = evaluate_qa(model, data.math_test, tok, max_new_tokens=6, group_by="steps", think_iters=0,
                           desc="math, recurrence off", **ev)
    if plan.model.core.iters not in plan.think_iters_eval:
        raise ValueError(f"think_iters_eval {plan.think_iters_eval} must include the model's K ({plan.model.core.iters})")
    by_k = {str(k): evaluate_qa(model, data.extrapolation_test, tok, max_new_tokens=6, group_by="steps",
                                think_iters=k, desc=f"extrapolation K={k}", **ev) for k in plan.think_iters_eval}
    extra = by_k[str(plan.model.core.iters)]
    refine_set = data.math_test[:plan.n_refine_eval]
    tta = evaluate_refined(model, refine_set, tok, plan.refine_rounds, max_new_tokens=6, batch_size=128,
                           progress=progress, desc="refine")
    timing_k, timing_m = data.knowledge_test[:plan.n_router_timing], data.math_test[:plan.n_router_timing]
    return {
        "train_seconds": round(seconds, 1),
        "params": model.num_params(),
        "knowledge": {"em": know.accuracy, "em_memory_off": know_off.accuracy, "n": know.n,
                      "think_iters_per_token": know.think_iters_per_token},
        "math": {"acc": math.accuracy, "acc_recurrence_off": math_off.accuracy, "n": math.n,
                 "acc_by_steps_trained_range": math.by["steps"],
                 "acc_by_steps_trained_range_recurrence_off": math_off.by["steps"],
                 "tokens_per_answer": math.tokens_per_answer, "think_iters_per_token": math.think_iters_per_token,
                 # extrapolation: problems of 1..eval_max_steps, trained on 1..max_steps
                 "acc_by_steps": extra.by["steps"], "n_extrapolation": extra.n,
                 "acc_by_think_iters": {k: r.accuracy for k, r in by_k.items()},
                 "acc_by_steps_by_think_iters": {k: r.by["steps"] for k, r in by_k.items()},
                 "train_steps_max": plan.arithmetic.get("max_steps", 4), "train_think_iters_mean": k_mean,
                 "think_iters_default": plan.model.core.iters},
        "tta": {"acc_before": tta.acc_before, "acc_after": tta.acc_after, "weights_unchanged": tta.weights_unchanged,
                "rounds": plan.refine_rounds, "rounds_run": tta.rounds_run, "acc_by_round": tta.accuracy_by_round,
                "tokens_per_answer": tta.tokens_per_answer, "n": len(refine_set)},
        "router": {
            "think_iters_knowledge": know.think_iters_per_token,
            "think_iters_math": math.think_iters_per_token,
            "ratio_math_to_knowledge": math.think_iters_per_token / max(know.think_iters_per_token, 1e-9),
            "seconds_per_answer_batch1": {
                "math": {"routed": seconds_per_answer(model, timing_m, tok, "learned", 6),
                         "forced_think": seconds_per_answer(model, timing_m, tok, "think", 6)},
                "knowledge": {"routed": seconds_per_answer(model, timing_k, tok, "learned", 16),
                              "forced_think": seconds_per_answer(model, timing_k, tok, "think", 16)},
            },
        },
        "router_examples": (routing_examples(model, data.knowledge_test[:plan.n_router_examples], tok, "knowledge")
                            + routing_examples(model, data.math_test[:plan.n_router_examples], tok, "math")),
    }


def seed_report(plan: ReproducePlan, seed: int, jobs: dict[str, dict]) -> dict:
    """One seed's report from its four jobs, in the demo's layout plus the reproduction's keys."""
    rmt = jobs["rmt"]
    return {
        "seed": seed,
        **{k: v for k, v in rmt.items() if k != "wall_seconds"},
        "wall_seconds": round(sum(j["wall_seconds"] for j in jobs.values()), 1),
        "cot_baseline": jobs["cot_baseline"],
        "ablations_from_scratch": {"no_memory": jobs["no_memory"], "no_think": jobs["no_think"]},
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.stages],
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
        "stages": [{"name": s.name, "steps": s.steps, "tasks": s.tasks} for s in plan.stages],
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
                    "cpus": os.cpu_count(), "jobs": jobs},
        "command": f"rmt reproduce --seeds {','.join(map(str, seeds))} --out {out} --jobs {jobs}"
                   + (" --quick" if quick else "") + (f" --steps-mult {steps_mult}" if steps_mult != 1.0 else ""),
        "per_seed": per_seed,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plan_dict(plan: ReproducePlan) -> dict:
    d = asdict(plan)
    d["think_iters_eval"] = list(plan.think_iters_eval)
    return json.loads(json.dumps(d))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"rmt reproduce: error: --seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"rmt reproduce: error: --seeds: expected distinct seeds, got {text!r}")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train RMT, ablations and a CoT baseline per seed; measure the claims")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    p.add_argument("--out", default="runs/reproduce", help="output folder (report.json, seed-N/)")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run")
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
