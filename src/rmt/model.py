"""The Recurrent Memory Transformer, whole, in one file.

    tokens ─ embed ─ prelude ─┬─ router  p(memory, think, both)          -> w_memory, w_think
                              ├─ memory read (product keys [+ explicit bank]) scaled by w_memory
                              │      e = h + w_memory * m                 (the preliminary answer signal)
                              └─ thinking core × K on e, gated by w_think -> s
                 coda(e + s) ── norm ── LM head (tied to the embedding)

Every layer mixes tokens with a selective SSM (``ssm.py``), so cost is linear in length and generation
keeps a constant-size state (``Cache``). Ablations are arguments, not forks: ``memory=False`` never reads
memory, ``think_iters=0`` never calls the core, ``router="memory"|"think"|"both"`` forces a branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmt.config import RMTConfig
from rmt.memory import ExplicitMemoryBank, ExplicitMemoryRead, ProductKeyMemory, SoftmaxMemoryBank
from rmt.router import Router, Routing
from rmt.scan import scan_chunked
from rmt.ssm import Block, MixerState, RMSNorm
from rmt.thinking import ExitRule, ThinkingCore
from rmt.vision import PatchEncoder

Bank = ExplicitMemoryBank | SoftmaxMemoryBank
QUERY_EMA_GROUPS = 8  # channel groups of memory_query_ema, one time constant each
PREFILL_CHUNK = 4096  # prompt tokens `generate` reads per parallel pass (a multiple of every ssm_chunk in use)


@dataclass
class Output:
    logits: Tensor  # (B, T, V)
    routing: Routing
    think_iters: Tensor  # (B, T) thinking iterations each token actually ran
    compute_cost: Tensor  # scalar: mean over tokens of w_think * K (what the router pays for thinking)
    memory_logits: Tensor | None = None  # (B, T, V) the memory read's own prediction, when asked for
    # scalar: the image encoder's pixel-reconstruction loss, already weighted by config.vision_recon (training
    # with images only); `loss_fn` adds it to the total
    recon_loss: Tensor | None = None


@dataclass
class Cache:
    """Everything generation needs to continue a batch of sequences; its size never depends on their length."""

    prelude: list[MixerState]
    core: list[list[MixerState]]  # [iteration][layer]
    coda: list[MixerState]
    length: int = 0
    explicit_bank: Bank | None = None
    query_tail: Tensor | None = None  # (B, w - 1, D): the last normalised embeddings, for memory_query_conv
    query_ema: Tensor | None = None  # (B, D) fp32: the query bytes' decayed sums, for memory_query_ema

    def tensors(self) -> list[Tensor]:
        states = self.prelude + [s for it in self.core for s in it] + self.coda
        extra = [t for t in (self.query_tail, self.query_ema) if t is not None]
        return [t for s in states for t in (s.ssm, s.conv)] + extra

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


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
        ssm = dict(expand=c.ssm_expand, head_dim=c.ssm_head_dim, d_state=c.ssm_d_state, chunk=c.ssm_chunk)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.prelude = nn.ModuleList([Block(c.d_model, hidden, conv_width=c.ssm_conv, **ssm) for _ in range(c.n_prelude)])
        self.router = Router(c.d_model, c.router_threshold, c.router_init_think)
        self.memory_norm = RMSNorm(c.d_model)
        if c.memory_query_conv:
            self.query_tokens_norm = RMSNorm(c.d_model)
            self.query_conv = nn.Conv1d(c.d_model, c.d_model, c.memory_query_conv, groups=c.d_model, bias=False)
        if c.memory_query_ema:
            # The question's bag of bytes, streamed: a query-only byte embedding (not the LM's, which the head
            # shares and which starts small), summed with decay. Every group's time constant tau starts at
            # memory_query_ema (decay lambda = exp(-1 / tau) = sigmoid(logit)) and is learned per group.
            lam = torch.full((QUERY_EMA_GROUPS,), math.exp(-1.0 / c.memory_query_ema))
            self.query_ema_logit = nn.Parameter(torch.log(lam / (1 - lam)))
            self.query_embed = nn.Embedding(c.vocab_size, c.d_model)
            nn.init.normal_(self.query_embed.weight, std=1.0)
        self.memory = (ProductKeyMemory(c.d_model, n_keys=c.mem_n_keys, heads=c.mem_heads, d_key=c.mem_d_key,
                                        topk=c.mem_topk) if c.memory else None)
        self.explicit = (ExplicitMemoryRead(c.d_model, d_key=c.explicit_d_key, heads=c.explicit_heads,
                                            read=c.explicit_read, sink=c.explicit_sink) if c.explicit_memory else None)
        self.vision = (PatchEncoder(c.d_model, c.vision_image_size, c.vision_patch, c.vision_channels,
                                    c.vision_stem, c.vision_conv_layers, recon=c.vision_recon > 0)
                       if c.vision else None)
        if c.core_reads_memory:
            # The core's own query into the explicit bank (its keys and values are the bank's): the state asks
            # something else than the prelude did, e.g. "what is near the place I found", not "where is red".
            self.core_query_norm = RMSNorm(c.d_model)
            self.core_query = nn.Linear(c.d_model, c.explicit_d_key, bias=False)
        if c.core_read_distance:
            # beta per head from the core's normalised query input; zero at the start, so the core's reads begin
            # as plain content reads and the distance term grows only when "near/far from it" pays off.
            self.core_distance = nn.Linear(c.d_model, c.explicit_heads)
            nn.init.zeros_(self.core_distance.weight)
            nn.init.zeros_(self.core_distance.bias)
        self.core = ThinkingCore(c.d_model, c.n_core, hidden, **ssm)
        self.coda = nn.ModuleList([Block(c.d_model, hidden, conv_width=c.ssm_conv, **ssm) for _ in range(c.n_coda)])
        self.norm = RMSNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    # ------------------------------------------------------------------------------------- pieces
    def num_params(self, exclude_memory_values: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_memory_values and self.memory is not None:
            n -= sum(p.numel() for p in self.memory.value_parameters())
        return n

    def _query_tokens(self, idx: Tensor, emb: Tensor, tail: Tensor | None = None, ema: Tensor | None = None
                      ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """What the raw tokens add to every memory query: ids (B, T) and their embeddings (B, T, D) ->
        (term (B, T, D) or None, new conv tail (B, w - 1, D) or None, new decayed-sum state (B, D) or None), causal.

        memory_query_conv: a depthwise conv over the last w normalised embeddings; `tail` holds the ones before
        these (zeros at the start). memory_query_ema: s_t = lambda s_{t-1} + sqrt(1 - lambda^2) e_t over the
        query byte embeddings e (lambda per channel group; the scale keeps every group's size at that of one
        embedding, whatever its time constant); `ema` is the state before these (zeros at the start). The sums run
        through the SSD scan (one head per group, N = 1), so training and decoding share its exactness.
        All None when both options are off.
        """
        c = self.config
        term, new_tail, new_ema = None, None, None
        if c.memory_query_conv:
            x = self.query_tokens_norm(emb)
            w = c.memory_query_conv
            if tail is None:
                tail = x.new_zeros(x.shape[0], w - 1, x.shape[2])
            window = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, w - 1 + T, D)
            term = F.conv1d(window.transpose(1, 2), self.query_conv.weight, groups=x.shape[2]).transpose(1, 2)
            new_tail = window[:, window.shape[1] - (w - 1):]
        if c.memory_query_ema:
            b, t = idx.shape
            g, d = QUERY_EMA_GROUPS, c.d_model
            log_lam = F.logsigmoid(self.query_ema_logit.float())  # (G,) log lambda < 0
            scale = (1 - torch.exp(2 * log_lam)).sqrt()
            inp = self.query_embed(idx).float().view(b, t, g, d // g, 1) * scale[:, None, None]  # (B, T, G, P, 1)
            ones = inp.new_ones(b, t, g, 1)
            state = None if ema is None else ema.float().view(b, g, d // g, 1)
            sums, final = scan_chunked(inp.squeeze(-1), log_lam.expand(b, t, g), ones, ones, state,
                                       chunk=c.ssm_chunk)
            new_ema = final.reshape(b, d)
            pooled = sums.reshape(b, t, d).to(emb.dtype)
            term = pooled if term is None else term + pooled
        return term, new_tail, new_ema

    def _memory_read(self, h: Tensor, bank: Bank | None, qtok: Tensor | None = None
                     ) -> tuple[Tensor, Tensor | None]:
        """The prelude's memory read: h (B, T, D) or (B, D) -> (read (same shape), focus or None), focus (B, T, P)
        or (B, P) being where the read looked in the explicit bank (only with core_read_distance)."""
        focus = None
        if not self.config.memory_query_state:
            q = qtok  # the config guarantees token terms exist
        else:
            q = self.memory_norm(h)
            if qtok is not None:
                q = q + qtok
        m = self.memory(q) if self.memory is not None else torch.zeros_like(h)
        if bank is not None:
            if self.explicit is None:
                raise ValueError("an explicit memory bank was given but the config has explicit_memory = false")
            # The bank reads (B, T, D) queries; a decoding step has no T axis.
            q3 = q.unsqueeze(1) if q.dim() == 2 else q
            if self.config.core_read_distance and getattr(bank, "positions", None) is not None:
                read, weights = self.explicit(q3, bank, return_weights=True)
                focus = bank.focus(weights)
                focus = focus.squeeze(1) if q.dim() == 2 else focus
            else:
                read = self.explicit(q3, bank)
            m = m + (read.squeeze(1) if q.dim() == 2 else read)
        return m, focus

    def _memory_branch(self, h: Tensor, routing: Routing, memory: bool, bank: Bank | None,
                       qtok: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """-> (e = h + w_memory * m, the read m, where it looked (see `_memory_read`)); with memory off,
        (h, None, None) and memory is never touched."""
        if not memory:
            return h, None, None
        m, focus = self._memory_read(h, bank, qtok)
        return h + routing.w_memory.unsqueeze(-1) * m, m, focus

    def _core_reread(self, e: Tensor, routing: Routing, memory: bool, bank: Bank | None,
                     focus: Tensor | None = None):
        """The core's per-iteration memory read, s (B, T, D) or (B, D) -> w_memory * read (same shape), or None
        when the core does not read memory (config off, memory off, or no bank).

        The query comes from e + s (the core's input, which carries the prelude's read, plus its state), so the
        first iteration can already ask a follow-up question (e.g. "what is closest to where red is") rather
        than starting from the empty state. With core_read_distance and a `focus` (where the prelude's read
        looked), every entry's score in head h gets -beta_h * (squared distance from the focus), beta from the
        same normalised input as the query."""
        if not (self.config.core_reads_memory and memory and bank is not None):
            return None
        w = routing.w_memory.unsqueeze(-1)

        def reread(s: Tensor) -> Tensor:
            step = s.dim() == 2  # a decoding step has no T axis; the bank reads (B, T, .)
            x = self.core_query_norm(e + s)
            x = x.unsqueeze(1) if step else x
            q = self.core_query(x)
            if focus is None:
                read = bank.read(q)
            else:
                beta = self.core_distance(x)  # (B, T, H)
                d2 = bank.distance2(focus.unsqueeze(1) if step else focus)  # (B, T, M)
                read = bank.read(q, bias=-beta.unsqueeze(-1) * d2.unsqueeze(2))  # bias (B, T, H, M)
            read = read.squeeze(1) if step else read
            return w * self.explicit.out_proj(read.to(self.explicit.out_proj.weight.dtype)).to(s.dtype)

        return reread

    def _head(self, x: Tensor) -> Tensor:
        return self.norm(x) @ self.embed.weight.T

    def _iters(self, think_iters: int | None) -> int:
        k = self.config.think_iters if think_iters is None else think_iters
        if k < 0:
            raise ValueError(f"think_iters must be >= 0, got {k}")
        return k

    # ------------------------------------------------------------------------------------- forward
    def forward(self, idx: Tensor, *, think_iters: int | None = None, memory: bool = True, router: str = "learned",
                explicit_bank: Bank | None = None, exit_rule: ExitRule | None = None,
                hard_routing: bool | None = None, bptt: int | None = None, memory_logits: bool = False,
                images: Tensor | None = None) -> Output:
        """idx (B, T) token ids -> Output with logits (B, T, V).

        think_iters: K (default config.think_iters; 0 = recurrence off, the core is never called).
        memory: False = no memory read at all. router: "learned" or a forced branch.
        hard_routing: skip the core for tokens below the router threshold (default: when not training).
        bptt: back-propagate through only the last this-many iterations (training).
        memory_logits: also return the memory read's own next-token prediction (head(norm(m))), which
        training can score so that the read carries the answer by itself (R1: the preliminary answer signal).
        images: (B, S, S, 3) uint8, one per row: encoded and written into a fresh explicit bank that this
        call reads (instead of explicit_bank); with memory=False they are not even encoded.
        """
        K = self._iters(think_iters)
        recon = None
        if images is not None:
            if explicit_bank is not None:
                raise ValueError("give images or explicit_bank, not both")
            if memory:
                explicit_bank, entries = self._image_bank(images)
                if self.training and self.config.vision_recon > 0:
                    recon = self.config.vision_recon * self.vision.reconstruction_loss(images, entries)
        hard = (not self.training) if hard_routing is None else hard_routing
        h = self.embed(idx)
        qtok = self._query_tokens(idx, h)[0] if memory else None  # only memory reads use it
        for layer in self.prelude:
            h = layer(h)
        routing = self.router(h, mode=router, hard=hard)
        e, m, focus = self._memory_branch(h, routing, memory, explicit_bank, qtok)
        mem_logits = self._head(m) if (memory_logits and m is not None) else None
        if K > 0 and bool(routing.think_mask.any()):
            s, used = self.core(e, routing.w_think, K, bptt=bptt, exit_rule=exit_rule, init=self.config.think_init,
                                readout=lambda st: self._head(e + st),
                                reread=self._core_reread(e, routing, memory, explicit_bank, focus))
            x = e + s
        else:
            x, used = e, torch.zeros(idx.shape, device=idx.device)
        for layer in self.coda:
            x = layer(x)
        cost = (routing.w_think.float() * K).mean()
        return Output(self._head(x), routing, used, cost, mem_logits, recon)

    # ------------------------------------------------------------------------------------- generation
    def new_cache(self, batch: int, think_iters: int | None = None, device=None,
                  explicit_bank: Bank | None = None) -> Cache:
        K = self._iters(think_iters)
        return Cache(prelude=[l.mixer.empty_state(batch, device=device) for l in self.prelude],
                     core=self.core.empty_states(batch, K, device=device),
                     coda=[l.mixer.empty_state(batch, device=device) for l in self.coda],
                     explicit_bank=explicit_bank)

    @torch.no_grad()
    def step(self, token: Tensor, cache: Cache, *, memory: bool = True, router: str = "learned",
             exit_rule: ExitRule | None = None) -> tuple[Tensor, Tensor, Cache]:
        """Decode one token: token (B,) -> logits (B, V), thinking iterations run (B,), updated cache.

        O(1) in the context length. A token the router sends past thinking (w_think below the
        threshold) does not run the core at all; when no token of the batch thinks, the core is skipped.
        """
        h = self.embed(token)
        qtok, tail, ema = self._query_tokens(token.unsqueeze(1), h.unsqueeze(1), cache.query_tail,
                                            cache.query_ema)
        qtok = qtok.squeeze(1) if qtok is not None else None
        prelude = []
        for layer, st in zip(self.prelude, cache.prelude):
            h, st = layer.step(h, st)
            prelude.append(st)
        routing = self.router(h, mode=router, hard=True)
        e, _, focus = self._memory_branch(h, routing, memory, cache.explicit_bank, qtok)
        core_states = cache.core
        if cache.core and bool(routing.think_mask.any()):
            s, used, core_states = self.core.step(e, routing.w_think, cache.core, exit_rule=exit_rule,
                                                  readout=lambda st: self._head(e + st),
                                                  reread=self._core_reread(e, routing, memory, cache.explicit_bank,
                                                                           focus))
            x = e + s
        else:
            x, used = e, torch.zeros(token.shape, device=token.device)
        coda = []
        for layer, st in zip(self.coda, cache.coda):
            x, st = layer.step(x, st)
            coda.append(st)
        new = Cache(prelude, core_states, coda, cache.length + 1, cache.explicit_bank, tail, ema)
        return self._head(x), used, new

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
        else:
            if len(cache.core) != K:
                raise ValueError(f"prefill: the cache was made for think_iters={len(cache.core)}, got {K}")
            explicit_bank = cache.explicit_bank
            cache = Cache(list(cache.prelude), [list(it) for it in cache.core], list(cache.coda), cache.length,
                          explicit_bank, cache.query_tail, cache.query_ema)
        h = self.embed(idx)
        qtok, cache.query_tail, cache.query_ema = self._query_tokens(idx, h, cache.query_tail, cache.query_ema)
        start = cache.length > 0  # states to continue from (a fresh cache's are empty: same result, less work)
        for i, layer in enumerate(self.prelude):
            h, cache.prelude[i] = layer(h, state=cache.prelude[i] if start else None, return_state=True)
        routing = self.router(h, mode=router, hard=True)
        e, _, focus = self._memory_branch(h, routing, memory, explicit_bank, qtok)
        used = torch.zeros(idx.shape, device=idx.device)
        x = e
        if K > 0 and bool(routing.think_mask.any()):  # otherwise the core's empty states are already exact
            s, used, cache.core = self.core(e, routing.w_think, K, exit_rule=exit_rule, keep_states=True,
                                            readout=lambda st: self._head(e + st),
                                            reread=self._core_reread(e, routing, memory, explicit_bank, focus),
                                            states=cache.core if start else None)
            x = e + s
        for i, layer in enumerate(self.coda):
            x, cache.coda[i] = layer(x, state=cache.coda[i] if start else None, return_state=True)
        cache.length += idx.shape[1]
        return self._head(x[:, -1]), used, cache

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
    def new_memory_bank(self) -> Bank:
        if self.explicit is None:
            raise ValueError("this model was built with explicit_memory = false")
        return self.explicit.new_bank()

    def encode_image(self, images: Tensor) -> Tensor:
        """Images (B, S, S, 3) uint8 -> patch embeddings (B, M, D), M = (S / vision_patch)^2."""
        if self.vision is None:
            raise ValueError("this model was built with vision = false (no image encoder)")
        return self.vision(images)

    def image_memory_bank(self, images: Tensor) -> Bank:
        """A fresh explicit bank holding each row's image patches: images (B, S, S, 3) -> bank of B rows."""
        return self._image_bank(images)[0]

    def _image_bank(self, images: Tensor) -> tuple[Bank, Tensor]:
        """-> (a fresh bank holding the images' patches, the patch entries (B, M, D) written into it)."""
        if self.vision is None:
            raise ValueError("this model was built with vision = false (no image encoder)")
        bank = self.new_memory_bank()
        key_inputs, entries = self.vision.encode(images)
        positions = None
        if self.config.core_read_distance:  # each patch's (x, y) in [-1, 1]
            positions = self.vision.coords[:, :2].expand(images.shape[0], -1, -1)
        self.write_memory(bank, entries, key_entries=key_inputs, positions=positions)
        return bank, entries

    def write_memory(self, bank: Bank, entries: Tensor, mask: Tensor | None = None,
                     key_entries: Tensor | None = None, positions: Tensor | None = None) -> None:
        """Write entry embeddings (B, M, D) — encoded facts, image patches — into ``bank``; key_entries (B, M, D),
        when given, are what the keys are computed from instead of the entries (an image's content-first keys);
        positions (B, M, P), softmax banks only: where each entry is (see `core_read_distance`)."""
        if self.explicit is None:
            raise ValueError("this model was built with explicit_memory = false")
        keys, values = self.explicit.encode_entries(entries, key_entries)
        if positions is not None:
            bank.write(keys, values, mask, positions=positions)
        else:
            bank.write(keys, values, mask)

    def encode_text(self, idx: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Entry embeddings for texts (M, T) -> (M, D): the prelude's state at each text's last token."""
        h = self.embed(idx)
        for layer in self.prelude:
            h = layer(h)
        last = (lengths - 1) if lengths is not None else torch.full((idx.shape[0],), idx.shape[1] - 1)
        return h[torch.arange(idx.shape[0]), last.to(idx.device)]


def loss_fn(out: Output, targets: Tensor, compute_weight: float = 0.0, memory_weight: float = 0.0,
            n_targets: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy over targets (B, T) (-100 = ignore), plus the router's compute cost, plus (when the
    output carries memory logits) the memory read's own cross-entropy, plus (when it carries one) the image
    encoder's weighted reconstruction loss -> (total, lm loss).

    n_targets: divide the summed cross-entropy by this count instead of the local one (data-parallel
    training passes the global count, so every process's loss is its share of the global mean).
    """
    def ce(logits: Tensor) -> Tensor:
        if n_targets is None:
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        summed = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        return summed / n_targets

    lm = ce(out.logits)
    total = lm + compute_weight * out.compute_cost
    if memory_weight and out.memory_logits is not None:
        total = total + memory_weight * ce(out.memory_logits)
    if out.recon_loss is not None:
        total = total + out.recon_loss
    return total, lm
