"""A GPT-style transformer baseline: causal self-attention with a KV cache (nanoGPT's shape, written anew).

It is the side-by-side reference for RMT: quadratic attention in training, a KV cache that grows with the
context in generation. The same byte vocabulary and the same `Output`-like interface (logits) as RMT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmt.model.config import ConfigError


@dataclass
class GPTConfig:
    vocab_size: int = 257
    pad_id: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    max_len: int = 16384  # positions the learned position table covers

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"GPTConfig.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_head:
            raise ConfigError(f"GPTConfig.n_head: must divide d_model={self.d_model}, got {self.n_head}")


KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys and values (B, H, T, Dh), growing with the context


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head = c.n_head
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.out = nn.Linear(c.d_model, c.d_model, bias=False)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in self.qkv(x).split(d, -1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        # A single new query attends to every cached key; a full sequence uses the causal mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class Layer(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(c.d_model), Attention(c)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(), nn.Linear(4 * c.d_model, c.d_model))

    def forward(self, x: Tensor, cache=None):
        a, cache = self.attn(self.ln1(x), cache)
        x = x + a
        return x + self.mlp(self.ln2(x)), cache


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.n_layer)])
        self.norm = nn.LayerNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, cache: KVCache | None = None, start: int = 0,
                logits_at: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """idx (B, T) -> logits (B, T, V) and the KV cache (pass it back with start = tokens already read).

        logits_at: (B, T) bool, the positions to predict (training: where there are targets); the logits are
        then (N, V) for those N positions in row-major order, as `RMT.forward` does: the head over the
        vocabulary is the costliest layer at this size, and a fact question scores ~1% of its positions."""
        t = idx.shape[1]
        if start + t > self.config.max_len:
            raise ValueError(f"context of {start + t} tokens exceeds GPTConfig.max_len={self.config.max_len}")
        x = self.embed(idx) + self.pos(torch.arange(start, start + t, device=idx.device))
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, None if cache is None else cache[i])
            new_cache.append(kv)
        if logits_at is not None:
            x = x[logits_at]
        return self.norm(x) @ self.embed.weight.T, new_cache

    @staticmethod
    def cache_bytes(cache: KVCache) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, eos_id: int | None = None) -> Tensor:
        """Greedy continuation of equal-length prompts (B, T) -> generated ids (B, n)."""
        logits, cache = self(idx)
        pos, out = idx.shape[1], []
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.config.pad_id), nxt)
            out.append(nxt)
            if eos_id is not None:
                done |= nxt == eos_id
            if bool(done.all()):
                break
            logits, cache = self(nxt[:, None], cache, pos)
            pos += 1
        return torch.stack(out, 1) if out else idx.new_zeros(idx.shape[0], 0)
