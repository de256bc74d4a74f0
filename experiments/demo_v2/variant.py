"""Run `rmt demo` with a changed curriculum (issue 18 screens): the demo's plan, its last stage replaced.

    python experiments/demo_v2/variant.py --seed 2 --out runs/vA --variant route-late [--threads 1]

Variants:
  route-late   the math stage with the router frozen (thinking everywhere) for its first 1,800 steps, then a
               600-step stage at lr 1e-3 where the router pays the compute cost (0.1) and learns where to think
  cost-low     the demo's recipe with router_cost 0.03 instead of 0.1
  base         the demo's recipe as it is (with --hidden H: the GRU core H wide; --cost C: the math stage's
               router cost)
"""
import argparse
import json
from dataclasses import replace

import torch

from rmt.harness.demo import demo_plan, run_demo


def plan_for(variant: str, hidden: int = 0, cost: float | None = None, coda: int | None = None):
    plan = demo_plan()
    if coda is not None:
        plan.model = plan.model.replace(n_coda=coda)
    if hidden:
        plan.model = plan.model.replace(core={**plan.model.core.__dict__, "hidden": hidden})
    if cost is not None:
        plan.stages[-1] = replace(plan.stages[-1], router_cost=cost)
    *head, math = plan.stages
    if variant == "route-late":
        frozen = replace(math, name="math", steps=1800, frozen=["router"], router_cost=0.0)
        route = replace(math, name="math-route", steps=600, lr=1e-3, warmup=20, router_cost=0.1)
        plan.stages = [*head, frozen, route]
    elif variant == "cost-low":
        plan.stages = [*head, replace(math, router_cost=0.03)]
    elif variant != "base":
        raise SystemExit(f"unknown variant {variant!r}")
    return plan


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--cost", type=float)
    p.add_argument("--coda", type=int, help="coda layers (the demo has 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    r = run_demo(a.seed, a.out, plan=plan_for(a.variant, a.hidden, a.cost, a.coda), progress=False, overwrite=True)
    print(json.dumps({"variant": a.variant, "hidden": a.hidden, "cost": a.cost, "coda": a.coda, "seed": a.seed, "wall": r["wall_seconds"], "know": r["knowledge"]["em"],
                      "know_mem_off": r["knowledge"]["em_memory_off"], "math": r["math"]["acc"],
                      "by_steps": r["math"]["acc_by_steps"], "math_k0": r["math"]["acc_recurrence_off"],
                      "think_math": r["math"]["think_iters_per_token"],
                      "think_know": r["knowledge"]["think_iters_per_token"]}))
