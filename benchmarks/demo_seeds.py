"""Mean ± std of `rmt demo` reports over seeds, as the README's table.

    for s in 0 1 2; do rmt demo --seed $s --out runs/demo-s$s --no-progress; done
    python benchmarks/demo_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2
"""
import json
import statistics
import sys
from pathlib import Path

RATIO_CAP = 1000  # a ratio above this is shown as "> 1000": the knowledge figure is ~0
ROWS = [  # (label, path into the report)
    ("knowledge EM (run-time facts, held-out phrasing)", ("knowledge", "em")),
    ("  memory off", ("knowledge", "em_memory_off")),
    ("  recurrence off (K=0)", ("knowledge", "em_recurrence_off")),
    ("knowledge EM, training people (held-out phrasing)", ("knowledge", "em_trained_people_held_out_phrasing")),
    ("bank edits answered with the new value", ("knowledge", "edit_success")),
    ("deleted facts still answered", ("knowledge", "deleted_still_answered")),
    ("arithmetic accuracy (unseen problems)", ("math", "acc")),
    ("  memory off", ("math", "acc_memory_off")),
    ("  recurrence off (K=0)", ("math", "acc_recurrence_off")),
    ("thinking iterations per token, math", ("math", "think_iters_per_token")),
    ("thinking iterations per token, knowledge", ("knowledge", "think_iters_per_token")),
    ("ratio math / knowledge", ("router_think_ratio_math_over_knowledge",)),
    ("ms per knowledge answer at batch 1, routed", ("knowledge", "seconds_per_answer_b1_routed")),
    ("ms per knowledge answer at batch 1, forced to think", ("knowledge", "seconds_per_answer_b1_forced_think")),
    ("wall seconds", ("wall_seconds",)),
]


def get(report: dict, path: tuple) -> float:
    for key in path:
        report = report[key]
    return float(report)


def main(folders: list[str]) -> None:
    reports = [json.loads((Path(f) / "report.json").read_text()) for f in folders]
    seeds = [r["seed"] for r in reports]
    print("| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |")
    print("|---|" + "---|" * len(seeds) + "---|")
    for label, path in ROWS:
        scale = 1000.0 if path[-1].startswith("seconds_per_answer") else 1.0
        vals = [scale * get(r, path) for r in reports]
        fmt = ".0f" if path == ("wall_seconds",) else (".1f" if scale > 1 or "ratio" in path[-1] else ".3f")
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        if "ratio" in path[-1] and max(vals) > RATIO_CAP:  # knowledge thinking ~0: the quotient means nothing
            print(f"| {label} | " + " | ".join(format(v, fmt) if v <= RATIO_CAP else f"> {RATIO_CAP}" for v in vals)
                  + f" | min {format(min(vals), fmt) if min(vals) <= RATIO_CAP else f'> {RATIO_CAP}'} |")
            continue
        print(f"| {label} | " + " | ".join(format(v, fmt) for v in vals)
              + f" | {format(statistics.mean(vals), fmt)} ± {format(sd, fmt)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
