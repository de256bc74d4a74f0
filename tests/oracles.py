"""Test oracles: the slow, obviously correct versions that the library's fast paths are checked against.

(The selective scan's sequential reference, `rmt.model.scan.scan_reference`, is part of the library's API and
stays there, next to the chunked scan, as mamba keeps ``ssd_minimal`` beside its kernels.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rmt.model.memory.bank import feature_map
from rmt.model.memory.product_key import ProductKeyMemory


def product_key_bruteforce(mem: ProductKeyMemory, q: Tensor) -> tuple[Tensor, Tensor]:
    """`ProductKeyMemory.lookup` by scoring every one of the ``n_keys ** 2`` full keys.

    q (M, heads, d_key) -> scores, indices (M, heads, topk) each."""
    n, h = mem.n_keys, mem.heads
    k1 = mem.keys[:, 0].unsqueeze(2).expand(h, n, n, mem.half)  # row i -> sub-key 1 [i]
    k2 = mem.keys[:, 1].unsqueeze(1).expand(h, n, n, mem.half)  # col j -> sub-key 2 [j]
    full = torch.cat([k1, k2], dim=-1).reshape(h, n * n, mem.d_key)  # slot i*n + j
    all_scores = torch.einsum("mhd,hsd->mhs", q.to(full.dtype), full)
    return all_scores.topk(mem.topk, dim=-1)


def linear_attention_reference(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """The `ExplicitMemoryBank.read` computed the slow way.

    For each query it forms the explicit weights ``a_i = phi(q) . phi(k_i)`` over all entries and
    returns ``sum_i a_i v_i / (sum_i a_i + eps)``: O(M) work per query.

    Args:
        queries: (B, T, d_key); keys: (B, M, d_key); values: (B, M, d_value);
        mask: optional (B, M) bool, True = entry present.
    Returns:
        (B, T, d_value) in at least float32; zero for batch elements with no (unmasked) entries.
    """
    acc = torch.promote_types(queries.dtype, torch.float32)
    a = torch.einsum("btk,bmk->btm", feature_map(queries.to(acc)), feature_map(keys.to(acc)))
    if mask is not None:
        a = a * mask.to(a.dtype).unsqueeze(1)
        present = mask.any(dim=1)
    else:
        present = torch.full((keys.shape[0],), keys.shape[1] > 0, device=keys.device)
    out = torch.einsum("btm,bmv->btv", a, values.to(acc)) / (a.sum(-1, keepdim=True) + eps)
    return out * present.to(out.dtype).view(-1, 1, 1)



def softmax_attention_reference(queries: Tensor, keys: Tensor, values: Tensor, heads: int,
                                mask: Tensor | None = None) -> Tensor:
    """`SoftmaxMemoryBank.read` the slow way: a Python loop over batch rows, heads and
    queries, each an explicit softmax over the present entries. (B, T, dk), (B, M, dk), (B, M, dv) -> (B, T, dv)."""
    b, t, dk = queries.shape
    dv = values.shape[-1]
    out = torch.zeros(b, t, dv, dtype=torch.float64)
    for i in range(b):
        present = torch.ones(keys.shape[1], dtype=torch.bool) if mask is None else mask[i].bool()
        if not present.any():
            continue
        for hd in range(heads):
            ks = keys[i, present, hd * dk // heads:(hd + 1) * dk // heads].double()
            vs = values[i, present, hd * dv // heads:(hd + 1) * dv // heads].double()
            for j in range(t):
                qv = queries[i, j, hd * dk // heads:(hd + 1) * dk // heads].double()
                w = torch.softmax(ks @ qv / math.sqrt(dk // heads), dim=0)
                out[i, j, hd * dv // heads:(hd + 1) * dv // heads] = w @ vs
    return out

