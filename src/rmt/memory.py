"""Memory components of the Recurrent Memory Transformer.

Two kinds of memory live here:

* :class:`ProductKeyMemory` -- a *learned*, parametric memory (Lample et al., 2019,
  "Large Memory Layers with Product Keys").  ``n_keys ** 2`` value slots are addressed through
  two small tables of ``n_keys`` sub-keys each, so an exact top-k search over all slots costs
  ``O(n_keys)`` dot products per query instead of ``O(n_keys ** 2)``.  This is the model's
  store of facts learned during training.
* :class:`ExplicitMemoryBank` + :class:`ExplicitMemoryRead` -- a *run-time* key/value store that
  the model writes into during the forward pass (e.g. summaries of earlier segments) and reads
  with normalised linear attention.  Its state has a fixed size, so reading costs the same no
  matter how many entries were written.

Shape conventions: ``B`` batch, ``T`` sequence length, ``M`` number of entries / flattened
queries, ``H`` heads, ``K`` top-k.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MemoryLookup",
    "ProductKeyMemory",
    "ExplicitMemoryBank",
    "ExplicitMemoryRead",
    "SoftmaxMemoryBank",
    "softmax_attention_reference",
    "feature_map",
    "linear_attention_reference",
]


# --------------------------------------------------------------------------------------------- #
# Product-key memory
# --------------------------------------------------------------------------------------------- #


class MemoryLookup(NamedTuple):
    """The slots one forward pass of :class:`ProductKeyMemory` read (detached, for inspection).

    ``indices``: (..., heads, topk) int64 slot ids in ``[0, n_keys ** 2)``.
    ``weights``: (..., heads, topk) float32 softmax weights; each head's weights sum to 1.
    """

    indices: Tensor
    weights: Tensor


class ProductKeyMemory(nn.Module):
    """Product-key memory layer (Lample et al., 2019).

    For each of ``heads`` heads a query of size ``d_key`` is split into two halves.  Each half is
    scored against its own table of ``n_keys`` sub-keys; the full key of slot ``i * n_keys + j``
    is the concatenation ``[sub_key_1[i], sub_key_2[j]]``, so its score is ``s1[i] + s2[j]``.
    The exact top-k over all ``n_keys ** 2`` slots is therefore contained in the Cartesian product
    of the two per-half top-k lists, which is what :meth:`lookup` searches.

    The selected value rows are combined with softmax weights (per head) and the heads are
    averaged (see :meth:`forward`).

    Args:
        d_model: width of the hidden state read from and written back to.
        n_keys: sub-keys per half; the memory has ``n_keys ** 2`` slots.
        heads: independent lookups per token.
        d_key: size of one head's full query; each half has ``d_key // 2`` dims.
        topk: slots read per head.
        d_value: width of a value slot (default ``d_model``); if it differs from ``d_model`` a
            bias-free Linear maps the read back to ``d_model``.
        query_dropout: dropout on the normalised query (training only).
        sparse: give the value table sparse gradients (needs an optimizer that accepts them,
            e.g. ``torch.optim.SparseAdam``); dense by default so AdamW just works.
    """

    def __init__(
        self,
        d_model: int,
        n_keys: int = 128,
        heads: int = 4,
        d_key: int = 64,
        topk: int = 16,
        d_value: int | None = None,
        query_dropout: float = 0.0,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if d_key % 2 != 0:
            raise ValueError(f"d_key must be even (it is split into two halves), got {d_key}")
        if not 1 <= topk <= n_keys:
            raise ValueError(f"need 1 <= topk <= n_keys, got topk={topk}, n_keys={n_keys}")
        self.d_model = d_model
        self.n_keys = n_keys
        self.heads = heads
        self.d_key = d_key
        self.half = d_key // 2
        self.topk = topk
        self.d_value = d_model if d_value is None else d_value
        self.sparse = sparse

        # Sub-key tables: (heads, 2 halves, n_keys, half).
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, self.half))

        # Query network.  The projection is followed (in `_query`) by a LayerNorm over each head's
        # d_key without affine parameters.  Why LayerNorm and not the BatchNorm of the paper:
        # BatchNorm uses batch statistics in training and running averages in eval, so a token's
        # query -- and hence *which slots it reads* -- would differ between training and
        # batch-size-1 generation.  LayerNorm normalises each token's query by itself, identical
        # in train and eval, and still fixes the query's scale so that scores (and the softmax
        # temperature) stay in a sane range and no handful of keys wins every lookup.  No affine:
        # a learned gain would just be a temperature the projection can already express.
        self.query_proj = nn.Linear(d_model, heads * d_key, bias=False)
        self.query_dropout = nn.Dropout(query_dropout)

        # Value table.  EmbeddingBag gives a fused gather + weighted sum, so the (M, heads*topk,
        # d_value) tensor of selected rows is never materialised (it would be ~270 MB for a
        # 64x128-token batch).  forward() uses only its `.weight` (through `_weighted_bag_sum`,
        # which has a faster backward); the module is kept for its familiar name and repr.
        self.values = nn.EmbeddingBag(n_keys * n_keys, self.d_value, mode="sum", sparse=sparse)
        self.value_proj: nn.Module = (
            nn.Identity()
            if self.d_value == d_model
            else nn.Linear(self.d_value, d_model, bias=False)
        )

        # Candidate pairs (a, b) of the pruned Cartesian merge (see `lookup`); buffers so they
        # follow .to(device), non-persistent so they stay out of checkpoints.
        pairs = [(a, b) for a in range(topk) for b in range(topk) if (a + 1) * (b + 1) <= topk]
        self.register_buffer("_pairs_a", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("_pairs_b", torch.tensor([b for _, b in pairs]), persistent=False)

        # Inspection hook: when `record` is True, forward() stores the last lookup (detached).
        self.record: bool = False
        self.last_lookup: MemoryLookup | None = None

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise sub-keys near the unit sphere and values with N(0, 1/d_value)."""
        # normal / sqrt(half): each sub-key has norm ~1 and a uniformly random direction, so the
        # keys cover the query space evenly and no slot is favoured at initialisation.
        nn.init.normal_(self.keys, mean=0.0, std=1.0 / math.sqrt(self.half))
        # std d_value**-0.5 gives each value row norm ~1, so the read starts at unit scale.
        nn.init.normal_(self.values.weight, mean=0.0, std=self.d_value**-0.5)
        self.query_proj.reset_parameters()
        if isinstance(self.value_proj, nn.Linear):
            self.value_proj.reset_parameters()

    # ------------------------------------------------------------------ properties / helpers

    @property
    def num_slots(self) -> int:
        """Number of value slots, ``n_keys ** 2``."""
        return self.n_keys * self.n_keys

    def value_parameters(self) -> list[nn.Parameter]:
        """The value table's parameters.

        The trainer puts these in their own optimizer group (own learning rate, no weight decay):
        each slot is touched by only a few tokens per step, so it needs a different learning rate
        than the dense weights, and weight decay would shrink every unused slot every step.
        """
        return [self.values.weight]

    def _query(self, x: Tensor) -> Tensor:
        """Hidden states (M, d_model) -> normalised queries (M, heads, d_key)."""
        q = self.query_proj(x).view(-1, self.heads, self.d_key)
        q = F.layer_norm(q, (self.d_key,))
        return self.query_dropout(q)

    # ------------------------------------------------------------------ lookup

    def lookup(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Exact top-k slots for each query via the product-key decomposition.

        Args:
            q: (M, heads, d_key) queries.
        Returns:
            scores: (M, heads, topk) raw dot-product scores, descending; differentiable with
                respect to ``q`` and ``self.keys``.
            indices: (M, heads, topk) int64 slot ids ``i * n_keys + j``.
        """
        m, h, k, n = q.shape[0], self.heads, self.topk, self.n_keys
        # Head-major layout (2H, M, half) so that both halves of all heads are scored by one
        # batched matmul (no Python loop over heads) and every later op runs along a
        # contiguous last dim.
        qh = q.reshape(m, 2 * h, self.half).transpose(0, 1).to(self.keys.dtype)
        sub = torch.bmm(qh, self.keys.view(2 * h, n, self.half).transpose(1, 2))  # (2H, M, n)

        # The search itself needs no gradient: only the scores of the *chosen* slots do.  Doing
        # it under no_grad keeps the two top-k's and the merge out of the autograd graph (their
        # backward would allocate and scatter into several (2H, M, n)-sized zero tensors).
        with torch.no_grad():
            # Per-half top-k, sorted descending.  Any slot in the global top-k has both halves in
            # their per-half top-k (otherwise k better slots exist sharing its other half), so
            # this loses nothing.
            s, idx = sub.topk(k, dim=-1)  # (2H, M, k)
            s, idx = s.view(h, 2, m, k), idx.view(h, 2, m, k)
            # Cartesian merge, pruned: the lists are sorted, so pair (a, b) is beaten by every
            # (a' <= a, b' <= b) -- (a+1)(b+1) pairs including itself -- and can only be in the
            # top-k if (a+1)(b+1) <= k.  That leaves ~k ln k candidates (50 for k=16) instead
            # of k**2 (256), which makes the second top-k ~5x cheaper.
            # (Index ops below are chosen by CPU speed: gather with an expanded index is ~7x
            # faster than index_select on these strided views, index_select on a flat 1-D
            # tensor ~15x faster than advanced indexing.)
            pa, pb = self._pairs_a, self._pairs_b
            n_pairs = pa.shape[0]
            cand = s[:, 0].gather(-1, pa.expand(h, m, n_pairs)) + s[:, 1].gather(
                -1, pb.expand(h, m, n_pairs)
            )  # (H, M, P)
            best = cand.topk(k, dim=-1).indices.view(-1)  # (H*M*k,) pair numbers
            a = pa.index_select(0, best).view(h, m, k)  # rank of the chosen slot in list 1
            b = pb.index_select(0, best).view(h, m, k)  # ... and in list 2
            sub_idx = torch.stack(
                (idx[:, 0].gather(-1, a), idx[:, 1].gather(-1, b)), dim=1
            )  # (H, 2, M, k): sub-key ids of each chosen slot
        # Differentiable scores of the chosen slots: s1[i] + s2[j], read back out of `sub`.
        scores = sub.view(h, 2, m, n).gather(-1, sub_idx).sum(dim=1)  # (H, M, k)
        indices = sub_idx[:, 0] * n + sub_idx[:, 1]
        return scores.permute(1, 0, 2), indices.permute(1, 0, 2)

    def lookup_bruteforce(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k by scoring every one of the ``n_keys ** 2`` full keys (test oracle; slow).

        Args:
            q: (M, heads, d_key) queries.
        Returns:
            scores, indices: (M, heads, topk) each, as :meth:`lookup`.
        """
        n, h = self.n_keys, self.heads
        k1 = self.keys[:, 0].unsqueeze(2).expand(h, n, n, self.half)  # row i -> sub-key 1 [i]
        k2 = self.keys[:, 1].unsqueeze(1).expand(h, n, n, self.half)  # col j -> sub-key 2 [j]
        full = torch.cat([k1, k2], dim=-1).reshape(h, n * n, self.d_key)  # slot i*n + j
        all_scores = torch.einsum("mhd,hsd->mhs", q.to(full.dtype), full)
        return all_scores.topk(self.topk, dim=-1)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """Read the memory.

        Args:
            x: (B, T, d_model) hidden states (any leading shape works).
        Returns:
            (B, T, d_model) the memory read, to be added to the residual stream by the caller.
        """
        lead = x.shape[:-1]
        q = self._query(x.reshape(-1, self.d_model))  # (M, H, d_key)
        scores, indices = self.lookup(q)  # (M, H, K)
        # Softmax in fp32: under bf16 autocast the top scores are often within bf16 rounding of
        # each other, and the weights feed a sum over many rows.
        weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
        if self.record:
            self.last_lookup = MemoryLookup(
                indices.detach().view(*lead, self.heads, self.topk),
                weights.detach().view(*lead, self.heads, self.topk),
            )
        # Heads are averaged, not summed: each head's weights sum to 1, so dividing by `heads`
        # makes the read a convex combination of value rows whose scale does not depend on the
        # number of heads (changing `heads` changes capacity, not the residual-stream scale).
        bag_weights = (weights / self.heads).to(self.values.weight.dtype)
        flat_idx = indices.reshape(-1, self.heads * self.topk)  # (M, H*K), contiguous copy
        flat_w = bag_weights.reshape(-1, self.heads * self.topk)
        out = _weighted_bag_sum(flat_idx, self.values.weight, flat_w, self.sparse)  # (M, d_value)
        out = self.value_proj(out)
        return out.view(*lead, self.d_model).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_keys={self.n_keys} ({self.num_slots} slots), "
            f"heads={self.heads}, d_key={self.d_key}, topk={self.topk}, d_value={self.d_value}, "
            f"sparse={self.sparse}"
        )


def _weighted_bag_sum(indices: Tensor, table: Tensor, weights: Tensor, sparse: bool) -> Tensor:
    """out[m] = sum_j weights[m, j] * table[indices[m, j]].

    Args:
        indices: (M, J) int64 rows of ``table``; table: (N, D); weights: (M, J).
    Returns:
        (M, D).  Differentiable w.r.t. ``weights`` and ``table`` (sparse COO gradient for the
        table if ``sparse``).

    The forward is ``F.embedding_bag``.  The gradient w.r.t. ``weights`` comes from
    embedding_bag's own backward (``table`` is passed detached), but the gradient w.r.t.
    ``table`` is computed by :class:`_AddTableGrad`: the stock CPU backward for it (and its
    ``sparse=True`` variant, which materialises one gradient row per lookup) was measured at
    ~250-300 ms for M=8192, J=64, D=128 on 2 cores -- more than the rest of the layer together;
    the replacement takes ~20 ms.  First-order gradients only (no double backward).
    """
    out = F.embedding_bag(indices, table.detach(), per_sample_weights=weights, mode="sum")
    if not (table.requires_grad and torch.is_grad_enabled()):
        return out
    return _AddTableGrad.apply(out, table, indices, weights.detach(), sparse)


class _AddTableGrad(torch.autograd.Function):
    """Identity on ``out`` whose backward also produces the value-table gradient.

    d table[s] = sum over (m, j) with indices[m, j] == s of weights[m, j] * grad_out[m].  That is
    itself a weighted bag sum -- over rows of ``grad_out``, with one bag per table row -- so it is
    computed by sorting the (m, j) entries by slot and calling embedding_bag once more.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, out: Tensor, table: Tensor, indices: Tensor, weights: Tensor, sparse: bool
    ) -> Tensor:
        ctx.save_for_backward(indices, weights)
        ctx.table_shape = table.shape
        ctx.sparse = sparse
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        indices, weights = ctx.saved_tensors
        # embedding_bag reads rows of its table; a strided/expanded grad would hit a slow path.
        grad_out = grad_out.contiguous()
        n_rows, d = ctx.table_shape
        j = indices.shape[1]
        flat = indices.reshape(-1)
        slots, order = flat.sort()
        token = order // j  # row of grad_out each sorted entry reads
        w = weights.reshape(-1).index_select(0, order).to(grad_out.dtype)
        if ctx.sparse:
            # Only the touched rows: a coalesced sparse COO gradient.
            uniq, counts = torch.unique_consecutive(slots, return_counts=True)
            offsets = torch.cumsum(counts, 0) - counts
            rows = F.embedding_bag(token, grad_out, offsets, per_sample_weights=w, mode="sum")
            grad_table = torch.sparse_coo_tensor(
                uniq.unsqueeze(0), rows, (n_rows, d), is_coalesced=True, check_invariants=False
            )
        else:
            # One bag per table row; untouched rows are empty bags and come out as zeros.
            counts = torch.bincount(flat, minlength=n_rows)
            offsets = torch.cumsum(counts, 0) - counts
            grad_table = F.embedding_bag(token, grad_out, offsets, per_sample_weights=w, mode="sum")
        return grad_out, grad_table, None, None, None


# --------------------------------------------------------------------------------------------- #
# Explicit run-time memory bank (linear attention)
# --------------------------------------------------------------------------------------------- #


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


def linear_attention_reference(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """The :meth:`ExplicitMemoryBank.read` result computed the slow way (test oracle).

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

    Entries may carry positions (``write(..., positions=)``, (B, M, P), e.g. an image patch's (x, y)); then
    `focus` turns a read's weights into where it looked, and a later read can add a score bias by distance
    from there (``read(..., bias=)``): the thinking core's "what is closest to / furthest from the object I
    found" (`RMTConfig.core_read_distance`).
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
        self.positions: Tensor | None = None

    @property
    def num_entries(self) -> Tensor:
        """(B,) int64 entries written per batch element; shape (0,) before the first write."""
        if self.mask is None:
            return torch.zeros(0, dtype=torch.long)
        return self.mask.long().sum(1)

    def state_bytes(self) -> int:
        """Bytes held (keys, values, mask, positions): grows with the number of entries."""
        state = (self.keys, self.values, self.mask, self.positions)
        return sum(t.numel() * t.element_size() for t in state if t is not None)

    def write(self, keys: Tensor, values: Tensor, mask: Tensor | None = None, positions: Tensor | None = None
              ) -> None:
        """Append entries: keys (B, M, d_key), values (B, M, d_value), mask (B, M) bool (True = present),
        positions (B, M, P) float or None; every write of a bank gives positions or none does."""
        b, m, dk = keys.shape
        if self.keys is not None and (positions is None) != (self.positions is None):
            raise ValueError("positions: give them with every write of a bank or with none")
        if positions is not None and positions.shape[:2] != (b, m):
            raise ValueError(f"expected positions (B, M, P) = ({b}, {m}, P), got {tuple(positions.shape)}")
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
            self.keys, self.values, self.mask, self.positions = keys, values, mask, positions
        else:
            self.keys = torch.cat([self.keys, keys], 1)
            self.values = torch.cat([self.values, values], 1)
            self.mask = torch.cat([self.mask, mask], 1)
            if positions is not None:
                self.positions = torch.cat([self.positions, positions], 1)

    def focus(self, weights: Tensor) -> Tensor:
        """Where a read looked: its weights (B, T, heads, M) -> the weighted mean entry position (B, T, P),
        over all heads, each head counted by how much weight it gave to entries (with a sink, a head that
        matched nothing gives little)."""
        if self.positions is None:
            raise ValueError("this bank's entries have no positions")
        w = weights.sum(2)  # (B, T, M)
        return (w @ self.positions.to(w.dtype)) / w.sum(-1, keepdim=True).clamp_min(1e-6)

    def distance2(self, focus: Tensor) -> Tensor:
        """Squared distance of every entry from a point per query: focus (B, T, P) -> (B, T, M)."""
        if self.positions is None:
            raise ValueError("this bank's entries have no positions")
        return ((self.positions.unsqueeze(1).to(focus.dtype) - focus.unsqueeze(2)) ** 2).sum(-1)

    def read(self, queries: Tensor, bias: Tensor | None = None, return_weights: bool = False
             ) -> Tensor | tuple[Tensor, Tensor]:
        """queries (B, T, d_key) -> (B, T, d_value); zero for batch elements with no entries.

        bias: (B, T, heads, M) added to the scores (after the 1/sqrt(d) scaling, before the softmax).
        return_weights: also return the weights (B, T, heads, M) (with autograd; the sink's share left out).
        """
        b, t, _ = queries.shape
        if self.keys is None:
            out = queries.new_zeros(b, t, self.d_value)
            return (out, queries.new_zeros(b, t, self.heads, 0)) if return_weights else out
        h = self.heads
        q = queries.view(b, t, h, -1).transpose(1, 2)  # (B, H, T, dk)
        k = self.keys.to(queries.dtype).view(b, -1, h, self.d_key // h).transpose(1, 2)  # (B, H, M, dk)
        v = self.values.to(queries.dtype).view(b, -1, h, self.d_value // h).transpose(1, 2)  # (B, H, M, dv)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_key // h)  # (B, H, T, M)
        if bias is not None:
            scores = scores + bias.to(scores.dtype).transpose(1, 2)
        scores = scores.masked_fill(~self.mask.view(b, 1, 1, -1), float("-inf"))
        # A batch element with no entries has an all -inf row: softmax would give NaN, so it reads zero.
        present = self.mask.any(1)
        if self.sink:
            # Softmax over the entries plus one implicit entry of score 0 and value 0 ("off by one"): the weights
            # no longer have to sum to 1, so how much a read returns says how many entries matched -- how much
            # of the picture is red, how many objects are squares -- which a plain average cannot say.
            scores = torch.cat([scores, scores.new_zeros(*scores.shape[:-1], 1)], dim=-1)
            weights = torch.softmax(scores.float(), dim=-1)[..., :-1].to(q.dtype)
        else:
            weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
        if self.record:
            self.recorded.append(weights.detach().permute(0, 2, 1, 3))  # (B, T, H, M)
        out = (weights @ v).transpose(1, 2).reshape(b, t, self.d_value)
        out = out * present.to(out.dtype).view(b, 1, 1)
        return (out, weights.transpose(1, 2)) if return_weights else out


def softmax_attention_reference(queries: Tensor, keys: Tensor, values: Tensor, heads: int,
                                mask: Tensor | None = None) -> Tensor:
    """:meth:`SoftmaxMemoryBank.read` the slow way (test oracle): a Python loop over batch rows, heads and
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


class ExplicitMemoryRead(nn.Module):
    """Projections between the model and an :class:`ExplicitMemoryBank`.

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

    def new_bank(self) -> ExplicitMemoryBank | SoftmaxMemoryBank:
        """An empty bank with this module's key/value widths (and kind of read)."""
        if self.read == "softmax":
            return SoftmaxMemoryBank(self.d_key, self.d_value, self.heads, self.sink)
        return ExplicitMemoryBank(self.d_key, self.d_value)

    def encode_entries(self, entries: Tensor, key_entries: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Entry embeddings (B, M, d_model) -> (keys (B, M, d_key), values (B, M, d_value)); keys come from
        ``key_entries`` (same shape) when given, so what finds an entry can differ from what it returns."""
        return self.key_proj(entries if key_entries is None else key_entries), self.value_proj(entries)

    def forward(self, x: Tensor, bank: ExplicitMemoryBank | SoftmaxMemoryBank, return_weights: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Read ``bank`` with queries from ``x``: (B, T, d_model) -> (B, T, d_model); with return_weights (softmax
        banks only), also the read's weights (B, T, heads, M)."""
        if return_weights:
            read, weights = bank.read(self.query_proj(x), return_weights=True)
            return self.out_proj(read.to(self.out_proj.weight.dtype)).to(x.dtype), weights
        read = bank.read(self.query_proj(x))
        return self.out_proj(read.to(self.out_proj.weight.dtype)).to(x.dtype)
