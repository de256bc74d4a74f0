"""Probe: facts-bank through the project's Trainer (bank of the batch's people + distractors).

    python experiments/demo_v2/facts.py --steps 400 --model '{...}'
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
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--model", default="{}")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--n-eval", type=int, default=600)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(a.threads)
random.seed(a.seed); torch.manual_seed(a.seed)
fb = get_task("facts-bank", seed=a.seed)
pools = {"facts-bank": fb.split("train")}
tok = build_tokenizer(TokenizerConfig("bpe", 2048), pools)
base = {"core": {"mixer": "gru", "n_layers": 2, "iters": 1}, "n_prelude": 1, "product_keys": {"enabled": False},
        "bank": {"read": "softmax", "heads": 1}, "reader": {"query_ema": 8, "query_state": False}}
over = json.loads(a.model)
for k, v in over.items():
    base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
cfg = preset("tiny", base).replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
model = RMT(cfg)
rows = []
tr = Trainer(model, tok, pools, seed=a.seed, progress=False, on_metrics=rows.append,
             bank_sources={"facts-bank": fb.bank_source("train", tok)})
t0 = time.perf_counter()
tr.run_stage(Stage("facts", a.steps, {"facts-bank": 1.0}, lr=a.lr, warmup=30, think_iters_min=1, think_iters_max=1,
                   router_cost=0.0), 0)
train_s = time.perf_counter() - t0
for r in rows[::4]:
    print(r["step"], round(r["loss"], 3), round(r.get("retrieval", 0), 3))
test = fb.split("test")[: a.n_eval]
src = fb.bank_source("test", tok)
on = evaluate_qa(model, test, tok, max_new_tokens=6, bank_source=src, batch_size=128)
off = evaluate_qa(model, test, tok, max_new_tokens=6, bank_source=src, memory=False, batch_size=128)
print(json.dumps({"train_s": round(train_s, 1), "s_per_step": round(train_s / a.steps, 3), "em": on.accuracy,
                  "off": off.accuracy, "preds": on.predictions[:5], "args": vars(a)}), flush=True)
