"""A plain GRU language model baseline: embedding -> stacked GRU -> tied head, nothing else.

The recurrent peer of RMT: a state carried from token to token (what RMT's thinking core also does) without
memory, router or bank. Same interface as `GPT` (forward with a cache, greedy `generate`), so the baselines'
`train_gpt` / `evaluate_gpt` train and score it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmt.model.config import ConfigError


@dataclass
class GRUConfig:
    vocab_size: int = 257
    pad_id: int = 256
    n_layer: int = 2
    d_model: int = 256
    max_len: int = 16384  # the longest context it is asked to read (no position table: for the trainer's cut)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"GRUConfig.{name}: expected a positive integer, got {getattr(self, name)!r}")


class GRULM(nn.Module):
    def __init__(self, config: GRUConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.rnn = nn.GRU(c.d_model, c.d_model, num_layers=c.n_layer, batch_first=True)
        self.norm = nn.LayerNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, cache: Tensor | None = None, start: int = 0,
                logits_at: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """idx (B, T) -> logits (B, T, V) and the state (n_layer, B, D) after the last token (pass it back to
        continue; `start` is accepted for the GPT interface and unused: a GRU needs no positions).
        logits_at: (B, T) bool, the positions to predict; the logits are then (N, V), as in `GPT.forward`."""
        y, state = self.rnn(self.embed(idx), cache)
        if logits_at is not None:
            y = y[logits_at]
        return self.norm(y) @ self.embed.weight.T, state

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, eos_id: int | None = None) -> Tensor:
        """Greedy continuation of equal-length prompts (B, T) -> generated ids (B, n)."""
        logits, state = self(idx)
        out = []
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.config.pad_id), nxt)
            out.append(nxt)
            if eos_id is not None:
                done |= nxt == eos_id
            if bool(done.all()):
                break
            logits, state = self(nxt[:, None], state)
        return torch.stack(out, 1) if out else idx.new_zeros(idx.shape[0], 0)


def matching_gru(n_params: int, vocab_size: int, pad_id: int, n_layer: int = 2, max_len: int = 16384) -> GRUConfig:
    """The GRUConfig (width a multiple of 16) whose parameter count is closest to n_params."""
    def count(d: int) -> int:
        with torch.device("meta"):
            return GRULM(GRUConfig(vocab_size, pad_id, n_layer, d, max_len)).num_params()

    d = min(range(16, 2049, 16), key=lambda w: abs(count(w) - n_params))
    return GRUConfig(vocab_size, pad_id, n_layer, d, max_len)
