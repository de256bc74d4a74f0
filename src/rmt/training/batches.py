"""Batches from a weighted mix of tasks: token ids, and targets that score only what should be learned.

For a "qa" example only the answer (and the end-of-sample newline) is a target — the question is given,
not predicted; for "text" every token is. Rows are right-padded: the model is causal, so padding after a
sequence cannot change what comes before it. A task whose examples come with inputs for the model's explicit
memory bank (`Task.bank_source`, e.g. an image per question) gives the mix its source maker, and its batches
carry the `BankSource` of their rows, which the trainer passes to the model as it is.
"""

from __future__ import annotations

import random

from typing import Any, Callable

import torch
from torch import Tensor

from rmt.tasks import Example
from rmt.tokenizer import Tokenizer


def filter_examples(examples: list[Example], flt: dict[str, int]) -> list[Example]:
    lo, hi = flt.get("min_steps", 0), flt.get("max_steps", 10**9)
    kept = [ex for ex in examples if lo <= ex.meta.get("steps", lo) <= hi]
    if not kept:
        raise ValueError(f"filter {flt} keeps no example")
    return kept


def encode_example(ex: Example, tok: Tokenizer, cot: bool = False) -> tuple[list[int], int]:
    """-> (ids, index of the first target token)."""
    if ex.kind == "text":
        return tok.encode(ex.text(cot)), 0
    prompt = tok.encode(ex.prompt)
    return prompt + tok.encode(ex.text(cot)[len(ex.prompt):]), len(prompt)


def intermediate_targets(ex: Example, tok: Tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """`ex.intermediate` as (input position, target token id) pairs in the row `ids` (as `collate` shifts it):
    the position of the last token of prompt[:n] predicts the first token of the text.

    Raises ValueError when prompt[:n] does not end on a token boundary of the encoded prompt (the target would
    then sit where the model has read only part of a word)."""
    marks = []
    for n, text in ex.intermediate:
        head = tok.encode(ex.prompt[:n])
        if not head or ids[:len(head)] != head:
            raise ValueError(f"intermediate target at character {n} of {ex.prompt!r}: the prefix is not a whole "
                             "number of the prompt's tokens")
        marks.append((len(head) - 1, tok.encode(text)[0]))
    return marks


def collate(encoded: list[tuple[list[int], int]], pad_id: int,
            marks: list[list[tuple[int, int]]] | None = None) -> tuple[Tensor, Tensor]:
    """[(ids, first_target)] -> inputs (B, T), targets (B, T) with -100 where nothing is scored. `marks[i]` adds
    (position, token id) targets inside row i's prompt (`intermediate_targets`)."""
    T = max(len(ids) for ids, _ in encoded) - 1
    x = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    y = torch.full((len(encoded), T), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(encoded):
        ids_t = torch.tensor(ids, dtype=torch.long)
        n = len(ids) - 1
        x[i, :n] = ids_t[:-1]
        first = max(start - 1, 0)  # position t predicts token t + 1
        y[i, first:n] = ids_t[first + 1:]
        for pos, target in (marks[i] if marks else ()):
            if pos < n:
                y[i, pos] = target
    return x, y


class TaskMix:
    """Samples batches from several tasks' training examples with fixed weights, reproducibly from a seed."""

    def __init__(self, pools: dict[str, list[Example]], weights: dict[str, float], tokenizer: Tokenizer,
                 seed: int, cot: bool = False, max_len: int = 0, intermediate: bool = False,
                 bank_sources: dict[str, Callable[[list[Example]], Any]] | None = None):
        missing = sorted(set(weights) - set(pools))
        if missing:
            raise ValueError(f"task mix names unknown task(s) {missing}; available: {sorted(pools)}")
        self.names = list(weights)
        self.weights = [weights[n] for n in self.names]
        self.pools, self.tok, self.cot, self.max_len = pools, tokenizer, cot, max_len
        self.intermediate = intermediate  # also score the examples' intermediate targets
        self.bank_sources = bank_sources or {}  # task name -> examples -> BankSource (`Task.bank_source`)
        self.rng = random.Random(seed)

    def batch(self, size: int) -> tuple[Tensor, Tensor, list[str]]:
        """-> inputs, targets, and the task name of every row (for per-task losses).

        One task per batch, drawn by weight: tasks differ a lot in length (a fact is ~40 bytes, a 4-step
        problem ~140), and a mixed batch would pad every short row to the longest.
        """
        x, y, names, _ = self.batch_with_bank(size)
        return x, y, names

    def batch_with_bank(self, size: int) -> tuple[Tensor, Tensor, list[str], Any]:
        """As `batch`, plus the rows' `BankSource` when the drawn task has one, else None. (One task per batch,
        so either every row has bank inputs or none has.)"""
        name = self.rng.choices(self.names, weights=self.weights, k=1)[0]
        names = [name] * size
        examples = [self.rng.choice(self.pools[name]) for _ in range(size)]
        encoded = [encode_example(ex, self.tok, self.cot) for ex in examples]
        if self.max_len:  # inputs and targets are the row shifted by one, so keep max_len + 1 ids
            encoded = [(ids[: self.max_len + 1], start) for ids, start in encoded]
        marks = ([intermediate_targets(ex, self.tok, ids) for ex, (ids, _) in zip(examples, encoded)]
                 if self.intermediate else None)
        x, y = collate(encoded, self.tok.pad_id, marks)
        source = self.bank_sources[name](examples) if name in self.bank_sources else None
        return x, y, names, source

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        st = state["rng"]
        self.rng.setstate((st[0], tuple(st[1]), st[2]))
