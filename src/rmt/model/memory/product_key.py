"""Product-key memory (Lample et al., 2019, "Large Memory Layers with Product Keys"): the model's learned,
parametric store of facts.

``n_keys ** 2`` value slots are addressed through two small tables of ``n_keys`` sub-keys each, so the exact
top-k search over all slots costs ``O(n_keys)`` dot products per query instead of ``O(n_keys ** 2)``. The
value rows are gathered and summed by `weighted_bag_sum` (bag_sum.py), whose backward is the fast one.

Shapes: ``B`` batch, ``T`` sequence length, ``M`` flattened queries, ``H`` heads, ``K`` top-k.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bag_sum import weighted_bag_sum


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
        # 64x128-token batch).  forward() uses only its `.weight` (through `weighted_bag_sum`,
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
        out = weighted_bag_sum(flat_idx, self.values.weight, flat_w, self.sparse)  # (M, d_value)
        out = self.value_proj(out)
        return out.view(*lead, self.d_model).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_keys={self.n_keys} ({self.num_slots} slots), "
            f"heads={self.heads}, d_key={self.d_key}, topk={self.topk}, d_value={self.d_value}, "
            f"sparse={self.sparse}"
        )

