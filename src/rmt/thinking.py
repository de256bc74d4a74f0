"""The thinking core: shared-weight layers iterated K times in depth, with a gated (selective) state update.

One iteration, for every token at once:

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

from rmt.ssm import Block, MixerState, RMSNorm


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
    def __init__(self, d_model: int, n_layers: int, mlp_hidden: int, **ssm_kwargs):
        super().__init__()
        self.state_norm = RMSNorm(d_model)
        self.adapter = nn.Linear(2 * d_model, d_model, bias=False)
        self.update_gate = nn.Linear(2 * d_model, d_model)
        ssm_kwargs = {**ssm_kwargs, "conv_width": 1}  # no conv: per-token skipping must be exact
        self.layers = nn.ModuleList([Block(d_model, mlp_hidden, **ssm_kwargs) for _ in range(n_layers)])

    def _iterate(self, s: Tensor, e: Tensor, g: Tensor, states: list[MixerState] | None = None,
                 keep_states: bool = False, reread: Callable[[Tensor], Tensor] | None = None,
                 init_states: list[MixerState] | None = None):
        """One iteration. Parallel over (B, T) when states is None (keep_states: also return each layer's
        final scan state, for prefill, continuing from init_states when given); a single decoding step over
        (B,) when states are given.

        reread: s -> a memory read with a query from the current state, added to the re-injected input
        (the model passes one when the core reads memory at every iteration); same shape as s."""
        if reread is not None:
            e = e + reread(s)
        hs = torch.cat([self.state_norm(s), e], dim=-1)
        u = self.adapter(hs)
        new_states = []
        for i, layer in enumerate(self.layers):
            if states is not None:
                u, st = layer.step(u, states[i], gate=g)
                new_states.append(st)
            elif keep_states:
                u, st = layer(u, gate=g, state=None if init_states is None else init_states[i], return_state=True)
                new_states.append(st)
            else:
                u = layer(u, gate=g)
        z = torch.sigmoid(self.update_gate(hs))
        return s + (z * g.unsqueeze(-1).to(z.dtype)) * (u - s), new_states

    def forward(self, e: Tensor, gate: Tensor, iters: int, bptt: int | None = None,
                exit_rule: ExitRule | None = None, init: str = "zero", keep_states: bool = False,
                readout: Callable[[Tensor], Tensor] | None = None, reread: Callable[[Tensor], Tensor] | None = None,
                states: list[list[MixerState]] | None = None):
        """e (B, T, D), gate (B, T) in [0, 1] -> final state (B, T, D), iterations run per token (B, T)
        [, decoding states [iteration][layer] when keep_states]. states: the decoding states these tokens
        follow (a chunked prefill continues from the previous chunk's; with keep_states only)."""
        s = torch.randn_like(e) * e.detach().std() if (init == "random" and self.training) else torch.zeros_like(e)
        g = gate
        used = torch.zeros(gate.shape, device=e.device)
        first_grad = iters - (bptt if bptt is not None else iters)
        all_states = []
        for k in range(iters):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                s_new, new_states = self._iterate(s, e, g, keep_states=keep_states, reread=reread,
                                                  init_states=None if states is None else states[k])
            all_states.append(new_states)
            used = used + (g > 0).float()
            if exit_rule is not None:
                g = torch.where(exit_rule.halted(k + 1, s, s_new, readout), torch.zeros_like(g), g)
            s = s_new
        return (s, used, all_states) if keep_states else (s, used)

    def empty_states(self, batch: int, iters: int, device=None) -> list[list[MixerState]]:
        """The core's decoding state: one MixerState per (iteration, layer); size independent of context."""
        return [[layer.mixer.empty_state(batch, device=device) for layer in self.layers] for _ in range(iters)]

    def step(self, e: Tensor, gate: Tensor, states: list[list[MixerState]], exit_rule: ExitRule | None = None,
             readout: Callable[[Tensor], Tensor] | None = None, reread: Callable[[Tensor], Tensor] | None = None
             ) -> tuple[Tensor, Tensor, list[list[MixerState]]]:
        """One token: e (B, D), gate (B,) -> state (B, D), iterations run (B,), new states."""
        s = torch.zeros_like(e)
        g = gate
        used = torch.zeros_like(gate, dtype=torch.float32)
        new_states = []
        for k, st in enumerate(states):
            s_new, st = self._iterate(s, e, g, st, reread=reread)
            new_states.append(st)
            used = used + (g > 0).float()
            if exit_rule is not None:
                g = torch.where(exit_rule.halted(k + 1, s, s_new, readout), torch.zeros_like(g), g)
            s = s_new
        return s, used, new_states
