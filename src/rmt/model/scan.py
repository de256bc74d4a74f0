"""Selective scan (Mamba-2 / SSD form): the linear recurrence every token mixer in rmt is built on.

For each head the state is a (P, N) matrix updated token by token:

    S_t = exp(a_t) * S_{t-1} + x_t B_tᵀ          a_t = dt_t * A  <= 0  (scalar decay per head and token)
    y_t = S_t C_t

Three implementations of the same map, so the fast one always has an oracle next to it:

- ``scan_reference``: a Python loop over time, obviously correct, used only by tests;
- ``scan_chunked``:   the SSD chunked form used for training — quadratic only inside a chunk of L tokens,
                      a short recurrence between chunks; all the work is batched matmuls, so it runs near GEMM
                      speed on a CPU and its cost grows linearly with sequence length;
- ``scan_step``:      one token, O(1) in the sequence length, for generation.

All state math runs in fp32 whatever the input dtype, because decays multiply over thousands of steps.

Shapes: x (B, T, H, P), a (B, T, H), Bm and Cm (B, T, H, N), state (B, H, P, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scan_reference(x: Tensor, a: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sequential oracle. Returns y (B, T, H, P) and the final state (B, H, P, N)."""
    b, t, h, p = x.shape
    n = Bm.shape[-1]
    s = x.new_zeros(b, h, p, n, dtype=torch.float32) if state is None else state.float()
    ys = []
    for i in range(t):
        y, s = scan_step(x[:, i], a[:, i], Bm[:, i], Cm[:, i], s)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y.to(x.dtype), s


def scan_step(x: Tensor, a: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token. x (B, H, P), a (B, H), Bm/Cm (B, H, N), state (B, H, P, N) -> (y (B, H, P), new state)."""
    s = state * torch.exp(a.float())[..., None, None] + x.float()[..., :, None] * Bm.float()[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", s, Cm.float())
    return y.to(x.dtype), s


def scan_chunked(
    x: Tensor, a: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor | None = None, chunk: int = 64
) -> tuple[Tensor, Tensor]:
    """SSD chunked scan; same result as ``scan_reference`` up to fp32 rounding, any length T.

    Within a chunk the output is a masked (causal, decay-weighted) attention-like product; across chunks
    only the (H, P, N) states are carried, with a recurrence over T / L chunk boundaries.
    """
    b, t, h, p = x.shape
    n = Bm.shape[-1]
    dtype = x.dtype
    L = min(chunk, max(t, 1))
    pad = (-t) % L
    if pad:
        # Padding with zero input and zero log-decay leaves the state unchanged: exact for any T.
        x, Bm, Cm = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (x, Bm, Cm))
        a = F.pad(a, (0, 0, 0, pad))
    c = x.shape[1] // L
    # (B, H, C, L, ...) layout: heads and chunks become batch dimensions of the matmuls.
    xs = x.float().view(b, c, L, h, p).permute(0, 3, 1, 2, 4)
    Bs = Bm.float().view(b, c, L, h, n).permute(0, 3, 1, 2, 4)
    Cs = Cm.float().view(b, c, L, h, n).permute(0, 3, 1, 2, 4)
    acs = a.float().view(b, c, L, h).permute(0, 3, 1, 2).cumsum(-1)  # (B, H, C, L)

    # 1. Inside each chunk: y_i = sum_{j<=i} exp(acs_i - acs_j) (C_i . B_j) x_j
    seg = acs[..., :, None] - acs[..., None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
    y = ((Cs @ Bs.transpose(-1, -2)) * decay) @ xs  # (B, H, C, L, P)

    # 2. Each chunk's contribution to the state at its end: sum_j exp(acs_last - acs_j) x_j B_jᵀ
    to_end = torch.exp(acs[..., -1:] - acs)  # (B, H, C, L)
    chunk_states = (xs * to_end[..., None]).transpose(-1, -2) @ Bs  # (B, H, C, P, N)

    # 3. Carry states across chunk boundaries (a short sequential loop over C = T / L chunks).
    s = x.new_zeros(b, h, p, n, dtype=torch.float32) if state is None else state.float()
    chunk_decay = torch.exp(acs[..., -1])  # (B, H, C)
    starts = []
    for i in range(c):
        starts.append(s)
        s = s * chunk_decay[:, :, i, None, None] + chunk_states[:, :, i]
    start = torch.stack(starts, dim=2)  # (B, H, C, P, N): state entering each chunk

    # 4. The entering state's contribution inside the chunk: exp(acs_i) C_i . S_start
    y = y + (Cs @ start.transpose(-1, -2)) * torch.exp(acs)[..., None]
    y = y.permute(0, 2, 3, 1, 4).reshape(b, c * L, h, p)[:, :t]
    return y.to(dtype), s
