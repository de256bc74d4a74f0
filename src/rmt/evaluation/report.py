"""`rmt report RUN...`: tables (mean ± std over seeds) and PNG plots from `rmt reproduce` runs.

RUN is a folder with a report.json: either a `rmt reproduce` folder (its "per_seed" entries are the seeds) or
one seed's folder (seed-N/). Several RUNs are pooled, e.g. seeds trained on different machines.

Written to --out (default: the first RUN): report.md, acc_vs_think_iters.png, acc_vs_steps.png, ablations.png,
tokens_per_answer.png, router_heatmap.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


class ReportError(ValueError):
    pass


def load_seed_reports(runs: list[str | Path]) -> list[dict]:
    """Every seed's report found in the given run folders (or report.json files), in order."""
    reports = []
    for run in runs:
        path = Path(run)
        path = path / "report.json" if path.is_dir() else path
        if not path.is_file():
            raise ReportError(f"{run}: no report.json (expected a folder written by `rmt reproduce`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from None
        found = list(data["per_seed"].values()) if "per_seed" in data else [data]
        for r in found:
            missing = [k for k in ("cot_baseline", "tta", "router", "math", "knowledge")
                       if k not in r]
            if missing:
                raise ReportError(f"{path}: seed {r.get('seed', '?')} lacks {missing}; is it a `rmt reproduce` report?")
        reports.extend(found)
    seeds = [r["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ReportError(f"the runs repeat a seed: {seeds}")
    return reports


def _get(r: dict, path: str):
    for key in path.split("."):
        r = r[key]
    return r


def stats(reports: list[dict], path: str) -> tuple[float, float]:
    """(mean, std) over seeds of the value at a dotted path; std is 0 for one seed."""
    values = [float(_get(r, path)) for r in reports]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(reports: list[dict], path: str, digits: int = 3) -> str:
    m, s = stats(reports, path)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def long_problem_acc(r: dict, k: str) -> float:
    """Accuracy at K=k on problems with more steps than training had."""
    train_max = r["math"]["train_steps_max"]
    by = r["math"]["acc_by_steps_by_think_iters"][k]
    long = [v for s, v in by.items() if int(s) > train_max]
    return statistics.mean(long) if long else float("nan")


def claims(reports: list[dict]) -> list[tuple[str, str, str, bool]]:
    """(claim, target, measured, holds in the mean) for each claim of the article."""
    def mean(path: str) -> float:
        return stats(reports, path)[0]

    rmt_acc, cot_acc = mean("math.acc"), mean("cot_baseline.acc")
    rmt_tok, cot_tok = mean("math.tokens_per_answer"), mean("cot_baseline.tokens_per_answer")
    em, em_off = mean("knowledge.em"), mean("knowledge.em_memory_off")
    acc_off = mean("math.acc_recurrence_off")
    ks = sorted(reports[0]["math"]["acc_by_think_iters"], key=int)
    k_default = str(reports[0]["math"]["think_iters_default"])
    k_max = ks[-1]
    long_default = statistics.mean(long_problem_acc(r, k_default) for r in reports)
    long_max = statistics.mean(long_problem_acc(r, k_max) for r in reports)
    before, after = mean("tta.acc_before"), mean("tta.acc_after")
    unchanged = all(r["tta"]["weights_unchanged"] for r in reports)
    tk, tm = mean("router.think_iters_knowledge"), mean("router.think_iters_math")
    rows = [
        ("RMT math accuracy ≥ CoT baseline's", "≥", f"RMT {_pm(reports, 'math.acc')} vs CoT {_pm(reports, 'cot_baseline.acc')}",
         rmt_acc >= cot_acc),
        ("…with ≥ 10× fewer generated tokens per answer", "≥ 10×",
         f"{rmt_tok:.1f} vs {cot_tok:.1f} tokens ({cot_tok / max(rmt_tok, 1e-9):.1f}×)", cot_tok >= 10 * rmt_tok),
        ("memory off (switch): knowledge EM ≥ 20 points lower", "≥ 0.20",
         f"{em:.3f} → {em_off:.3f} (−{em - em_off:.3f})", em - em_off >= 0.20),
        ("recurrence off (switch, K=0): math accuracy at most half", "≤ 0.5×",
         f"{rmt_acc:.3f} → {acc_off:.3f}", acc_off <= 0.5 * rmt_acc and rmt_acc > 0),
        (f"more iterations help on longer problems than trained (K={k_default} → K={k_max})", "higher",
         f"{long_default:.3f} → {long_max:.3f}", long_max > long_default),
        ("refinement rounds do not lower accuracy; weights unchanged", "≥, identical",
         f"{before:.3f} → {after:.3f}; weights {'bit-identical' if unchanged else 'CHANGED'}",
         after >= before and unchanged),
        ("router: ≥ 3× more thinking iterations per token on math than knowledge", "≥ 3×",
         f"{tm:.2f} vs {tk:.2f} ({tm / max(tk, 1e-9):.1f}×)", tm >= 3 * tk),
    ]
    if from_scratch(reports):  # ablations trained from scratch, where a run has them (older reproductions)
        em_scratch, acc_scratch = mean("ablations_from_scratch.no_memory.em"), mean("ablations_from_scratch.no_think.acc")
        rows[3:3] = [("memory off (trained without): knowledge EM ≥ 20 points lower", "≥ 0.20",
                      f"{em:.3f} vs {em_scratch:.3f} (−{em - em_scratch:.3f})", em - em_scratch >= 0.20)]
        rows[5:5] = [("recurrence off (trained without): math accuracy at most half", "≤ 0.5×",
                      f"{rmt_acc:.3f} vs {acc_scratch:.3f}", acc_scratch <= 0.5 * rmt_acc and rmt_acc > 0)]
    return rows


def from_scratch(reports: list[dict]) -> bool:
    """Whether every seed has the ablations trained from scratch (a model built without memory, without thinking)."""
    return all(r.get("ablations_from_scratch", {}).get(k) for r in reports for k in ("no_memory", "no_think"))


def headline_table(reports_or_runs: list[dict]) -> str:
    """The claims as a markdown table; accepts seed reports or `rmt reproduce` reports (with per_seed)."""
    reports = [s for r in reports_or_runs for s in (r["per_seed"].values() if "per_seed" in r else [r])]
    seeds = ", ".join(str(r["seed"]) for r in reports)
    lines = [f"| claim | target | measured (mean ± std over seeds {seeds}) | holds |", "|---|---|---|---|"]
    lines += [f"| {c} | {t} | {m} | {'yes' if ok else 'no'} |" for c, t, m, ok in claims(reports)]
    return "\n".join(lines)


def markdown(reports: list[dict], runs: list[str]) -> str:
    seeds = [r["seed"] for r in reports]
    ks = sorted(reports[0]["math"]["acc_by_think_iters"], key=int)
    steps = sorted(reports[0]["math"]["acc_by_steps"], key=int)
    out = [f"# RMT reproduction report", "",
           f"Runs: {', '.join(map(str, runs))}. Seeds: {seeds}. Values are mean ± std over the seeds.", "",
           "## The article's claims", "", headline_table(reports), "",
           "## Models", "",
           "| model | params | knowledge EM | math accuracy | tokens per math answer | training seconds |",
           "|---|---|---|---|---|---|",
           f"| RMT | {stats(reports, 'params')[0]:,.0f} | {_pm(reports, 'knowledge.em')} | {_pm(reports, 'math.acc')} | "
           f"{_pm(reports, 'math.tokens_per_answer', 1)} | {_pm(reports, 'train_seconds', 0)} |",
           f"| RMT, memory switched off | | {_pm(reports, 'knowledge.em_memory_off')} | | | |",
           f"| RMT, recurrence switched off (K=0) | | | {_pm(reports, 'math.acc_recurrence_off')} | | |"]
    if from_scratch(reports):
        out += [f"| RMT trained without memory | | {_pm(reports, 'ablations_from_scratch.no_memory.em')} | "
                f"{_pm(reports, 'ablations_from_scratch.no_memory.acc')} | | "
                f"{_pm(reports, 'ablations_from_scratch.no_memory.train_seconds', 0)} |",
                f"| RMT trained without thinking (K=0) | | {_pm(reports, 'ablations_from_scratch.no_think.em')} | "
                f"{_pm(reports, 'ablations_from_scratch.no_think.acc')} | | "
                f"{_pm(reports, 'ablations_from_scratch.no_think.train_seconds', 0)} |"]
    setting = reports[0]["cot_baseline"].get("knowledge_setting")
    gpt = "GPT, chain of thought" + (f" (knowledge: {setting})" if setting else "")
    out += [f"| {gpt} | {stats(reports, 'cot_baseline.params')[0]:,.0f} | "
           f"{_pm(reports, 'cot_baseline.knowledge_em')} | {_pm(reports, 'cot_baseline.acc')} | "
           f"{_pm(reports, 'cot_baseline.tokens_per_answer', 1)} | {_pm(reports, 'cot_baseline.train_seconds', 0)} |",
           "", "## Extrapolation: accuracy by problem steps and thinking iterations K", "",
           f"Trained on 1–{reports[0]['math']['train_steps_max']} steps with K drawn from a range of mean "
           f"{reports[0]['math']['train_think_iters_mean']}.", "",
           "| K | all | " + " | ".join(f"{s} steps" for s in steps) + " |",
           "|---|---|" + "---|" * len(steps)]
    for k in ks:
        row = [_pm(reports, f"math.acc_by_think_iters.{k}", 2)]
        row += [_pm(reports, f"math.acc_by_steps_by_think_iters.{k}.{s}", 2) for s in steps]
        out.append(f"| {k} | " + " | ".join(row) + " |")
    out += ["", "## Refinement rounds (test-time adaptation)", "",
            f"Accuracy by round (draft first): "
            + " → ".join(f"{statistics.mean(r['tta']['acc_by_round'][i] for r in reports):.3f}"
                         for i in range(len(reports[0]["tta"]["acc_by_round"])))
            + f"; rounds run per question {_pm(reports, 'tta.rounds_run', 2)}; generated tokens per question "
              f"{_pm(reports, 'tta.tokens_per_answer', 1)}; weights bit-identical before and after: "
            + str(all(r["tta"]["weights_unchanged"] for r in reports)) + ".", "",
            "## Router", "",
            "| | knowledge | math |", "|---|---|---|",
            f"| thinking iterations per token | {_pm(reports, 'router.think_iters_knowledge', 2)} | "
            f"{_pm(reports, 'router.think_iters_math', 2)} |",
            f"| seconds per answer, batch 1, routed | "
            f"{_pm(reports, 'router.seconds_per_answer_batch1.knowledge.routed', 4)} | "
            f"{_pm(reports, 'router.seconds_per_answer_batch1.math.routed', 4)} |",
            f"| seconds per answer, batch 1, forced to think | "
            f"{_pm(reports, 'router.seconds_per_answer_batch1.knowledge.forced_think', 4)} | "
            f"{_pm(reports, 'router.seconds_per_answer_batch1.math.forced_think', 4)} |",
            "", "## Plots", ""]
    out += [f"![{n}]({n}.png)" for n in ("acc_vs_think_iters", "acc_vs_steps", "ablations", "tokens_per_answer",
                                          "router_heatmap")]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_all(reports: list[dict], out: Path) -> list[Path]:
    plt = _plt()
    paths = []
    train_max = reports[0]["math"]["train_steps_max"]
    ks = sorted(reports[0]["math"]["acc_by_think_iters"], key=int)
    steps = sorted(reports[0]["math"]["acc_by_steps"], key=int)

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        paths.append(out / f"{name}.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, sel in ((f"≤ {train_max} steps (trained)", lambda s: int(s) <= train_max),
                       (f"> {train_max} steps (longer than trained)", lambda s: int(s) > train_max)):
        per_seed = [[statistics.mean(v for s, v in r["math"]["acc_by_steps_by_think_iters"][k].items() if sel(s))
                     for k in ks] for r in reports]
        m = [statistics.mean(c) for c in zip(*per_seed)]
        sd = [statistics.stdev(c) if len(c) > 1 else 0 for c in zip(*per_seed)]
        ax.errorbar([int(k) for k in ks], m, yerr=sd, marker="o", capsize=3, label=label)
    ax.axvline(reports[0]["math"]["train_think_iters_mean"], color="grey", ls=":", lw=1, label="training mean K")
    ax.set_xlabel("thinking iterations K at test time")
    ax.set_ylabel("math accuracy")
    ax.set_title("accuracy vs thinking iterations")
    ax.legend()
    save(fig, "acc_vs_think_iters")

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, path in ((f"RMT (K={reports[0]['math']['think_iters_default']})", lambda r: r["math"]["acc_by_steps"]),
                        (f"RMT (K={ks[-1]})", lambda r: r["math"]["acc_by_steps_by_think_iters"][ks[-1]]),
                        ("RMT, recurrence off", lambda r: r["math"]["acc_by_steps_trained_range_recurrence_off"]),
                        ("GPT, chain of thought", lambda r: r["cot_baseline"]["acc_by_steps"])):
        xs = sorted(path(reports[0]), key=int)
        m = [statistics.mean(path(r)[s] for r in reports) for s in xs]
        ax.plot([int(s) for s in xs], m, marker="o", label=label)
    ax.axvspan(train_max + 0.5, int(steps[-1]) + 0.5, color="grey", alpha=0.1, label="longer than trained")
    ax.set_xlabel("problem steps")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs problem steps")
    ax.legend(fontsize=8)
    save(fig, "acc_vs_steps")

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    scratch = from_scratch(reports)
    for ax, title, bars in (
        (axes[0], "knowledge EM", [("RMT", "knowledge.em"), ("memory\nswitched off", "knowledge.em_memory_off"),
                                   *([("trained\nwithout memory", "ablations_from_scratch.no_memory.em")] * scratch),
                                   ("GPT", "cot_baseline.knowledge_em")]),
        (axes[1], "math accuracy", [("RMT", "math.acc"), ("K=0\nswitch", "math.acc_recurrence_off"),
                                    *([("trained\nwithout thinking", "ablations_from_scratch.no_think.acc")] * scratch),
                                    ("GPT + CoT", "cot_baseline.acc")]),
    ):
        ms = [stats(reports, p) for _, p in bars]
        ax.bar(range(len(bars)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=4,
               color=[f"C{i}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1)
    save(fig, "ablations")

    fig, ax = plt.subplots(figsize=(5, 4))
    bars = [("RMT", "math.tokens_per_answer"), ("RMT + refinement", "tta.tokens_per_answer"),
            ("GPT + CoT", "cot_baseline.tokens_per_answer")]
    ms = [stats(reports, p) for _, p in bars]
    ax.bar(range(3), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=4, color=["C0", "C4", "C3"])
    ax.set_xticks(range(3), [b for b, _ in bars])
    ax.set_ylabel("generated tokens per math answer")
    ax.set_title("token cost per answer")
    save(fig, "tokens_per_answer")

    examples = reports[0].get("router_examples", [])
    if examples:
        fig, axes = plt.subplots(len(examples), 1, figsize=(12, 1.3 * len(examples) + 0.6), squeeze=False,
                                 constrained_layout=True)
        for ax, ex in zip(axes[:, 0], examples):
            w_think = [[p[1] + p[2] for p in ex["p"]]]
            im = ax.imshow(w_think, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks([])
            ax.set_xticks(range(len(ex["tokens"])), [t if t.strip() else "·" for t in ex["tokens"]], fontsize=5)
            ax.set_title(f"{ex['kind']} question", fontsize=8, loc="left")
        fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8, label="w_think = p(think) + p(both)")
        fig.suptitle("router: thinking gate per token (hard skip below the threshold at inference)", fontsize=9)
        fig.savefig(out / "router_heatmap.png", dpi=130)
        plt.close(fig)
        paths.append(out / "router_heatmap.png")
    return paths


def write_report(runs: list[str | Path], out: str | Path | None = None) -> Path:
    reports = load_seed_reports(runs)
    out = Path(out) if out else (Path(runs[0]) if Path(runs[0]).is_dir() else Path(runs[0]).parent)
    out.mkdir(parents=True, exist_ok=True)
    plot_all(reports, out)
    path = out / "report.md"
    path.write_text(markdown(reports, [str(r) for r in runs]))
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables (mean ± std over seeds) and plots from `rmt reproduce` runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="folders written by `rmt reproduce` (or their report.json)")
    p.add_argument("--out", help="output folder (default: the first RUN)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.runs, args.out)
    except ReportError as e:
        raise SystemExit(f"rmt report: error: {e}") from None
    print(path.read_text().split("## Models")[0])
    print(f"written: {path} and its PNG plots")
    return 0
