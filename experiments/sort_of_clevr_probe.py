"""Sort-of-CLEVR design probe: train a variant for N steps, print answer accuracy by question type every E steps.

Not part of the library: a fast loop (no checkpoints, no curriculum) to compare encoder / read designs.
    python experiments/sort_of_clevr_probe.py --steps 600 --set d_model=64 --questions shape
--cheat adds a learned colour embedding to the memory query (a diagnostic: does the rest work if the
query knows the colour?).
"""
from __future__ import annotations

import argparse
import json
import random
import time
import tomllib

import numpy as np
import torch

from rmt.model.config import RMTConfig
from rmt.model import RMT, loss_fn
from rmt.tasks import get_task
from rmt.tasks.sort_of_clevr import COLORS
from rmt.tokenizer import ByteTokenizer
from rmt.training.batches import collate, encode_example

p = argparse.ArgumentParser()
p.add_argument("--config", default="configs/sort_of_clevr.toml")
p.add_argument("--set", action="append", default=[], help="model field=value (TOML value)")
p.add_argument("--steps", type=int, default=600)
p.add_argument("--eval-every", type=int, default=100)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--k", type=int, default=2)
p.add_argument("--memory-aux", type=float, default=0.0)
p.add_argument("--questions", default="all", help="all | nonrel | shape | comma list of question names")
p.add_argument("--cheat", action="store_true")
p.add_argument("--cheat-std", type=float, default=1.0, help="init std of the cheat's colour embedding")
p.add_argument("--device", default="cpu")
p.add_argument("--query-embed-std", type=float, default=0.0, help="re-initialise memory_query_ema's byte embeddings")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tag", default="")
p.add_argument("--time-limit", type=float, default=1e9)
p.add_argument("--init", default="", help="start from a checkpoint directory's weights (new parameters keep their init)")
a = p.parse_args()

torch.manual_seed(a.seed)
random.seed(a.seed)
raw = tomllib.loads(open(a.config).read())["model"]
for s in a.set:
    k, v = s.split("=", 1)
    raw[k] = tomllib.loads(f"v = {v}")["v"]
cfg = RMTConfig.from_dict(raw)
model = RMT(cfg).to(a.device)
if a.init:
    from safetensors.torch import load_file
    missing, unexpected = model.load_state_dict(load_file(f"{a.init}/model.safetensors"), strict=False)
    print(json.dumps({"init": a.init, "new_parameters": missing, "unexpected": unexpected}), flush=True)
    assert not unexpected
if a.query_embed_std and cfg.memory_query_ema:
    torch.nn.init.normal_(model.query_embed.weight, std=a.query_embed_std)
tok = ByteTokenizer()
task = get_task("sort-of-clevr", seed=0)
train = task.split("train")
if a.questions == "nonrel":
    train = [e for e in train if e.meta["type"] == "non_relational"]
elif a.questions != "all":
    keep = set(a.questions.split(","))
    train = [e for e in train if e.meta["question"] in keep]
val = [e for e in task.split("validation") if a.questions == "all" or e in train or True][:1000]
timgs = torch.from_numpy(task.images("train")).to(a.device)
vimgs = torch.from_numpy(task.images("validation")).to(a.device)
cheat = None
if a.cheat:
    cheat = torch.nn.Embedding(len(COLORS), cfg.d_model).to(a.device)
    torch.nn.init.normal_(cheat.weight, std=a.cheat_std)
    model.add_module("cheat", cheat)
    current = {}
    model.memory_norm.register_forward_hook(lambda m, i, o: o + current["c"].unsqueeze(1) if o.dim() == 3 else o)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
print(json.dumps({"tag": a.tag, "params": model.num_params(), "config": a.set, "cheat": a.cheat,
                  "questions": a.questions}), flush=True)


def batch(examples):
    x, y = collate([encode_example(e, tok) for e in examples], tok.pad_id)
    return x.to(a.device), y.to(a.device)


@torch.no_grad()
def evaluate(**kw):
    model.eval()
    right = {}
    for i in range(0, len(val), 200):
        ex = val[i:i + 200]
        x, y = batch(ex)
        if cheat is not None:
            current["c"] = cheat(torch.tensor([COLORS.index(e.meta["color"]) for e in ex], device=a.device))
        logits = model(x, images=vimgs[[e.meta["image"] for e in ex]], **kw).logits
        ok = ((logits.argmax(-1) == y) | (y == -100)).all(1)
        for e, o in zip(ex, ok.tolist()):
            right.setdefault(e.meta["question"], []).append(o)
    model.train()
    return {q: round(float(np.mean(v)), 3) for q, v in right.items()}


t0 = time.time()
rng = random.Random(a.seed)
losses = []
for step in range(1, a.steps + 1):
    lr = a.lr * min(1.0, step / 100)
    for g in opt.param_groups:
        g["lr"] = lr
    ex = [rng.choice(train) for _ in range(a.batch)]
    x, y = batch(ex)
    if cheat is not None:
        current["c"] = cheat(torch.tensor([COLORS.index(e.meta["color"]) for e in ex], device=a.device))
    out = model(x, images=timgs[[e.meta["image"] for e in ex]], think_iters=a.k, bptt=2,
                memory_logits=a.memory_aux > 0)
    loss, lm = loss_fn(out, y, 0.0, a.memory_aux)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(lm.item())
    if step % a.eval_every == 0 or step == a.steps or time.time() - t0 > a.time_limit:
        acc = evaluate()
        print(json.dumps({"tag": a.tag, "step": step, "s": round(time.time() - t0, 1),
                          "loss": round(float(np.mean(losses[-a.eval_every:])), 4), "acc": acc}), flush=True)
        if time.time() - t0 > a.time_limit:
            break
if a.k:
    print(json.dumps({"tag": a.tag, "final_k0": evaluate(think_iters=0), "final_memory_off": evaluate(memory=False)}),
          flush=True)
