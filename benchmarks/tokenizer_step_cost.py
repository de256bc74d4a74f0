"""Cost of one training step with byte tokens and with a BPE learned from the task text (reported, never asserted).

    python benchmarks/tokenizer_step_cost.py [--threads 2] [--steps 12] [--bpe-vocab 2048]

The demo's model (the tiny preset, K = 4, trained with K = 2), batch 64 of `arithmetic` word problems, AdamW;
the first two steps are warm-up. Prints the vocabulary, the padded batch length T, and the mean wall time of
drawing a batch and of one optimizer step.
"""

from __future__ import annotations

import argparse
import time

import torch

from rmt.model import RMT, loss_fn
from rmt.model.presets import preset
from rmt.tasks import get_task
from rmt.tokenizer import TokenizerConfig
from rmt.training.batches import TaskMix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--bpe-vocab", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pools = {"arithmetic": get_task("arithmetic", n_train=20000, seed=args.seed).split("train")}
    for kind in ("byte", "bpe"):
        t0 = time.perf_counter()
        tok = TokenizerConfig(kind, args.bpe_vocab).build(ex.text() for ex in pools["arithmetic"])
        built = time.perf_counter() - t0
        model = RMT(preset("tiny", {"core": {"iters": 4}}).replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id))
        mix = TaskMix(pools, {"arithmetic": 1.0}, tok, seed=args.seed)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        t_batch = t_step = 0.0
        for i in range(args.steps):
            t0 = time.perf_counter()
            x, y, _ = mix.batch(64)
            t1 = time.perf_counter()
            loss, _ = loss_fn(model(x, think_iters=2, bptt=2), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                t_batch += t1 - t0
                t_step += time.perf_counter() - t1
        n = args.steps - 2
        print(f"{kind:4s} vocab {tok.vocab_size:5d}  T {x.shape[1]:4d}  tokenizer built in {built:.1f} s  "
              f"batch {t_batch / n * 1e3:6.1f} ms  step {t_step / n * 1e3:6.0f} ms")


if __name__ == "__main__":
    main()
