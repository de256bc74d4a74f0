"""The selective-SSM token mixer (Mamba-2 style) and the residual block every rmt layer is made of.

    x ─ in_proj ─┬─ z ─────────────────────────────────────┐
                 └─ xBC ─ causal conv ─ SiLU ─ x, B, C       │
                 dt ─ softplus(+bias)  ─ selective scan ─ +D·x ─ × SiLU(z) ─ RMSNorm ─ out_proj

Training uses the chunked scan (``rmt.model.scan.scan_chunked``); decoding uses ``step`` with a state whose size
does not depend on how many tokens came before: the scan state (B, H, P, N) plus the last ``conv - 1``
inputs of the short convolution.

The optional per-token ``gate`` (B, T) in [0, 1] scales dt: a token with gate 0 leaves the scan state exactly
as it was (decay exp(0) = 1, input 0). The thinking core uses it so that a token the router sends past
thinking is, for the core's own sequence mixing, as if it were not there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import ssd_scan
from .scan import scan_step


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@dataclass
class MixerState:
    """Decoding state of one mixer: the scan state and the short-convolution window."""

    ssm: Tensor  # (B, H, P, N), fp32
    conv: Tensor  # (B, conv_dim, conv_width - 1)

    def nbytes(self) -> int:
        return self.ssm.numel() * self.ssm.element_size() + self.conv.numel() * self.conv.element_size()


class SelectiveSSM(nn.Module):
    """Mamba-2-style mixer. forward: (B, T, D) -> (B, T, D); step: (B, D) -> (B, D) with a MixerState."""

    def __init__(self, d_model: int, expand: int = 2, head_dim: int = 32, d_state: int = 16, conv_width: int = 4,
                 chunk: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise ValueError(f"expand * d_model = {d_inner} must be divisible by ssm.head_dim = {head_dim}")
        self.d_inner, self.head_dim, self.d_state, self.chunk = d_inner, head_dim, d_state, chunk
        self.n_heads = d_inner // head_dim
        self.conv_width = conv_width
        self.conv_dim = d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, conv_width, groups=self.conv_dim, padding=conv_width - 1)
        # S4D-real style init: decay rates spread over 1..16 so heads cover short and long memories.
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, self.n_heads)))
        # dt bias = softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max].
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = RMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True  # state parameters are not regularised towards zero

    def _check_gate(self, gate: Tensor | None) -> None:
        # With a convolution wider than one token a skipped token would still leak into its neighbours
        # through the conv window, so gating is only exact (training == decoding) without one.
        if gate is not None and self.conv_width > 1:
            raise ValueError("a per-token gate needs conv_width=1 (no short convolution)")

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        return z, xbc, dt

    def _scan_inputs(self, xbc: Tensor, dt: Tensor, gate: Tensor | None):
        x, Bm, Cm = torch.split(xbc, [self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (..., H)
        if gate is not None:
            dt = dt * gate.float().unsqueeze(-1)
        A = -torch.exp(self.A_log.float())
        x = x.unflatten(-1, (self.n_heads, self.head_dim))
        return x, dt, dt * A, Bm, Cm

    def _out(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        y = y + x * self.D[:, None].to(x.dtype)
        y = y.flatten(-2) * F.silu(z)
        return self.out_proj(self.norm(y))

    def forward(self, u: Tensor, gate: Tensor | None = None, state: MixerState | None = None,
                return_state: bool = False):
        """u (B, T, D), gate (B, T) or None -> y (B, T, D) [, final MixerState]."""
        b, t, _ = u.shape
        self._check_gate(gate)
        if state is not None and t == 1:  # one token after a state (decoding): the recurrent form, O(1)
            y, new_state = self.step(u[:, 0], state, gate=None if gate is None else gate[:, 0])
            return (y.unsqueeze(1), new_state) if return_state else y.unsqueeze(1)
        z, xbc, dt = self._split(self.in_proj(u))
        if state is not None:  # continue from a decoding state: prepend the conv window
            xbc_in = torch.cat([state.conv.transpose(1, 2).to(xbc.dtype), xbc], dim=1)
            conv_out = F.conv1d(xbc_in.transpose(1, 2), self.conv.weight, self.conv.bias, groups=self.conv_dim)
        else:
            xbc_in = xbc
            conv_out = self.conv(xbc.transpose(1, 2))[..., :t]
        xbc_act = F.silu(conv_out.transpose(1, 2))
        x, dt_, _, Bm, Cm = self._scan_inputs(xbc_act, dt, gate)
        # B and C are one group shared by all heads: (B, T, 1, N). ssd_scan runs rmt.model.scan.scan_chunked on the
        # CPU and, on CUDA with mamba-ssm installed, its Triton kernel (rmt.model.kernels; RMT_KERNELS=off disables).
        y, s = ssd_scan(x, dt_, -torch.exp(self.A_log.float()), Bm.unsqueeze(2), Cm.unsqueeze(2),
                        None if state is None else state.ssm, chunk=self.chunk)
        out = self._out(y, x, z)
        if not return_state:
            return out
        w = self.conv_width - 1
        window = F.pad(xbc_in, (0, 0, max(w - xbc_in.shape[1], 0), 0))[:, xbc_in.shape[1] + max(w - xbc_in.shape[1], 0) - w:]
        # clone, not contiguous(): the window is a view of this call's (B, T, conv_dim) activations, and for an
        # empty window (conv_width = 1, the thinking core) contiguous() returns that view itself, so the
        # decoding state would keep the whole prompt's activations alive (O(T) memory in an O(1) state).
        return out, MixerState(ssm=s, conv=window.transpose(1, 2).clone(memory_format=torch.contiguous_format))

    def empty_state(self, batch: int, device=None, dtype=torch.float32) -> MixerState:
        return MixerState(ssm=torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device),
                          conv=torch.zeros(batch, self.conv_dim, self.conv_width - 1, device=device, dtype=dtype))

    def step(self, u: Tensor, state: MixerState, gate: Tensor | None = None) -> tuple[Tensor, MixerState]:
        """One token: u (B, D), gate (B,) or None -> y (B, D), new state. O(1) in the context length."""
        self._check_gate(gate)
        z, xbc, dt = self._split(self.in_proj(u))
        window = torch.cat([state.conv, xbc.unsqueeze(-1)], dim=-1)  # (B, conv_dim, W)
        conv_out = (window * self.conv.weight.squeeze(1)).sum(-1) + self.conv.bias
        xbc_act = F.silu(conv_out)
        x, dt_, a, Bm, Cm = self._scan_inputs(xbc_act, dt, gate)
        Bh = Bm.unsqueeze(1).expand(-1, self.n_heads, -1)
        Ch = Cm.unsqueeze(1).expand(-1, self.n_heads, -1)
        y, s = scan_step(x * dt_.unsqueeze(-1).to(x.dtype), a, Bh, Ch, state.ssm)
        return self._out(y, x, z), MixerState(ssm=s, conv=window[..., 1:])


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: (…, D) -> (…, D)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm residual layer: x + SSM(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, d_model: int, mlp_hidden: int, **ssm_kwargs):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.mixer = SelectiveSSM(d_model, **ssm_kwargs)
        self.norm2 = RMSNorm(d_model)
        self.mlp = GatedMLP(d_model, mlp_hidden)

    def forward(self, x: Tensor, gate: Tensor | None = None, state: MixerState | None = None,
                return_state: bool = False):
        if return_state:
            y, new_state = self.mixer(self.norm1(x), gate=gate, state=state, return_state=True)
        else:
            y, new_state = self.mixer(self.norm1(x), gate=gate, state=state), None
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return (x, new_state) if return_state else x

    def step(self, x: Tensor, state: MixerState, gate: Tensor | None = None) -> tuple[Tensor, MixerState]:
        y, state = self.mixer.step(self.norm1(x), state, gate=gate)
        x = x + y
        return x + self.mlp(self.norm2(x)), state
