"""The chain-of-thought baseline: a GPT of RMT's size that writes its working before the answer.

Math examples are trained on their step-by-step target (``" 7 + 5 = 12. 12 * 2 = 24. #### 24"``), knowledge
examples on the direct answer, with the same task mixes, batch sizes and learning-rate schedules as RMT's
curriculum (`Stage`; RMT-only fields such as think_iters or router_cost are ignored). Evaluation reads the
final answer after ``####`` the way lm-evaluation-harness's GSM8K strict filter does, and counts every
generated token, working included: that count is what RMT's direct answers are compared with.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rmt.baselines.gpt import GPT, GPTConfig
from rmt.evaluation.evaluate import QAResult, accuracy_by, decode_answer, length_batches
from rmt.tasks import Example
from rmt.tasks.scoring import GSM8K_STRICT, INVALID, exact_match, regex_extract
from rmt.tokenizer import Tokenizer
from rmt.training.batches import TaskMix, filter_examples
from rmt.training.curriculum import Stage
from rmt.training.trainer import NonFiniteLoss, lr_at


def matching_config(n_params: int, d_model: int = 128, n_head: int = 4, max_len: int = 1024,
                    tolerance: float = 0.10, vocab_size: int = 257, pad_id: int = 256) -> GPTConfig:
    """The GPT config whose parameter count is closest to n_params: depth at the given width first, then
    other widths (multiples of 16) if no depth lands within `tolerance`."""
    vocab = dict(vocab_size=vocab_size, pad_id=pad_id)

    def count(d: int, layers: int) -> int:
        with torch.device("meta"):
            return GPT(GPTConfig(n_layer=layers, n_head=n_head, d_model=d, max_len=max_len, **vocab)).num_params()

    best: tuple[float, GPTConfig] | None = None
    for d in [d_model] + [w for w in range(16, 1025, 16) if w != d_model]:
        # The count is affine in depth: embeddings and final norm, plus one layer's worth per layer.
        one = count(d, 1)
        per_layer = count(d, 2) - one
        layers = max(1, round((n_params - (one - per_layer)) / per_layer))
        for n in {max(1, layers - 1), layers, layers + 1}:
            rel = abs(one + (n - 1) * per_layer - n_params) / n_params
            if best is None or rel < best[0]:
                best = (rel, GPTConfig(n_layer=n, n_head=n_head, d_model=d, max_len=max_len, **vocab))
        if best[0] <= tolerance:
            return best[1]
    raise ValueError(f"no GPT within {tolerance:.0%} of {n_params:,} parameters (closest {best[0]:.1%} off)")


def train_gpt(model: GPT, tok: Tokenizer, pools: dict[str, list[Example]], stages: list[Stage], *, seed: int = 0,
              progress: bool = True, on_metrics: Callable[[dict], None] | None = None, log_every: int = 25,
              cot: bool = True) -> float:
    """Train through `stages` on chain-of-thought targets (where an example has one; `cot=False`: the direct
    answers) -> training seconds. Any model with GPT's interface (`GRULM` too)."""
    device = next(model.parameters()).device
    seconds, global_step = 0.0, 0
    for si, stage in enumerate(stages):
        model.train()
        stage_pools = {n: filter_examples(pools[n], stage.filters[n]) if n in stage.filters else pools[n]
                       for n in stage.tasks}
        mix = TaskMix(stage_pools, stage.tasks, tok, seed=seed * 1000 + si, cot=cot, max_len=model.config.max_len - 1,
                      intermediate=stage.intermediate)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": stage.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=stage.lr, betas=(0.9, 0.95))
        acc: dict[str, list[float]] = defaultdict(list)
        for step in tqdm(range(stage.steps), desc=f"gpt {stage.name}", disable=not progress, unit="step"):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, stage)
            x, y, names = mix.batch(stage.batch_size)
            x, y = x.to(device), y.to(device)
            scored = y != -100  # logits only where there are targets, as RMT's trainer does
            logits, _ = model(x, logits_at=scored)
            loss = F.cross_entropy(logits.float(), y[scored])
            if not math.isfinite(loss.item()):
                raise NonFiniteLoss(f"GPT baseline, stage {stage.name!r} step {step}: loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seconds += time.perf_counter() - t0
            global_step += 1
            acc[f"loss/{names[0]}"].append(loss.item())
            if on_metrics and (global_step % log_every == 0 or step + 1 == stage.steps):
                on_metrics({"model": "gpt", "step": global_step, "stage": stage.name, "elapsed_s": seconds,
                            **{k: sum(v) / len(v) for k, v in acc.items()}})
                acc.clear()
    return seconds


def final_answer(generation: str, has_cot: bool) -> str:
    """The answer a generation commits to: after '#### ' for chain-of-thought, else the first line."""
    if has_cot:
        found = regex_extract(generation, GSM8K_STRICT)
        return "" if found == INVALID else found
    return generation.split("\n", 1)[0]


@torch.no_grad()
def evaluate_gpt(model: GPT, examples: list[Example], tok: Tokenizer, *, max_new_tokens: int = 16,
                 batch_size: int = 64, group_by: str | None = None, progress: bool = False,
                 desc: str = "gpt eval", cot: bool = True) -> QAResult:
    """Greedy answers scored on their final answer: after '####' where the example has a chain of thought and
    the model was trained to write one (`cot`), else the first line."""
    model.eval()
    device = next(model.parameters()).device
    encoded = [tok.encode(ex.prompt) for ex in examples]
    preds, n_tokens = [""] * len(examples), [0] * len(examples)
    for rows in tqdm(length_batches(encoded, batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
        room = min(max_new_tokens, model.config.max_len - idx.shape[1])
        out = model.generate(idx, room, eos_id=tok.eos_id)
        for r, i in enumerate(rows):
            preds[i], n_tokens[i] = decode_answer(out[r].tolist(), tok)
    correct = [exact_match(final_answer(p, cot and ex.cot is not None), (ex.target,) + tuple(ex.aliases))
               for p, ex in zip(preds, examples)]
    by = {group_by: accuracy_by(examples, correct, group_by)} if group_by else {}
    n = max(len(examples), 1)
    return QAResult(accuracy=sum(correct) / n, n=len(examples), tokens_per_answer=sum(n_tokens) / n,
                    think_iters_per_token=0.0, by=by, predictions=preds)
