"""Does scoring the memory read's own prediction (R1's "preliminary answer signal") move facts into memory?

Facts-only training on a small knowledge base; knowledge EM with memory on and off, with and without the
auxiliary memory loss. Usage: python experiments/memory_aux.py --steps 800 --entities 150 --aux 1.0
"""
import argparse, json, time
import torch
from rmt.model.config import RMTConfig
from rmt.evaluation.evaluate import evaluate_qa
from rmt.model import RMT
from rmt.tasks import get_task
from rmt.tokenizer import ByteTokenizer
from rmt.training import Stage, Trainer

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=800); ap.add_argument("--entities", type=int, default=150)
ap.add_argument("--aux", type=float, default=0.0); ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--memlr", type=float, default=5.0)
a = ap.parse_args()
torch.manual_seed(a.seed)
tok = ByteTokenizer()
facts = get_task("facts-synthetic", n_entities=a.entities, n_validation=20, seed=a.seed)
model = RMT(RMTConfig(think_iters=1))
t0 = time.time()
tr = Trainer(model, tok, {"facts": facts.split("train")}, seed=a.seed, progress=False)
tr.run_stage(Stage("facts", a.steps, {"facts": 1.0}, lr=3e-3, warmup=30, think_iters_min=1, think_iters_max=1,
                   bptt=1, frozen=["router"], router_cost=0.0, memory_aux=a.aux, memory_lr_mult=a.memlr))
test = facts.split("test")
on = evaluate_qa(model, test, tok, max_new_tokens=16).accuracy
off = evaluate_qa(model, test, tok, max_new_tokens=16, memory=False).accuracy
print(json.dumps({"aux": a.aux, "memlr": a.memlr, "steps": a.steps, "entities": a.entities, "n": len(test),
                  "em": on, "em_memory_off": off, "train_loss": tr.history[-1]["loss"], "seconds": time.time() - t0}))
