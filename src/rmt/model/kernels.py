"""Optional GPU fast paths, dispatched lazily; the pure-PyTorch scans in ``rmt.model.scan`` stay the reference.

Only one fast path exists today: the SSD chunked scan of a training / prefill forward pass goes to
mamba-ssm's Triton kernel ``mamba_chunk_scan_combined`` when all of these hold:

- the tensors are on a CUDA device,
- ``mamba_ssm`` imports (it is an optional extra: ``pip install 'rmt[gpu]'``; never needed on the CPU),
- the switch is not off: environment variable ``RMT_KERNELS`` (``auto`` default; ``off`` = always the
  reference; ``on`` = on CUDA tensors raise instead of falling back, so a GPU check cannot pass by silently
  testing the reference against itself — the CPU always runs the reference) or the ``use_kernels``
  argument, which wins over the environment.

Everything else — the CPU, decoding (``scan_step``), a missing library — runs ``rmt.model.scan.scan_chunked``
exactly as before: on the CPU the dispatcher computes the same expressions in the same order as
``SelectiveSSM`` did before it existed, so results are bit-identical.

Conventions mapped onto mamba-ssm (checked against its ``ssd_combined.py`` and ``ssd_chunk_scan_combined_ref``):
both keep the per-head state as (P, N) = (head_dim, d_state) and update it as
``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ``, ``y_t = S_t C_t``; mamba-ssm takes x and dt separately and
multiplies x by dt inside the kernel, while ``scan_chunked`` takes the product x·dt and the log-decay
a = dt·A. B and C are shared by ``G`` groups of heads (head h reads group ``h // (H / G)``); rmt's mixer uses
one group. ``dt`` is passed already softplus-ed and gated (no ``dt_bias``, no ``dt_softplus``, default
``dt_limit`` = no clamp), and ``D`` and ``z`` stay outside the kernel, so the kernel computes the scan only.

Not accelerated, on purpose: the explicit memory bank's read (``ExplicitMemoryBank.read``) is a non-causal
read of a fixed-size state, ``phi(q) S / (phi(q) · z)`` — two batched GEMMs with no sequence recurrence, which
cuBLAS already runs at GEMM speed; flash-linear-attention's kernels implement *causal* chunked linear
attention, a different computation, so there is nothing for them to do here.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import Tensor

from .scan import scan_chunked

__all__ = ["ssd_scan", "scan_backend", "kernels_mode", "mamba_chunk_scan"]

_MODES = ("auto", "on", "off")


def kernels_mode(use_kernels: bool | None = None) -> str:
    """Resolve the switch: the argument if given (True -> "on", False -> "off"), else ``RMT_KERNELS``."""
    if use_kernels is not None:
        return "on" if use_kernels else "off"
    mode = os.environ.get("RMT_KERNELS", "auto").strip().lower()
    aliases = {"1": "on", "true": "on", "0": "off", "false": "off", "ref": "off", "reference": "off", "": "auto"}
    mode = aliases.get(mode, mode)
    if mode not in _MODES:
        raise ValueError(f"RMT_KERNELS must be one of {_MODES} (or 0/1), got {os.environ['RMT_KERNELS']!r}")
    return mode


@functools.cache
def _load_mamba() -> tuple[Callable | None, str]:
    """Import mamba-ssm's SSD kernel once. Returns (function or None, why not)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # ImportError, or a broken CUDA/Triton install failing at import time
        return None, f"mamba_ssm not importable ({type(exc).__name__}: {exc})"
    return mamba_chunk_scan_combined, ""


def mamba_chunk_scan() -> Callable | None:
    """mamba-ssm's ``mamba_chunk_scan_combined`` if it imports, else None (no import at rmt import time)."""
    return _load_mamba()[0]


def scan_backend(x: Tensor, use_kernels: bool | None = None) -> tuple[str, str]:
    """Which implementation ``ssd_scan`` will use for inputs like x -> (name, reason).

    name is "mamba_ssm" or "reference"; reason says why the reference was chosen ("" for the fast path).
    Raises RuntimeError in mode "on" when the fast path cannot run, so a GPU check never tests the
    reference against itself without noticing.
    """
    mode = kernels_mode(use_kernels)
    if mode == "off":
        return "reference", "kernels switched off"
    if x.device.type != "cuda":
        reason = f"tensors are on {x.device.type}, the fast path is CUDA only"
    elif x.shape[1] == 0:
        reason = "empty sequence"
    else:
        fn, reason = _load_mamba()
        if fn is not None:
            return "mamba_ssm", ""
    if mode == "on" and x.device.type == "cuda":
        raise RuntimeError(f"RMT_KERNELS=on but the fast path cannot run: {reason}")
    return "reference", reason


def _expand_groups(m: Tensor, heads: int) -> Tensor:
    """(B, T, G, N) -> (B, T, H, N), head h reading group h // (H / G) (mamba-ssm's grouping)."""
    g = m.shape[2]
    if heads % g:
        raise ValueError(f"{heads} heads cannot share {g} groups of B/C")
    if g == 1:  # a stride-0 view, no copy: what SelectiveSSM always passed to scan_chunked
        return m.expand(-1, -1, heads, -1)
    return m if g == heads else m.repeat_interleave(heads // g, dim=2)


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor | None = None,
             chunk: int = 64, use_kernels: bool | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan with dt and A kept apart, dispatched to a fast kernel when one applies.

    Args:
        x: (B, T, H, P) inputs (before multiplying by dt).
        dt: (B, T, H) step sizes, >= 0 (already softplus-ed and gated; 0 leaves the state untouched).
        A: (H,) continuous-time decay rates, <= 0.
        Bm, Cm: (B, T, G, N) input / output projections shared by G groups of heads (G divides H).
        state: optional (B, H, P, N) state to continue from.
        chunk: chunk length of the SSD algorithm.
        use_kernels: True / False force the choice (True raises if impossible on CUDA), None reads RMT_KERNELS.
    Returns:
        y (B, T, H, P) in x's dtype, and the final state (B, H, P, N) in fp32 — the same as
        ``scan_chunked(x * dt, dt * A, Bm, Cm, state)`` with B and C expanded to all heads.
    """
    h = x.shape[2]
    backend, _ = scan_backend(x, use_kernels)
    if backend == "mamba_ssm":
        fn = mamba_chunk_scan()
        # The Triton kernels index with unit stride in the last dimension; expanded or sliced views are not.
        y, s = fn(x.contiguous(), dt.contiguous(), A.contiguous(), Bm.contiguous(), Cm.contiguous(), chunk,
                  initial_states=None if state is None else state.float().contiguous(), return_final_states=True)
        return y.to(x.dtype), s.float()
    # The reference: written exactly as SelectiveSSM computed it before the dispatcher (bit-identical on CPU).
    a = dt * A
    return scan_chunked(x * dt.unsqueeze(-1).to(x.dtype), a, _expand_groups(Bm, h), _expand_groups(Cm, h),
                        state, chunk=chunk)
