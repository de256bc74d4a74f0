"""The Recurrent Memory Transformer: one spine that training, prefill and decoding all run.

    tokens ─ embed ─ prelude ─┬─ router  p(memory, think, both)          -> w_memory, w_think
                              ├─ reader: memory read (product keys [+ explicit bank]), scaled by w_memory
                              │      e = h + w_memory * m                 (the preliminary answer signal)
                              └─ thinking core × K on e, gated by w_think -> s
                 coda(e + s) ── norm ── LM head (tied to the embedding)

Every layer mixes tokens with a selective SSM (ssm.py), so cost is linear in length and generation keeps a
constant-size state (`Cache`). `forward` runs a sequence from the start; `prefill` does the same and also
returns the cache; `step` is a sequence of one token that continues a cache. All three are `_spine`.
Ablations are arguments, not forks: ``memory=False`` never reads memory, ``think_iters=0`` never calls the
core, ``router="memory"|"think"|"both"`` forces a branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RMTConfig
from .memory import Bank, MemoryReader, ReaderState, WritableBank
from .router import Router, Routing
from .ssm import Block, MixerState, RMSNorm
from .thinking import ExitRule, RecurrentCore, ThinkingCore
from .encoders import build_encoders


PREFILL_CHUNK = 4096  # prompt tokens `generate` reads per parallel pass (a multiple of every ssm.chunk in use)


@dataclass
class Output:
    logits: Tensor  # (B, T, V)
    routing: Routing
    think_iters: Tensor  # (B, T) thinking iterations each token actually ran
    compute_cost: Tensor  # scalar: mean over tokens of w_think * K (what the router pays for thinking)
    memory_logits: Tensor | None = None  # (B, T, V) the memory read's own prediction, when asked for
    # losses of the inputs' own encoders, weighted, already part of what `loss_fn` adds (e.g. a visual task's
    # image reconstruction, from the `BankSource` that built this pass's bank); name -> scalar
    aux_losses: dict[str, Tensor] | None = None


@dataclass
class Cache:
    """Everything generation needs to continue a batch of sequences; its size never depends on their length."""

    prelude: list[MixerState]
    core: list  # ssm core: [iteration][layer] MixerState; gru core: [layer] (B, H) state
    coda: list[MixerState]
    length: int = 0
    explicit_bank: Bank | None = None
    reader: ReaderState | None = None  # the memory queries' token terms (when the config has them)
    iters: int = 0  # the K the cache was made for

    def tensors(self) -> list[Tensor]:
        core = [s for it in self.core for s in (it if isinstance(it, list) else [it])]
        states = self.prelude + core + self.coda
        extra = self.reader.tensors() if self.reader is not None else []
        return [t for s in states for t in ((s,) if isinstance(s, Tensor) else (s.ssm, s.conv))] + extra

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def _stack(layers: nn.ModuleList, x: Tensor, states: list[MixerState] | None, keep: bool
           ) -> tuple[Tensor, list[MixerState]]:
    """Run x (B, T, D) through `layers`, each continuing from its state in `states` (None: from the start);
    keep: also return each layer's state after these tokens (else an empty list)."""
    new_states = []
    for i, layer in enumerate(layers):
        if keep:
            x, st = layer(x, state=None if states is None else states[i], return_state=True)
            new_states.append(st)
        else:
            x = layer(x)
    return x, new_states


class BankSource:
    """Inputs that become a bank inside `RMT.forward`, with the model's own encoders: subclass and implement
    `build`. A task's batch builder makes them (e.g. `rmt.tasks.image_encoder.ImageBank`); `select` and `to`
    let the trainer split a batch over processes and move it to a device."""

    def build(self, model: "RMT") -> tuple[Bank, dict[str, Tensor] | None]:
        """-> (the bank, weighted auxiliary losses by name or None)."""
        raise NotImplementedError

    def select(self, rows: slice) -> "BankSource":
        raise NotImplementedError

    def to(self, device) -> "BankSource":
        raise NotImplementedError


@dataclass
class GenerationResult:
    tokens: Tensor  # (B, n) generated ids (pad after a sequence's end-of-answer)
    prompt_think_iters: Tensor  # (B, T) thinking iterations each prompt token ran
    think_iters: Tensor  # (B, n) thinking iterations each generated token's step ran (0 after a row ended)


class RMT(nn.Module):
    def __init__(self, config: RMTConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        hidden = c.mlp_mult * c.d_model
        ssm = dict(expand=c.ssm.expand, head_dim=c.ssm.head_dim, d_state=c.ssm.d_state, chunk=c.ssm.chunk)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.prelude = nn.ModuleList([Block(c.d_model, hidden, conv_width=c.ssm.conv, **ssm)
                                      for _ in range(c.n_prelude)])
        self.router = Router(c.d_model, c.router.threshold, c.router.init_think)
        self.reader = MemoryReader(c)
        # The encoders a modality brings (R8; `encoders.py`), e.g. a visual task's image encoder: a task's
        # `BankSource` runs them to write a bank inside forward; the spine never sees an image.
        self.encoders = build_encoders(c.encoders, c.d_model)
        self.core = (RecurrentCore(c.d_model, c.core.n_layers, c.core.hidden or hidden, c.router.threshold) if c.core.mixer == "gru"
                     else ThinkingCore(c.d_model, c.core.n_layers, hidden, **ssm))
        self.coda = nn.ModuleList([Block(c.d_model, hidden, conv_width=c.ssm.conv, **ssm) for _ in range(c.n_coda)])
        self.norm = RMSNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=c.embed_init or c.d_model ** -0.5)

    def num_params(self, exclude_memory_values: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_memory_values and self.reader.product_keys is not None:
            n -= sum(p.numel() for p in self.reader.product_keys.value_parameters())
        return n

    def _head(self, x: Tensor) -> Tensor:
        return self.norm(x) @ self.embed.weight.T

    def _iters(self, think_iters: int | None) -> int:
        k = self.config.core.iters if think_iters is None else think_iters
        if k < 0:
            raise ValueError(f"think_iters must be >= 0, got {k}")
        return k

    # ------------------------------------------------------------------------------------- the spine
    def _spine(self, idx: Tensor, cache: Cache | None, *, iters: int, memory: bool, router: str,
               bank: Bank | None, exit_rule: ExitRule | None, hard: bool, bptt: int | None = None
               ) -> tuple[Tensor, Routing, Tensor, Tensor | None, Cache | None]:
        """idx (B, T) -> (final hidden (B, T, D), routing, think iters (B, T), memory read m or None, cache).

        cache None: the sequence starts here and no state is kept (training). A cache: continue from it
        (empty for a prefill, the last token's for a decoding step) and return the cache after these tokens.
        """
        keep = cache is not None
        # A fresh cache's states are all empty: starting from None instead gives the same numbers as a sequence
        # that starts here, with less work.
        cont = keep and cache.length > 0
        h = self.embed(idx)
        terms, reader_state = None, None
        if memory or keep or self.config.router.context:
            # the token terms feed reads (and the router, with router.context); a cache keeps their state
            terms, reader_state = self.reader.token_terms(idx, h, cache.reader if cont else None)
        h, prelude = _stack(self.prelude, h, cache.prelude if cont else None, keep)
        routing = self.router(h + terms if self.config.router.context else h, mode=router, hard=hard)
        m = self.reader.read(h, terms, bank) if memory else None
        e = h + routing.w_memory.unsqueeze(-1) * m if memory else h
        core_states = cache.core if keep else None
        if iters > 0 and bool(routing.think_mask.any()):
            s, used, new_core = self.core(
                e, routing.w_think, iters, states=core_states if cont else None, keep_states=keep, bptt=bptt,
                exit_rule=exit_rule, init=self.config.core.init, readout=lambda st: self._head(e + st),
                memory=self.reader.core_read(e, routing.w_memory, bank) if memory else None)
            x = e + s
            core_states = new_core if keep else None
        else:  # nobody thinks: the core's sequence states stay exactly as they were
            x, used = e, torch.zeros(idx.shape, device=idx.device)
        x, coda = _stack(self.coda, x, cache.coda if cont else None, keep)
        new_cache = (Cache(prelude, core_states, coda, cache.length + idx.shape[1], cache.explicit_bank, reader_state,
                           cache.iters) if keep else None)
        return x, routing, used, m, new_cache

    # ------------------------------------------------------------------------------------- forward
    def forward(self, idx: Tensor, *, think_iters: int | None = None, memory: bool = True, router: str = "learned",
                explicit_bank: Bank | None = None, exit_rule: ExitRule | None = None,
                hard_routing: bool | None = None, bptt: int | None = None, memory_logits: bool = False,
                logits_at: Tensor | None = None) -> Output:
        """idx (B, T) token ids -> Output with logits (B, T, V).

        think_iters: K (default config.core.iters; 0 = recurrence off, the core is never called).
        memory: False = no memory read at all. router: "learned" or a forced branch.
        explicit_bank: a bank this pass reads (facts written at run time), or a `BankSource` that builds one
        with the model's own encoders (a visual task's images), whose weighted losses come back in aux_losses.
        hard_routing: skip the core for tokens below the router threshold (default: when not training).
        bptt: back-propagate through only the last this-many iterations (training).
        memory_logits: also return the memory read's own next-token prediction (head(m)), which training can
        score so that the read carries the answer by itself (R1: the preliminary answer signal).
        logits_at: (B, T) bool, the positions to predict (training: where there are targets); the logits (and
        memory logits) are then (N, V) for those N positions in row-major order. A question-answer row scores
        ~2 of its ~30 positions, and the LM head over the vocabulary is otherwise the costliest layer.
        """
        K = self._iters(think_iters)
        hard = (not self.training) if hard_routing is None else hard_routing
        aux = None
        if isinstance(explicit_bank, BankSource):
            # Built here, inside forward, so that DDP and FSDP see the encoder's parameters used; with memory
            # off nothing is encoded at all.
            explicit_bank, aux = explicit_bank.build(self) if memory else (None, None)
        x, routing, used, m, _ = self._spine(idx, None, iters=K, memory=memory, router=router, bank=explicit_bank,
                                             exit_rule=exit_rule, hard=hard, bptt=bptt)
        if logits_at is not None:
            x = x[logits_at]
            m = m[logits_at] if m is not None else None
        mem_logits = self._head(m) if (memory_logits and m is not None) else None
        cost = (routing.w_think.float() * K).mean()
        return Output(self._head(x), routing, used, cost, mem_logits, aux or None)

    # ------------------------------------------------------------------------------------- generation
    def new_cache(self, batch: int, think_iters: int | None = None, device=None,
                  explicit_bank: Bank | None = None) -> Cache:
        K = self._iters(think_iters)
        return Cache(prelude=[l.mixer.empty_state(batch, device=device) for l in self.prelude],
                     core=self.core.empty_states(batch, K, device=device),
                     coda=[l.mixer.empty_state(batch, device=device) for l in self.coda],
                     explicit_bank=explicit_bank, iters=K)

    @torch.no_grad()
    def prefill(self, idx: Tensor, *, think_iters: int | None = None, memory: bool = True, router: str = "learned",
                explicit_bank: Bank | None = None, exit_rule: ExitRule | None = None, cache: Cache | None = None
                ) -> tuple[Tensor, Tensor, Cache]:
        """Read a prompt (B, T) in parallel (chunked scans) -> last logits (B, V), think iters (B, T), cache.

        cache: continue after the tokens it has read (a long prompt read chunk by chunk, see `generate`); its
        explicit bank is used and think_iters must be the K it was made with. Not modified: a new one returns.
        """
        K = self._iters(think_iters)
        if cache is None:
            cache = self.new_cache(idx.shape[0], K, idx.device, explicit_bank)
        elif cache.iters != K:
            raise ValueError(f"prefill: the cache was made for think_iters={cache.iters}, got {K}")
        x, _, used, _, cache = self._spine(idx, cache, iters=K, memory=memory, router=router,
                                           bank=cache.explicit_bank, exit_rule=exit_rule, hard=True)
        return self._head(x[:, -1]), used, cache

    @torch.no_grad()
    def step(self, token: Tensor, cache: Cache, *, memory: bool = True, router: str = "learned",
             exit_rule: ExitRule | None = None) -> tuple[Tensor, Tensor, Cache]:
        """Decode one token: token (B,) -> logits (B, V), thinking iterations run (B,), updated cache.

        O(1) in the context length. A token the router sends past thinking (w_think below the threshold) does
        not run the core at all; when no token of the batch thinks, the core is skipped."""
        x, _, used, _, cache = self._spine(token.unsqueeze(1), cache, iters=cache.iters, memory=memory,
                                           router=router, bank=cache.explicit_bank, exit_rule=exit_rule, hard=True)
        return self._head(x[:, 0]), used[:, 0], cache

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, eos_id: int | None = None, think_iters: int | None = None,
                 memory: bool = True, router: str = "learned", explicit_bank: Bank | None = None,
                 exit_rule: ExitRule | None = None, prefill_chunk: int | None = PREFILL_CHUNK,
                 on_prefill: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Greedy continuation of equal-length prompts idx (B, T); stops a row at eos_id.

        A prompt longer than prefill_chunk tokens (None: no limit) is read in chunks of that many, each
        continuing the previous one's cache, so memory holds one chunk's activations whatever the prompt's
        length; on_prefill(tokens read, T) is called after each chunk.
        """
        if idx.shape[1] == 0:
            raise ValueError("generate: expected a prompt of at least one token, got none")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk: expected >= 1 or None, got {prefill_chunk}")
        kw = dict(memory=memory, router=router, exit_rule=exit_rule)
        step = idx.shape[1] if prefill_chunk is None else prefill_chunk
        cache, iters_read = None, []
        for i in range(0, idx.shape[1], step):
            logits, chunk_iters, cache = self.prefill(idx[:, i:i + step], think_iters=think_iters,
                                                      explicit_bank=explicit_bank, cache=cache, **kw)
            iters_read.append(chunk_iters)
            if on_prefill is not None:
                on_prefill(min(i + step, idx.shape[1]), idx.shape[1])
        prompt_iters = iters_read[0] if len(iters_read) == 1 else torch.cat(iters_read, dim=1)
        out, iters = [], []
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for i in range(max_new_tokens):
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.config.pad_id), nxt)
            out.append(nxt)
            if eos_id is not None:
                done = done | (nxt == eos_id)
            if bool(done.all()) or i + 1 == max_new_tokens:  # the last token needs no further step
                break
            logits, used, cache = self.step(nxt, cache, **kw)
            iters.append(torch.where(done, torch.zeros_like(used), used))
        tokens = torch.stack(out, dim=1) if out else idx.new_zeros(idx.shape[0], 0)
        think = torch.stack(iters, dim=1) if iters else torch.zeros(idx.shape[0], 0, device=idx.device)
        return GenerationResult(tokens, prompt_iters, think)

    # ------------------------------------------------------------------------------------- explicit memory
    def new_memory_bank(self) -> WritableBank:
        return self.reader.new_bank()

    def write_memory(self, bank: WritableBank, entries: Tensor, mask: Tensor | None = None,
                     key_entries: Tensor | None = None) -> None:
        """Write entry embeddings (B, M, D) -- encoded facts, image patches -- into ``bank``; key_entries
        (B, M, D), when given, are what the keys are computed from instead of the entries."""
        self.reader.write(bank, entries, mask, key_entries)

    def encode_text(self, idx: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Entry embeddings for texts (M, T) -> (M, D): the prelude's state at each text's last token."""
        h = self.embed(idx)
        for layer in self.prelude:
            h = layer(h)
        last = (lengths - 1) if lengths is not None else torch.full((idx.shape[0],), idx.shape[1] - 1)
        return h[torch.arange(idx.shape[0]), last.to(idx.device)]

    def text_bank(self, keys: Tensor, key_lens: Tensor, values: Tensor, value_lens: Tensor, batch: int = 1) -> Bank:
        """Facts as (key text, value text) -> a fresh bank that `batch` rows share.

        keys (M, Lk), values (M, Lv): right-padded token ids, with their lengths (M,). A key is encoded as the
        query that should find it (the reader's token bag at its last token, through the query projection), so
        a question that contains the key's words finds it from the first step of training; a value is the mean
        of its tokens' embeddings (the LM head's own, so a read of it predicts its first token)."""
        if self.reader.bank is None:
            raise ValueError("this model was built with bank.enabled = false (no explicit memory)")
        k = self.reader.text_keys(keys, key_lens, self.embed(keys))  # (M, d_key)
        present = torch.arange(values.shape[1], device=values.device) < value_lens[:, None]
        v = (self.embed(values) * present.unsqueeze(-1)).sum(1) / value_lens[:, None].clamp(min=1)
        v = self.reader.bank.value_proj(v)
        bank = self.new_memory_bank()
        bank.write(k.unsqueeze(0).expand(batch, -1, -1), v.unsqueeze(0).expand(batch, -1, -1))
        return bank


# Checkpoints written before the memory reader owned the memories name their weights by the old attributes.
LEGACY_PREFIXES = {"memory_norm.": "reader.norm.", "query_tokens_norm.": "reader.tokens_norm.",
                   "query_conv.": "reader.tokens_conv.", "query_ema_logit": "reader.ema_logit",
                   "query_embed.": "reader.ema_embed.", "memory.": "reader.product_keys.",
                   "explicit.": "reader.bank.", "core_query_norm.": "reader.core_norm.",
                   "core_query.": "reader.core_query.",
                   # the image encoder was the model's own `vision` before it moved to the visual task
                   "vision.": "encoders.image."}


def migrate_state_dict(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the weights of a checkpoint saved before the restructuring; new names pass through."""
    out = {}
    for k, v in tensors.items():
        for old, new in LEGACY_PREFIXES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def loss_fn(out: Output, targets: Tensor, compute_weight: float = 0.0, memory_weight: float = 0.0,
            n_targets: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy over targets (B, T) (-100 = ignore), plus the router's compute cost, plus (when the
    output carries memory logits) the memory read's own cross-entropy, plus the output's aux losses
    -> (total, lm loss).

    n_targets: divide the summed cross-entropy by this count instead of the local one (data-parallel
    training passes the global count, so every process's loss is its share of the global mean).
    """
    def ce(logits: Tensor) -> Tensor:
        logits = logits.flatten(0, -2)  # (B, T, V) or, from forward(logits_at=), (N, V) with targets (N,)
        if n_targets is None:
            return F.cross_entropy(logits.float(), targets.flatten(), ignore_index=-100)
        summed = F.cross_entropy(logits.float(), targets.flatten(), ignore_index=-100, reduction="sum")
        return summed / n_targets

    lm = ce(out.logits)
    total = lm + compute_weight * out.compute_cost
    if memory_weight and out.memory_logits is not None:
        total = total + memory_weight * ce(out.memory_logits)
    for aux in (out.aux_losses or {}).values():
        total = total + aux
    return total, lm
