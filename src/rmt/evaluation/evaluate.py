"""Evaluation: greedy answers to QA prompts, exact match, and what the answer cost.

Prompts are grouped by length so every batch is prefilled in parallel (chunked scans) and then decoded
token by token with the constant-size cache — the same path a user's `generate` takes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

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


def length_batches(encoded: list[list[int]], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of equal prompt length (so a batch prefills without padding)."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    return [idxs[j:j + batch_size] for _, idxs in sorted(by_len.items()) for j in range(0, len(idxs), batch_size)]


def decode_answer(ids: list[int], tok: Tokenizer) -> tuple[str, int]:
    """Generated ids of one row -> (text before the end-of-answer marker, tokens generated incl. the marker)."""
    if tok.eos_id in ids:
        ids = ids[:ids.index(tok.eos_id) + 1]
    ids = [t for t in ids if t != tok.pad_id]
    return tok.decode([t for t in ids if t != tok.eos_id]), len(ids)


def accuracy_by(examples: list[Example], correct: list[bool], key: str) -> dict[str, float]:
    """Accuracy per value of ex.meta[key], e.g. {"1": 0.9, "2": 0.7} for key "steps"."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, c in zip(examples, correct):
        groups[str(ex.meta.get(key))].append(c)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items(), key=lambda kv: _natural(kv[0]))}


def _natural(k: str) -> tuple:
    return (0, int(k), "") if k.lstrip("-").isdigit() else (1, 0, k)


@torch.no_grad()
def evaluate_qa(model: RMT, examples: list[Example], tok: Tokenizer, *, batch_size: int = 64,
                max_new_tokens: int = 16, group_by: str | None = None, progress: bool = False,
                desc: str = "eval", bank_source: Callable[[list[Example]], Any] | None = None,
                **forward_kwargs) -> QAResult:
    """Greedy-decode an answer for every example; score exact match against target (and aliases).

    bank_source: examples -> `BankSource` (`Task.bank_source`): each batch reads the bank built from its rows
    (a visual task's images, the facts of a `facts-bank` batch); not built with memory=False.
    forward_kwargs go to `RMT.generate` (think_iters, memory, router, exit_rule, explicit_bank).
    """
    model.eval()
    encoded = [tok.encode(ex.prompt) for ex in examples]
    preds: list[str] = [""] * len(examples)
    n_tokens = [0] * len(examples)
    iters_sum, iters_n = 0.0, 0
    for rows in tqdm(length_batches(encoded, batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=next(model.parameters()).device)
        kw = dict(forward_kwargs)
        if bank_source is not None and kw.get("memory", True):
            kw["explicit_bank"], _ = bank_source([examples[i] for i in rows]).to(idx.device).build(model)
        res = model.generate(idx, max_new_tokens, eos_id=tok.eos_id, **kw)
        prompt_iters = res.prompt_think_iters
        # Thinking per token over the tokens each row actually read: its prompt and the steps it decoded
        # (a step reads the previous generated token; rows that ended do not step).
        fed = res.tokens[:, : res.think_iters.shape[1]]
        stepped = (fed != tok.pad_id) & (fed != tok.eos_id)
        iters_sum += float(prompt_iters.sum()) + float(res.think_iters[stepped].sum())
        iters_n += prompt_iters.numel() + int(stepped.sum())
        for r, i in enumerate(rows):
            preds[i], n_tokens[i] = decode_answer(res.tokens[r].tolist(), tok)
    correct = [exact_match(p, (ex.target,) + tuple(ex.aliases)) for p, ex in zip(preds, examples)]
    by = {group_by: accuracy_by(examples, correct, group_by)} if group_by else {}
    n = len(examples)
    return QAResult(accuracy=sum(correct) / max(n, 1), n=n, tokens_per_answer=sum(n_tokens) / max(n, 1),
                    think_iters_per_token=iters_sum / max(iters_n, 1), by=by, predictions=preds)
