"""Probe: the RMT with a token-carried GRU core on the demo's arithmetic, through the project's Trainer.

    python experiments/demo_v2/arith.py --steps 1500 --model '{"core": {"mixer": "gru", "n_layers": 2}}'
"""
import argparse, json, random, time
import torch
from rmt.model import RMT
from rmt.model.presets import preset
from rmt.tasks import get_task
from rmt.tokenizer import TokenizerConfig
from rmt.training import Stage, Trainer
from rmt.training.run import build_tokenizer
from rmt.evaluation.evaluate import evaluate_qa

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--easy", type=int, default=0, help="first this many steps on 1-2 step problems")
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--model", default="{}")
ap.add_argument("--emb-std", type=float, default=0.0)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--n-eval", type=int, default=1000)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--cost", type=float, default=0.0)
ap.add_argument("--frozen-router", action="store_true")
ap.add_argument("--intermediate", action="store_true", help="also score the running value after each sentence")
a = ap.parse_args()
torch.set_num_threads(a.threads)
random.seed(a.seed); torch.manual_seed(a.seed)
arith = get_task("arithmetic", seed=a.seed, n_train=100_000)
facts = get_task("facts-synthetic", seed=a.seed)
pools = {"arithmetic": arith.split("train"), "facts-synthetic": facts.split("train")}
tok = build_tokenizer(TokenizerConfig("bpe", 2048), pools)
cfg = preset("tiny", json.loads(a.model)).replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
model = RMT(cfg)
if a.emb_std:
    torch.nn.init.normal_(model.embed.weight, std=a.emb_std)
print("params", model.num_params(), "core", sum(p.numel() for p in model.core.parameters()), flush=True)
rows = []
tr = Trainer(model, tok, {"arithmetic": pools["arithmetic"]}, seed=a.seed, progress=False, on_metrics=rows.append)
t0 = time.perf_counter()
K = cfg.core.iters
stages = []
if a.easy:
    stages.append(Stage("easy", a.easy, {"arithmetic": 1.0}, lr=a.lr, warmup=30, think_iters_min=K, think_iters_max=K,
                        router_cost=a.cost, filters={"arithmetic": {"max_steps": 2}}, batch_size=a.batch, frozen=["router"] if a.frozen_router else [], intermediate=a.intermediate))
stages.append(Stage("math", a.steps - a.easy, {"arithmetic": 1.0}, lr=a.lr, warmup=30, think_iters_min=K,
                    think_iters_max=K, router_cost=a.cost, batch_size=a.batch, frozen=["router"] if a.frozen_router else [], intermediate=a.intermediate))
for i, s in enumerate(stages):
    tr.run_stage(s, i)
train_s = time.perf_counter() - t0
test = arith.split("test")[: a.n_eval]
on = evaluate_qa(model, test, tok, max_new_tokens=6, group_by="steps", progress=False, batch_size=128)
off = evaluate_qa(model, test, tok, max_new_tokens=6, group_by="steps", think_iters=0, progress=False, batch_size=128)
print(json.dumps({"train_s": round(train_s, 1), "s_per_step": round(train_s / a.steps, 3), "acc": on.accuracy,
                  "off": off.accuracy, "by": on.by["steps"], "think": on.think_iters_per_token,
                  "last_loss": rows[-1].get("loss") if rows else None, "args": vars(a)}), flush=True)
