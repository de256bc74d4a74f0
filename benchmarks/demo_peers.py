"""Peers at equal wall time: the project's GPT baseline and a plain GRU beside a trained `rmt demo`.

    rmt demo --seed 0 --out runs/demo-s0
    python benchmarks/demo_peers.py runs/demo-s0      # -> runs/demo-s0/peers.json, peers.md, peers.png,
                                                      #    peer-gpt.safetensors, peer-gru.safetensors
    python benchmarks/demo_peers.py RUN RUN RUN --summary docs/demo_peers   # several seeds: mean ± std table
                                                      # (.md) and bar chart (.png); a RUN with peers.json is
                                                      # not trained again

Train the peers under the conditions the RMT trained in: `rmt reproduce` trains its RMTs two at a time with
one thread each, so its `seed-N/rmt` runs get peers the same way (`--threads 1`, two runs side by side).

Both peers get what the demo's RMT got: the run's tokenizer (read from its checkpoint), the same task data
and curriculum (stage mixes, difficulty filters, learning rates, intermediate targets; RMT-only fields such
as the router's are ignored), about the same parameter count, and the same training seconds (each stage's
steps scaled by one factor measured on a 30-step calibration per stage, not counted). They answer directly
(no chain of thought), greedy, on the demo's own test questions.

They have no bank, so a knowledge question reaches them with the facts in their context: the asked person's
facts and 3 other people's (16 sentences, `FactsBank.in_context`), in training and at test. That is an oracle
retrieval: the RMT's bank holds every asked person of the batch plus distractors (at least 32 people).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from rmt.baselines.cot import evaluate_gpt, matching_config, train_gpt
from rmt.baselines.gpt import GPT
from rmt.baselines.gru import GRULM, matching_gru
from rmt.harness.demo import demo_plan, seeded_subset
from rmt.tasks import get_task
from rmt.tokenizer import load_tokenizer

N_PEOPLE = 4  # people whose facts a peer's knowledge prompt holds (the asked one among them)
CALIBRATION_STEPS = 30  # per stage: a stage mixes short math rows and long fact prompts, so sample enough of both


def time_matched(model, tok, pools, stages, seconds: float, seed: int) -> tuple[list, dict]:
    """The stages with their steps scaled so that training takes about `seconds` on this machine."""
    per_step = {}
    for stage in stages:
        probe = copy.deepcopy(model)
        n = CALIBRATION_STEPS
        per_step[stage.name] = train_gpt(probe, tok, pools, [replace(stage, steps=n)], seed=seed, progress=False,
                                         cot=False) / n
    planned = sum(s.steps * per_step[s.name] for s in stages)
    factor = seconds / planned
    return [replace(s, steps=max(1, round(s.steps * factor))) for s in stages], per_step


def run_peer(name: str, model, tok, pools, stages, seconds: float, seed: int, tests: dict, progress: bool,
             out: Path) -> dict:
    torch.manual_seed(seed)
    scaled, per_step = time_matched(model, tok, pools, stages, seconds, seed)
    t0 = time.perf_counter()
    train_seconds = train_gpt(model, tok, pools, scaled, seed=seed, progress=progress, cot=False)
    print(f"{name}: {sum(s.steps for s in scaled)} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    save_file(model.state_dict(), str(out / f"peer-{name}.safetensors"))
    ev = dict(batch_size=128, progress=progress, cot=False)
    know = evaluate_gpt(model, tests["knowledge"], tok, max_new_tokens=8, desc=f"{name} knowledge", **ev)
    trained = evaluate_gpt(model, tests["trained"], tok, max_new_tokens=8, desc=f"{name} trained people", **ev)
    math = evaluate_gpt(model, tests["math"], tok, max_new_tokens=6, group_by="steps", desc=f"{name} math", **ev)
    return {"params": model.num_params(), "config": vars(model.config), "train_seconds": round(train_seconds, 1),
            "steps": {s.name: s.steps for s in scaled}, "seconds_per_step": per_step,
            "knowledge_em": know.accuracy, "knowledge_em_trained_people": trained.accuracy,
            "math_acc": math.accuracy, "math_acc_by_steps": math.by["steps"]}


def table(result: dict) -> str:
    rows = [("", "RMT (bank)", "GPT (facts in context)", "GRU (facts in context)")]
    r, g, u = result["rmt"], result["gpt"], result["gru"]
    rows.append(("parameters", f"{r['params']:,}", f"{g['params']:,}", f"{u['params']:,}"))
    rows.append(("training seconds", f"{r['train_seconds']:.0f}", f"{g['train_seconds']:.0f}", f"{u['train_seconds']:.0f}"))
    rows.append(("optimizer steps", f"{r['steps']:,}", f"{sum(g['steps'].values()):,}", f"{sum(u['steps'].values()):,}"))
    for label, key in [("knowledge EM, run-time people", "knowledge_em"),
                       ("knowledge EM, training people", "knowledge_em_trained_people"),
                       ("arithmetic accuracy", "math_acc")]:
        rows.append((label, *(f"{m[key]:.3f}" for m in (r, g, u))))
    steps = sorted(r["math_acc_by_steps"], key=int)
    rows.append(("  by steps " + "/".join(steps),
                 *("/".join(f"{m['math_acc_by_steps'][s]:.2f}" for s in steps) for m in (r, g, u))))
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" * 4 + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["knowledge\n(run-time people)", "knowledge\n(training people)", "arithmetic"]
    keys = ["knowledge_em", "knowledge_em_trained_people", "math_acc"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.26
    for i, (name, color) in enumerate([("rmt", "tab:blue"), ("gpt", "tab:orange"), ("gru", "tab:green")]):
        vals = [result[name][k] for k in keys]
        bars = ax.bar([x + (i - 1) * width for x in range(3)], vals, width, label=name.upper(), color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(3), labels)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(f"peers at equal training time ({result['seconds']:.0f} s, seed {result['seed']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def peers_for_run(run: Path, seconds: float | None, progress: bool) -> dict:
    """Train and score both peers beside one demo run -> the result (also run/peers.json, .md, .png)."""
    try:
        report = json.loads((run / "report.json").read_text())
        tok = load_tokenizer(run / "checkpoint")
    except (OSError, ValueError) as e:
        sys.exit(f"demo_peers: {run} is not a finished `rmt demo` folder ({e})")
    seed, plan = report["seed"], demo_plan(report["quick"])
    seconds = seconds or report["train_seconds"]
    facts = get_task("facts-bank", seed=seed, **plan.facts)
    arith = get_task("arithmetic", seed=seed, **plan.arithmetic)
    pools = {"facts-bank": facts.in_context("train", facts.split("train"), N_PEOPLE),
             "arithmetic": arith.split("train")}
    # the demo's test questions (the same seeded subsets), the knowledge ones with their facts in context
    tests = {"knowledge": facts.in_context("test", seeded_subset(facts.split("test"), plan.n_knowledge_eval, seed),
                                           N_PEOPLE),
             "trained": facts.in_context("train", seeded_subset(facts.held_out_phrasing(), plan.n_knowledge_eval,
                                                                seed), N_PEOPLE),
             "math": seeded_subset(arith.split("test"), plan.n_math_eval, seed)}
    n = report["params"]
    vocab = dict(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    result = {"seed": seed, "seconds": seconds, "n_people_in_context": N_PEOPLE, "threads": torch.get_num_threads(),
              "rmt": {"params": n, "train_seconds": report["train_seconds"],
                      "steps": sum(s["steps"] for s in report["stages"]),
                      "knowledge_em": report["knowledge"]["em"],
                      "knowledge_em_trained_people": report["knowledge"]["em_trained_people_held_out_phrasing"],
                      "math_acc": report["math"]["acc"], "math_acc_by_steps": report["math"]["acc_by_steps"]}}
    for name in ("gpt", "gru"):
        torch.manual_seed(seed)
        model = (GPT(matching_config(n, max_len=512, **vocab)) if name == "gpt"
                 else GRULM(matching_gru(n, **vocab)))
        result[name] = run_peer(name, model, tok, pools, plan.stages, seconds, seed, tests, progress, run)
    (run / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "peers.md").write_text(table(result))
    plot(result, run / "peers.png")
    return result


SUMMARY_ROWS = [("knowledge EM, run-time people", "knowledge_em"),
                ("knowledge EM, training people", "knowledge_em_trained_people"),
                ("arithmetic accuracy", "math_acc"), ("training seconds", "train_seconds")]


def summary_table(results: list[dict]) -> str:
    """Mean ± std over seeds of each model's headline numbers, and every seed's own value."""
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"| seeds {seeds} | RMT (bank) | GPT (facts in context) | GRU (facts in context) |", "|---" * 4 + "|"]
    for label, key in SUMMARY_ROWS + [("optimizer steps", "steps")]:
        cells = []
        for name in ("rmt", "gpt", "gru"):
            vals = [float(sum(r[name][key].values()) if isinstance(r[name][key], dict) else r[name][key])
                    for r in results]
            fmt = ".0f" if key in ("train_seconds", "steps") else ".3f"
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):{fmt}} ± {sd:{fmt}} ({' / '.join(f'{v:{fmt}}' for v in vals)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["knowledge\n(run-time people)", "knowledge\n(training people)", "arithmetic"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.26
    for i, (name, color) in enumerate([("rmt", "tab:blue"), ("gpt", "tab:orange"), ("gru", "tab:green")]):
        per_key = [[r[name][k] for r in results] for _, k in SUMMARY_ROWS[:3]]
        means = [statistics.mean(v) for v in per_key]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_key]
        bars = ax.bar([x + (i - 1) * width for x in range(3)], means, width, yerr=sds, capsize=3,
                      label=name.upper(), color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(3), labels)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    seeds = ", ".join(str(r["seed"]) for r in results)
    ax.set_title(f"peers at equal training time, seeds {seeds}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="`rmt demo` output folders (report.json, checkpoint/)")
    p.add_argument("--seconds", type=float, help="training seconds per peer (default: each run's RMT's)")
    p.add_argument("--threads", type=int, help="torch threads (default torch's; match how the RMT was trained)")
    p.add_argument("--summary", help="with several runs: write the mean ± std table to SUMMARY.md and the chart "
                                     "to SUMMARY.png")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    for run in map(Path, a.runs):
        done = run / "peers.json"
        results.append(json.loads(done.read_text()) if done.is_file()
                       else peers_for_run(run, a.seconds, not a.no_progress))
        print(f"{run}:\n{table(results[-1])}")
    if len(results) > 1:
        text = summary_table(results)
        print(text)
        if a.summary:
            Path(a.summary).parent.mkdir(parents=True, exist_ok=True)
            Path(a.summary + ".md").write_text(text)
            summary_plot(results, Path(a.summary + ".png"))


if __name__ == "__main__":
    main()
