"""The thinking core, in two kinds (`CoreConfig.mixer`), behind one call signature.

`RecurrentCore` ("gru") carries a nonlinear state from token to token: the recurrence in time that a running
value needs (a word problem's count after each sentence). `ThinkingCore` ("ssm") iterates shared-weight layers
K times in depth over the whole sequence. Both are gated per token by the router, exactly: a token with gate 0
changes no state and costs nothing at inference.

The depth core, one iteration, for every token at once:

    hs    = [norm(s), e]                    e: the prelude output + memory read, re-injected every iteration
    u     = core_layers(adapter(hs), gate)  selective-SSM token mixing + gated MLP, weights shared across k
    z     = sigmoid(W_z hs)                 how much of the state to rewrite at this step
    s    <- s + (z * g) * (u - s)           g: the router's think gate of the token (0 = skip)

Because the per-token gate g also scales the SSM's dt inside the core, a token with g = 0 changes neither
its own state nor the core's sequence state: skipping it at inference is exact, and so is halting a token
early (its g is set to 0 for the remaining iterations). Training samples K per batch and back-propagates
through only the last ``bptt`` iterations (recurrent-depth style), so the cost of a step does not grow
with K and the core learns an update that can be iterated further at test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .ssm import Block, MixerState, RMSNorm


class ExitRule:
    """Decides, after iteration k, which tokens stop thinking. Subclass and override ``halted``."""

    def halted(self, k: int, s_prev: Tensor, s_new: Tensor, readout: Callable[[Tensor], Tensor] | None = None
               ) -> Tensor:
        """k: iterations done (>= 1); s_prev, s_new (..., D) -> bool (...), True = stop this token.

        readout maps a state to next-token logits (..., V), for rules that compare predictions.
        """
        return torch.zeros(s_new.shape[:-1], dtype=torch.bool, device=s_new.device)


class FixedIterations(ExitRule):
    """Every thinking token runs all K iterations."""


@dataclass
class LatentChange(ExitRule):
    """Stop a token once its state moves less than ``eps`` (relative L2 change) in one iteration."""

    eps: float = 0.05
    min_iters: int = 1

    def halted(self, k, s_prev, s_new, readout=None):
        if k < self.min_iters:
            return super().halted(k, s_prev, s_new)
        change = (s_new - s_prev).norm(dim=-1) / (s_new.norm(dim=-1) + 1e-6)
        return change < self.eps


@dataclass
class PredictionKL(ExitRule):
    """Stop a token once KL(p_k || p_{k-1}) between successive predictions falls below ``eps`` (nats).

    The prediction of a state is read out through the model's final norm and LM head from the core's
    input plus that state, without the coda layers: a cheap proxy that needs no extra sequence mixing.
    """

    eps: float = 1e-3
    min_iters: int = 1

    def halted(self, k, s_prev, s_new, readout=None):
        if readout is None:
            raise ValueError("PredictionKL needs a readout (the model passes one)")
        if k < self.min_iters:
            return super().halted(k, s_prev, s_new)
        logp_new = torch.log_softmax(readout(s_new).float(), dim=-1)
        logp_old = torch.log_softmax(readout(s_prev).float(), dim=-1)
        return (logp_new.exp() * (logp_new - logp_old)).sum(-1) < self.eps


class ThinkingCore(nn.Module):
    """n_layers shared-weight blocks iterated K times on a per-token state s. See the module docstring.

    One method for every mode: training and prefill run whole sequences (B, T, D); decoding runs T = 1 with
    the per-iteration sequence states of the previous token (`states`); the blocks pick the recurrent form for
    a single token after a state. Collaborators are passed in, not reached for: `memory` (the reader's
    `CoreRead`: the bank read of the current state) and `readout` (state -> next-token logits, for exit rules).
    """

    def __init__(self, d_model: int, n_layers: int, mlp_hidden: int, **ssm_kwargs):
        super().__init__()
        self.state_norm = RMSNorm(d_model)
        self.adapter = nn.Linear(2 * d_model, d_model, bias=False)
        self.update_gate = nn.Linear(2 * d_model, d_model)
        ssm_kwargs = {**ssm_kwargs, "conv_width": 1}  # no conv: per-token skipping must be exact
        self.layers = nn.ModuleList([Block(d_model, mlp_hidden, **ssm_kwargs) for _ in range(n_layers)])

    def _iterate(self, s: Tensor, e: Tensor, g: Tensor, states: list[MixerState] | None, keep: bool,
                 memory: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, list[MixerState]]:
        """One iteration over (B, T): s <- s + (z * g) * (u - s). states: each layer's sequence state before
        these tokens (None = start of the sequence); keep: return the states after them."""
        if memory is not None:
            e = e + memory(s)
        hs = torch.cat([self.state_norm(s), e], dim=-1)
        u = self.adapter(hs)
        new_states = []
        for i, layer in enumerate(self.layers):
            st = None if states is None else states[i]
            if keep:
                u, st = layer(u, gate=g, state=st, return_state=True)
                new_states.append(st)
            else:
                u = layer(u, gate=g, state=st)
        z = torch.sigmoid(self.update_gate(hs))
        return s + (z * g.unsqueeze(-1).to(z.dtype)) * (u - s), new_states

    def forward(self, e: Tensor, gate: Tensor, iters: int, *, states: list[list[MixerState]] | None = None,
                keep_states: bool = False, bptt: int | None = None, exit_rule: ExitRule | None = None,
                init: str = "zero", readout: Callable[[Tensor], Tensor] | None = None,
                memory: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor, list[list[MixerState]] | None]:
        """e (B, T, D), gate (B, T) in [0, 1] -> (final state (B, T, D), iterations run per token (B, T),
        the sequence states [iteration][layer] after these tokens, or None unless keep_states).

        states: the states before these tokens (from a decoding cache; then len(states) == iters).
        bptt: back-propagate through only the last this-many iterations (training)."""
        if states is not None and len(states) != iters:
            raise ValueError(f"the cache holds {len(states)} core iterations, asked for {iters}")
        random_init = init == "random" and self.training
        s = torch.randn_like(e) * e.detach().std() if random_init else torch.zeros_like(e)
        g = gate
        used = torch.zeros(gate.shape, device=e.device)
        first_grad = iters - (bptt if bptt is not None else iters)
        all_states = []
        for k in range(iters):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                s_new, st = self._iterate(s, e, g, None if states is None else states[k], keep_states, memory)
            all_states.append(st)
            used = used + (g > 0).float()
            if exit_rule is not None:
                g = torch.where(exit_rule.halted(k + 1, s, s_new, readout), torch.zeros_like(g), g)
            s = s_new
        return s, used, (all_states if keep_states else None)

    def empty_states(self, batch: int, iters: int, device=None) -> list[list[MixerState]]:
        """The core's decoding state: one MixerState per (iteration, layer); size independent of context."""
        return [[layer.mixer.empty_state(batch, device=device) for layer in self.layers] for _ in range(iters)]


class _GatedGRUScan(torch.autograd.Function):
    """The time loop of `GatedGRU` with a hand-written backward: a word problem is ~30 tokens, and autograd's
    bookkeeping of ~10 small ops per token and layer cost more than the arithmetic (3x slower in training).

    Inputs: xp (B, T, 3H) the input projections [r | z | n], g (B, T) gates, h0 (B, H), U (3H, H) the hidden
    projection; steps (updates per token) and active (per t: does any row update) are constants.
    Outputs: the state after each token (B, T, H) and the last state (B, H).
    """

    @staticmethod
    def forward(ctx, xp, g, h0, U, steps, active):
        b, t_len, _ = xp.shape
        H = h0.shape[-1]
        h, out, saved = h0, [], []
        for t in range(t_len):
            if active[t]:
                xr, xz, xn = xp[:, t, :H], xp[:, t, H:2 * H], xp[:, t, 2 * H:]
                gt = g[:, t:t + 1]
                for _ in range(steps):
                    hp = h @ U.t()
                    r = torch.sigmoid(xr + hp[:, :H])
                    z = torch.sigmoid(xz + hp[:, H:2 * H])
                    hn = hp[:, 2 * H:]
                    n = torch.tanh(xn + r * hn)
                    saved.append((t, h, r, z, n, hn))
                    h = h + (gt * z) * (n - h)
            out.append(h)
        ctx.steps_saved = saved
        ctx.save_for_backward(xp, g, h0, U)
        return torch.stack(out, dim=1), h

    @staticmethod
    def backward(ctx, d_out, d_last):
        xp, g, h0, U = ctx.saved_tensors
        b, t_len, _ = xp.shape
        H = h0.shape[-1]
        d_xp = torch.zeros_like(xp)
        d_g = torch.zeros_like(g)
        d_hps, hs = [], []  # d_U = sum_i d_hp_i^T h_i, as one matmul at the end
        dh = d_last.clone() if d_last is not None else h0.new_zeros(b, H)
        saved = ctx.steps_saved
        i = len(saved) - 1
        for t in range(t_len - 1, -1, -1):
            if d_out is not None:
                dh = dh + d_out[:, t]
            gt = g[:, t:t + 1]
            while i >= 0 and saved[i][0] == t:
                _, h, r, z, n, hn = saved[i]
                u = gt * z
                diff = n - h
                da_n = dh * u * (1 - n * n)
                du = dh * diff
                d_g[:, t] += (du * z).sum(-1)
                da_z = du * gt * z * (1 - z)
                da_r = da_n * hn * r * (1 - r)
                d_hp = torch.cat([da_r, da_z, da_n * r], dim=-1)
                d_xp[:, t] += torch.cat([da_r, da_z, da_n], dim=-1)
                d_hps.append(d_hp)
                hs.append(h)
                dh = dh * (1 - u) + d_hp @ U
                i -= 1
        d_U = torch.cat(d_hps).t() @ torch.cat(hs) if hs else torch.zeros_like(U)
        return d_xp, d_g, dh, d_U, None, None


class GatedGRU(nn.Module):
    """One GRU layer whose every update is scaled by a per-token gate g in [0, 1]:

        r, z = sigmoid(W_r x + U_r h), sigmoid(W_z x + U_z h)
        n    = tanh(W_n x + r * (U_n h))
        h   <- h + (g * z) * (n - h)          (g = 0: h passes the token unchanged)

    The input projections of all tokens are one matmul; the loop over time (`_GatedGRUScan`) does the rest.
    """

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.d_hidden = d_hidden
        self.x_proj = nn.Linear(d_in, 3 * d_hidden)
        self.h_proj = nn.Linear(d_hidden, 3 * d_hidden, bias=False)
        with torch.no_grad():  # r starts open (bias 1), z half open
            self.x_proj.bias.zero_()
            self.x_proj.bias[:d_hidden].fill_(1.0)

    def forward(self, x: Tensor, g: Tensor, h: Tensor | None, steps: int, active: list[bool] | None
                ) -> tuple[Tensor, Tensor]:
        """x (B, T, d_in), g (B, T), h (B, H) or None (zeros) -> (states after each token (B, T, H), last (B, H)).

        steps: updates per token (K, same input each time); active[t] False: no row updates at t (skipped)."""
        b, t_len, _ = x.shape
        xp = self.x_proj(x)
        if h is None:
            h = x.new_zeros(b, self.d_hidden)
        active = [True] * t_len if active is None else active
        return _GatedGRUScan.apply(xp, g.to(xp.dtype), h.to(xp.dtype), self.h_proj.weight, steps, active)


class RecurrentCore(nn.Module):
    """Thinking as recurrence in time: n_layers gated GRU layers carried from token to token.

        x = norm(e);  h^l_t = GRU_l(h^{l-1}_t, h^l_{t-1}) gated by g_t, K steps per token;  s_t = g_t * W_o h^L_t

    The router's think gate g scales every update and the output, so a token with g = 0 leaves the running
    state as it was and adds nothing: skipping it (hard routing) is exact, and a skipped position costs no
    core compute. ``iters`` = 0 means the core is off (the caller never calls it). Same call signature as
    `ThinkingCore`; its decoding state is one (B, H) tensor per layer, whatever K.
    """

    def __init__(self, d_model: int, n_layers: int, d_hidden: int, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        self.norm = RMSNorm(d_model)
        self.layers = nn.ModuleList([GatedGRU(d_model if i == 0 else d_hidden, d_hidden) for i in range(n_layers)])
        self.out = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, e: Tensor, gate: Tensor, iters: int, *, states: list[Tensor] | None = None,
                keep_states: bool = False, bptt: int | None = None, exit_rule: ExitRule | None = None,
                init: str = "zero", readout: Callable[[Tensor], Tensor] | None = None,
                memory: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """e (B, T, D), gate (B, T) -> (output s (B, T, D), update steps run per token (B, T), the layers'
        states after these tokens [(B, H)] or None unless keep_states). states: from a decoding cache."""
        if exit_rule is not None and type(exit_rule) is not FixedIterations:
            raise ValueError(f"the gru core runs a fixed K per thinking token; {type(exit_rule).__name__} "
                             "applies to the ssm core only")
        if memory is not None:
            raise ValueError("the gru core does not re-read the bank (reader.core_reads is for the ssm core)")
        # Tokens think or not, in training as at inference: the forward pass uses the hard gate (1 at or above
        # the router's threshold, else 0) and the gradient reaches the router straight through its soft gate.
        # A soft gate of 0.4 in training would be a token that half-updates the running value, and is then
        # skipped entirely at inference.
        gate = (gate >= self.threshold).to(gate.dtype) + gate - gate.detach()
        active = None if self.training else (gate > 0).any(0).tolist()
        x = self.norm(e)
        new_states = []
        for i, layer in enumerate(self.layers):
            x, h = layer(x, gate, None if states is None else states[i], iters, active)
            new_states.append(h)
        s = gate.to(e.dtype).unsqueeze(-1) * self.out(x)
        used = (gate > 0).float() * iters
        return s, used, (new_states if keep_states else None)

    def empty_states(self, batch: int, iters: int, device=None) -> list[Tensor]:
        return [torch.zeros(batch, layer.d_hidden, device=device) for layer in self.layers]
