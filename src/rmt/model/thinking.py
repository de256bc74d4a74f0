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
