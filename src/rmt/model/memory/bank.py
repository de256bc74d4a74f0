"""The explicit memory bank: entries written at run time (encoded facts, documents, image patches), read by
attention, with no weight changed.

Two kinds satisfy one protocol, `WritableBank` (``write``, ``read``, ``clear``, ``num_entries``, ``state_bytes``);
a read-only bank built offline (FAISS) satisfies `Bank`, the part a read needs:

* :class:`ExplicitMemoryBank` -- normalised linear attention over a fixed-size state (R1): a read costs the same
  however many entries were written, so it scales to banks of any size (a FAISS index for banks beyond RAM:
  ``rmt.integrations.faiss_bank``).
* :class:`SoftmaxMemoryBank` -- exact multi-head softmax attention over the stored entries: O(entries) per
  query, sharp enough to pick one object out of an image's patches.

A bank holds no parameters: :class:`ExplicitMemoryRead` owns the projections from the model's width to keys,
values and queries and back. Shapes: ``B`` batch, ``T`` queries, ``M`` entries.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class Bank(Protocol):
    """What the model reads: queries (B, T, d_key) -> (B, T, d_value). A read-only bank (the FAISS bank of
    `rmt.integrations.faiss_bank`, built offline) satisfies this much."""

    d_key: int
    d_value: int

    def read(self, queries: Tensor) -> Tensor: ...

    @property
    def num_entries(self) -> Tensor: ...

    def state_bytes(self) -> int: ...


@runtime_checkable
class WritableBank(Bank, Protocol):
    """A bank written at run time (both kinds here): keys (B, M, d_key), values (B, M, d_value), mask (B, M)."""

    def write(self, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> None: ...

    def clear(self) -> None: ...


def feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 (Katharopoulos et al., 2020), elementwise; same shape in and out.

    The features are strictly positive, so every similarity phi(q).phi(k) is positive and the
    normaliser phi(q).z is a positive sum -- the read is a proper weighted average of the written
    values, like softmax attention, without the exp that would stop the sum from factorising.
    """
    return F.elu(x) + 1.0


class ExplicitMemoryBank:
    """Run-time key/value store read by normalised, non-causal linear attention.

    Per batch element it keeps only the running sums

    * ``S``: (B, d_key, d_value) = sum_i phi(k_i) v_i^T
    * ``z``: (B, d_key) = sum_i phi(k_i)
    * ``count``: (B,) number of entries written,

    so memory and read cost are independent of the number of entries.  A read is
    ``phi(q) S / (phi(q) . z + eps)``: every query sees every entry (no causal order).

    The bank holds no parameters -- :class:`ExplicitMemoryRead` owns the projections.  It is used
    inside the forward pass, so it is purely functional: each :meth:`write` builds *new* state
    tensors (``S = S + ...``, never ``S += ...``), keeping the autograd graph back to the
    written keys and values intact.  Call :meth:`clear` between independent sequences.

    The state is accumulated in at least float32 (float64 inputs stay float64), whatever the
    input dtype, because it is a sum over an unbounded number of entries.
    """

    def __init__(self, d_key: int, d_value: int, eps: float = 1e-6) -> None:
        self.d_key = d_key
        self.d_value = d_value
        self.eps = eps
        self.clear()

    def clear(self) -> None:
        """Forget every entry (state back to empty; batch size is fixed again by the next write)."""
        self.S: Tensor | None = None
        self.z: Tensor | None = None
        self.count: Tensor | None = None
        # The same entries under the thinking core's own keys (`reader.core_keys`); None = it reads these.
        self.core_view: "ExplicitMemoryBank | None" = None

    @property
    def num_entries(self) -> Tensor:
        """(B,) int64 entries written per batch element; shape (0,) before the first write."""
        if self.count is None:
            return torch.zeros(0, dtype=torch.long)
        return self.count

    def state_bytes(self) -> int:
        """Bytes held by the state (S, z, count); independent of the number of entries."""
        state = (self.S, self.z, self.count)
        return sum(t.numel() * t.element_size() for t in state if t is not None)

    def write(self, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> None:
        """Append entries.  May be called repeatedly; entries accumulate.

        Args:
            keys: (B, M, d_key) entry keys (pre-feature-map; phi is applied here).
            values: (B, M, d_value) entry values.
            mask: optional (B, M) bool, True = write this entry.  Masked entries contribute
                nothing (not even NaNs they might contain).
        """
        b, m, dk = keys.shape
        if dk != self.d_key or values.shape != (b, m, self.d_value):
            raise ValueError(
                f"expected keys (B, M, {self.d_key}) and values (B, M, {self.d_value}), "
                f"got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        if self.S is not None and self.S.shape[0] != b:
            raise ValueError(
                f"bank holds batch size {self.S.shape[0]}, write has {b}; call clear() first"
            )
        acc = torch.promote_types(torch.promote_types(keys.dtype, values.dtype), torch.float32)
        phi_k = feature_map(keys.to(acc))
        v = values.to(acc)
        if mask is None:
            n_new = torch.full((b,), m, dtype=torch.long, device=keys.device)
        else:
            # torch.where rather than multiplying by the mask: 0 * NaN would still be NaN.
            keep = mask.to(torch.bool).unsqueeze(-1)
            phi_k = torch.where(keep, phi_k, torch.zeros((), device=phi_k.device))
            v = torch.where(keep, v, torch.zeros((), device=v.device))
            n_new = mask.to(torch.long).sum(dim=1)
        dS = torch.einsum("bmk,bmv->bkv", phi_k, v)
        dz = phi_k.sum(dim=1)
        if self.S is None:
            self.S, self.z, self.count = dS, dz, n_new
        else:
            # Out-of-place on purpose: the old tensors may be saved for backward.
            self.S = self.S + dS
            self.z = self.z + dz
            self.count = self.count + n_new

    def read(self, queries: Tensor) -> Tensor:
        """Linear-attention read.

        Args:
            queries: (B, T, d_key) (pre-feature-map).
        Returns:
            (B, T, d_value) in the queries' dtype; exactly zero for batch elements with no
            entries (and everywhere if nothing was written yet).
        """
        b, t, _ = queries.shape
        if self.S is None:
            return queries.new_zeros(b, t, self.d_value)
        phi_q = feature_map(queries.to(self.S.dtype))
        num = torch.einsum("btk,bkv->btv", phi_q, self.S)
        den = torch.einsum("btk,bk->bt", phi_q, self.z) + self.eps
        out = num / den.unsqueeze(-1)
        # With nothing written S = 0 so num is already 0; the explicit mask makes "zero when
        # empty" a guarantee rather than a numerical accident.
        out = out * (self.count > 0).to(out.dtype).view(b, 1, 1)
        return out.to(queries.dtype)


class SoftmaxMemoryBank:
    """Run-time key/value store read by multi-head softmax attention (exact, not linearised).

    The linear-attention :class:`ExplicitMemoryBank` keeps a fixed-size state, so a read costs the same for
    any number of entries -- but its weights ``phi(q).phi(k_i)`` are blunt: with 25-225 image patches it
    cannot put most of its weight on the few patches of one object. This bank keeps the entries themselves
    and reads them with ``softmax(q.k_i / sqrt(d_head))`` per head, which can be as sharp as the keys allow.
    The trade-off, on purpose and only for this bank: state and per-query cost grow linearly with the number
    of entries (O(M) per query), so it is meant for small, per-sample banks (an image's patches), not for the
    large banks the linear read is for.

    Shapes: keys (B, M, heads * d_head_key), values (B, M, heads * d_head_value), as :class:`ExplicitMemoryBank`
    with the head dimension flattened last. Writes append (out of place, so autograd sees every write).
    When ``record`` is True each read appends its attention weights (B, T, heads, M), detached, to
    ``recorded``, for inspection (e.g. which image patches a question looked at, read by read).
    """

    def __init__(self, d_key: int, d_value: int, heads: int = 1, sink: bool = False) -> None:
        if d_key % heads or d_value % heads:
            raise ValueError(f"d_key ({d_key}) and d_value ({d_value}) must be divisible by heads ({heads})")
        self.d_key, self.d_value, self.heads, self.sink = d_key, d_value, heads, sink
        self.record = False
        self.recorded: list[Tensor] = []
        self.clear()

    def clear(self) -> None:
        """Forget every entry."""
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.mask: Tensor | None = None
        # The same entries under the thinking core's own keys (`reader.core_keys`); None = it reads these.
        self.core_view: "SoftmaxMemoryBank | None" = None

    @property
    def num_entries(self) -> Tensor:
        """(B,) int64 entries written per batch element; shape (0,) before the first write."""
        if self.mask is None:
            return torch.zeros(0, dtype=torch.long)
        return self.mask.long().sum(1)

    def state_bytes(self) -> int:
        """Bytes held (keys, values, mask): grows with the number of entries."""
        state = (self.keys, self.values, self.mask)
        return sum(t.numel() * t.element_size() for t in state if t is not None)

    def write(self, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> None:
        """Append entries: keys (B, M, d_key), values (B, M, d_value), mask (B, M) bool (True = present)."""
        b, m, dk = keys.shape
        if dk != self.d_key or values.shape != (b, m, self.d_value):
            raise ValueError(f"expected keys (B, M, {self.d_key}) and values (B, M, {self.d_value}), "
                             f"got {tuple(keys.shape)} and {tuple(values.shape)}")
        if self.keys is not None and self.keys.shape[0] != b:
            raise ValueError(f"bank holds batch size {self.keys.shape[0]}, write has {b}; call clear() first")
        mask = torch.ones(b, m, dtype=torch.bool, device=keys.device) if mask is None else mask.to(torch.bool)
        # Masked entries may hold NaNs; zero them so they cannot leak through 0 * NaN in the weighted sum.
        keep = mask.unsqueeze(-1)
        keys = torch.where(keep, keys, torch.zeros((), device=keys.device, dtype=keys.dtype))
        values = torch.where(keep, values, torch.zeros((), device=values.device, dtype=values.dtype))
        if self.keys is None:
            self.keys, self.values, self.mask = keys, values, mask
        else:
            self.keys = torch.cat([self.keys, keys], 1)
            self.values = torch.cat([self.values, values], 1)
            self.mask = torch.cat([self.mask, mask], 1)

    def scores(self, queries: Tensor) -> Tensor:
        """queries (B, T, d_key) -> attention logits (B, H, T, M), -inf at absent entries (a bank written)."""
        b, t, _ = queries.shape
        h = self.heads
        q = queries.view(b, t, h, -1).transpose(1, 2)  # (B, H, T, dk)
        k = self.keys.to(queries.dtype).view(b, -1, h, self.d_key // h).transpose(1, 2)  # (B, H, M, dk)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_key // h)  # (B, H, T, M)
        return scores.masked_fill(~self.mask.view(b, 1, 1, -1), float("-inf"))

    def read(self, queries: Tensor) -> Tensor:
        """queries (B, T, d_key) -> (B, T, d_value); zero for batch elements with no entries."""
        b, t, _ = queries.shape
        if self.keys is None:
            return queries.new_zeros(b, t, self.d_value)
        weights = self.weights(queries)
        if self.record:
            self.recorded.append(weights.detach().permute(0, 2, 1, 3))  # (B, T, H, M)
        return self.apply_weights(weights)

    def weights(self, queries: Tensor) -> Tensor:
        """queries (B, T, d_key) -> the read's attention weights (B, H, T, M) (with a sink, summing to <= 1)."""
        return self.normalise(self.scores(queries), queries.dtype)

    def normalise(self, scores: Tensor, dtype: torch.dtype) -> Tensor:
        """Attention logits (B, H, T, M) -> weights (B, H, T, M): softmax over the entries (and the sink)."""
        if self.sink:
            # Softmax over the entries plus one implicit entry of score 0 and value 0 ("off by one"): the weights
            # no longer have to sum to 1, so how much a read returns says how many entries matched -- how much
            # of the picture is red, how many objects are squares -- which a plain average cannot say.
            scores = torch.cat([scores, scores.new_zeros(*scores.shape[:-1], 1)], dim=-1)
            return torch.softmax(scores.float(), dim=-1)[..., :-1].to(dtype)
        # A batch element with no entries has an all -inf row: softmax would give NaN, so it reads zero.
        return torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(dtype)

    def apply_weights(self, weights: Tensor) -> Tensor:
        """Weights (B, H, T, M) -> the weighted sum of the values, (B, T, d_value); zero for a batch element with
        no entries."""
        b, h, t, _ = weights.shape
        v = self.values.to(weights.dtype).view(b, -1, h, self.d_value // h).transpose(1, 2)  # (B, H, M, dv)
        out = (weights @ v).transpose(1, 2).reshape(b, t, self.d_value)
        return out * self.mask.any(1).to(out.dtype).view(b, 1, 1)



class ExplicitMemoryRead(nn.Module):
    """Projections between the model and a bank (either kind).

    Usage::

        bank = ExplicitMemoryBank(read.d_key, read.d_value)
        bank.write(*read.encode_entries(entries))   # entries: (B, M, d_model)
        y = read(x, bank)                           # x: (B, T, d_model) -> (B, T, d_model)

    Args:
        d_model: model width.
        d_key: key/query width of the bank (the state is d_key x d_value per batch element).
        d_value: value width of the bank (default ``d_model``).
    """

    def __init__(self, d_model: int, d_key: int = 64, d_value: int | None = None, heads: int = 1,
                 read: str = "linear", sink: bool = False) -> None:
        super().__init__()
        if read not in ("linear", "softmax"):
            raise ValueError(f"read: expected 'linear' or 'softmax', got {read!r}")
        if read == "linear" and heads != 1:
            raise ValueError(f"heads: the linear read has one head, got {heads} (use read='softmax' for several)")
        self.d_model = d_model
        self.d_key = d_key
        self.d_value = d_model if d_value is None else d_value
        self.heads, self.read, self.sink = heads, read, sink
        if sink and read != "softmax":
            raise ValueError("sink: only the softmax read has one (the linear read's weights are not normalised)")
        if self.d_key % heads or self.d_value % heads:
            raise ValueError(f"d_key ({d_key}) and d_value ({self.d_value}) must be divisible by heads ({heads})")
        # Bias-free: a shared bias on keys would shift every phi(k) alike and mostly blur the
        # weights; the output bias would be a constant added whether or not anything was read.
        self.query_proj = nn.Linear(d_model, d_key, bias=False)
        self.key_proj = nn.Linear(d_model, d_key, bias=False)
        self.value_proj = nn.Linear(d_model, self.d_value, bias=False)
        self.out_proj = nn.Linear(self.d_value, d_model, bias=False)

    def new_bank(self) -> Bank:
        """An empty bank with this module's key/value widths (and kind of read)."""
        if self.read == "softmax":
            return SoftmaxMemoryBank(self.d_key, self.d_value, self.heads, self.sink)
        return ExplicitMemoryBank(self.d_key, self.d_value)

    def encode_entries(self, entries: Tensor, key_entries: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Entry embeddings (B, M, d_model) -> (keys (B, M, d_key), values (B, M, d_value)); keys come from
        ``key_entries`` (same shape) when given, so what finds an entry can differ from what it returns."""
        return self.key_proj(entries if key_entries is None else key_entries), self.value_proj(entries)

    def forward(self, x: Tensor, bank: Bank) -> Tensor:
        """Read ``bank`` with queries from ``x``: (B, T, d_model) -> (B, T, d_model)."""
        return self.output(bank.read(self.query_proj(x)), x.dtype)

    def output(self, read: Tensor, dtype: torch.dtype) -> Tensor:
        """A bank read (B, T, d_value) -> the model's width (B, T, d_model), in ``dtype``."""
        return self.out_proj(read.to(self.out_proj.weight.dtype)).to(dtype)
