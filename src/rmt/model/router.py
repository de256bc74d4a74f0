"""The learned router: per token, a distribution over {memory, think, both}.

The three probabilities become two soft gates that scale the two branches,

    w_memory = p(memory) + p(both)        w_think = p(think) + p(both),

so "both" is the branch that pays for thinking and also trusts memory. The router is trained end to end
through these gates plus a compute cost (the expected number of thinking iterations), so it learns to
send a token past the core when the memory read alone predicts it well. At inference a token whose
w_think is below the threshold is hard-skipped: the core never runs for it (see ``thinking.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

BRANCHES = ("memory", "think", "both")
FORCED = {"memory": (1.0, 0.0), "think": (0.0, 1.0), "both": (1.0, 1.0)}


@dataclass
class Routing:
    probs: Tensor  # (B, T, 3) over BRANCHES; for a forced router, the one-hot of the forced branch
    w_memory: Tensor  # (B, T)
    w_think: Tensor  # (B, T) soft gate in training; zeroed below the threshold when hard
    think_mask: Tensor  # (B, T) bool: tokens that run the core at all


class Router(nn.Module):
    def __init__(self, d_model: int, threshold: float = 0.5, init_think: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(d_model, len(BRANCHES))
        self.threshold = threshold
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():  # start by thinking everywhere; the compute cost teaches where to stop
            self.proj.bias.copy_(torch.tensor([0.0, init_think, init_think]))

    def forward(self, h: Tensor, mode: str = "learned", hard: bool = False) -> Routing:
        """h (B, T, D) -> Routing. mode: "learned" or one of BRANCHES (router forced, an ablation switch).

        hard=True (inference) skips the core for tokens with w_think < threshold; training keeps the soft
        gates so that every token's choice receives a gradient.
        """
        if mode == "learned":
            probs = torch.softmax(self.proj(h).float(), dim=-1)
            w_memory = probs[..., 0] + probs[..., 2]
            w_think = probs[..., 1] + probs[..., 2]
            if hard:
                mask = w_think >= self.threshold
                w_think = torch.where(mask, w_think, torch.zeros_like(w_think))
            else:
                mask = torch.ones_like(w_think, dtype=torch.bool)
            return Routing(probs, w_memory.to(h.dtype), w_think.to(h.dtype), mask)
        if mode not in FORCED:
            raise ValueError(f"router mode must be 'learned' or one of {BRANCHES}, got {mode!r}")
        wm, wt = FORCED[mode]
        shape = h.shape[:-1]
        probs = torch.zeros(*shape, 3, device=h.device)
        probs[..., BRANCHES.index(mode)] = 1.0
        return Routing(probs, h.new_full(shape, wm), h.new_full(shape, wt),
                       torch.full(shape, wt > 0, dtype=torch.bool, device=h.device))
