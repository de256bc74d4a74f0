"""Evaluation: greedy answers to QA prompts, exact match, and what the answer cost.

Prompts are grouped by length so every batch is prefilled in parallel (chunked scans) and then decoded
token by token with the constant-size cache — the same path a user's `generate` takes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from rmt.model import RMT
from rmt.tasks import Example
from rmt.tasks.scoring import exact_match
from rmt.tokenizer import Tokenizer


@dataclass
class QAResult:
    accuracy: float
    n: int
    tokens_per_answer: float  # generated tokens, end-of-answer marker included
    think_iters_per_token: float  # mean thinking iterations over prompt and generated tokens
    by: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. {"steps": {"1": 0.9, ...}}
    predictions: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_qa(model: RMT, examples: list[Example], tok: Tokenizer, *, batch_size: int = 64,
                max_new_tokens: int = 16, group_by: str | None = None, progress: bool = False,
                desc: str = "eval", **forward_kwargs) -> QAResult:
    """Greedy-decode an answer for every example; score exact match against target (and aliases).

    forward_kwargs go to `RMT.generate` (think_iters, memory, router, exit_rule, explicit_bank).
    """
    model.eval()
    encoded = [tok.encode(ex.prompt) for ex in examples]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    batches = [idxs[j:j + batch_size] for _, idxs in sorted(by_len.items()) for j in range(0, len(idxs), batch_size)]
    preds: list[str] = [""] * len(examples)
    n_tokens = [0] * len(examples)
    iters_sum, iters_n = 0.0, 0
    for rows in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=next(model.parameters()).device)
        res = model.generate(idx, max_new_tokens, eos_id=tok.eos_id, **forward_kwargs)
        prompt_iters = res.prompt_think_iters
        # Thinking per token over the tokens each row actually read: its prompt and the steps it decoded
        # (a step reads the previous generated token; rows that ended do not step).
        fed = res.tokens[:, : res.think_iters.shape[1]]
        stepped = (fed != tok.pad_id) & (fed != tok.eos_id)
        iters_sum += float(prompt_iters.sum()) + float(res.think_iters[stepped].sum())
        iters_n += prompt_iters.numel() + int(stepped.sum())
        for r, i in enumerate(rows):
            ids = res.tokens[r].tolist()
            if tok.eos_id in ids:
                ids = ids[:ids.index(tok.eos_id) + 1]
            ids = [t for t in ids if t != tok.pad_id]
            n_tokens[i] = len(ids)
            preds[i] = tok.decode([t for t in ids if t != tok.eos_id])
    correct = [exact_match(p, (ex.target,) + tuple(ex.aliases)) for p, ex in zip(preds, examples)]
    by: dict[str, dict[str, float]] = {}
    if group_by:
        groups: dict[str, list[bool]] = defaultdict(list)
        for ex, c in zip(examples, correct):
            groups[str(ex.meta.get(group_by))].append(c)
        by[group_by] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    n = len(examples)
    return QAResult(accuracy=sum(correct) / max(n, 1), n=n, tokens_per_answer=sum(n_tokens) / max(n, 1),
                    think_iters_per_token=iters_sum / max(iters_n, 1), by=by, predictions=preds)
