"""The product-key memory's gather-and-sum of value rows, with a backward that is fast on a CPU.

`weighted_bag_sum` is ``F.embedding_bag`` forward; the value table's gradient is itself a weighted bag sum (over
rows of the output gradient, one bag per table row), computed by `_AddTableGrad` after sorting the lookups by
slot. Dense or sparse (COO) table gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_bag_sum(indices: Tensor, table: Tensor, weights: Tensor, sparse: bool) -> Tensor:
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
