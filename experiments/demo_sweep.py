"""How the demo's results scale with training length and batch size (run on a GPU to see it quickly)."""
import argparse, dataclasses, json
from rmt.harness.demo import demo_plan, run_demo

ap = argparse.ArgumentParser()
ap.add_argument("--mult", type=float, default=1.0); ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--out", required=True); ap.add_argument("--device", default="cuda")
ap.add_argument("--cost", type=float, default=None); ap.add_argument("--memlr", type=float, default=None)
a = ap.parse_args()
plan = demo_plan(steps_mult=a.mult)
plan.stages = [dataclasses.replace(s, batch_size=a.batch) for s in plan.stages]
if a.cost is not None:
    plan.stages[-1] = dataclasses.replace(plan.stages[-1], router_cost=a.cost)
if a.memlr is not None:
    plan.stages = [dataclasses.replace(s, memory_lr_mult=a.memlr) for s in plan.stages]
r = run_demo(out=a.out, plan=plan, device=a.device, progress=False)
print(json.dumps({"mult": a.mult, "batch": a.batch, "knowledge": r["knowledge"], "math": r["math"], "train_s": r["train_seconds"]}))
