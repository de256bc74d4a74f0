"""The memory reader: every read of memory the model makes, and how each read's query is built.

    query  q = norm(h) [+ token terms]            h: the prelude's state; token terms (optional, see below)
    read   m = product_keys(q) [+ bank(q)]        the prelude's read: the model's preliminary answer signal (R1)
    core   r_k = w_memory * bank(W norm(e + s_k))  the thinking core's re-read at iteration k (optional; with
                                                   core_keys, the bank's entries under the core's own keys)

Token terms add the raw question words to every query, for banks whose entries must be found by a word that
the prelude has not yet learned to carry (`ReaderConfig`): a causal depthwise conv over the last few
normalised token embeddings, and a decayed bag of query-only byte embeddings, s_t = λ s_{t-1} + sqrt(1 - λ²) e_t
(λ per channel group, learned), run through the SSD scan so that training and decoding share its exactness.
Both are causal, so their running state (`ReaderState`) is part of the decoding cache.

The thinking core gets a `CoreRead` (the reader bound to one forward pass's bank and gates) as a collaborator:
it asks it for a read of its current state, and knows nothing of how the query is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RMTConfig, ReaderConfig
from ..scan import scan_chunked
from ..ssm import RMSNorm
from .bank import Bank, ExplicitMemoryRead, WritableBank
from .product_key import ProductKeyMemory


@dataclass
class ReaderState:
    """The token terms' running state while decoding; its size does not depend on the context length."""

    tail: Tensor | None = None  # (B, query_conv - 1, D): the last normalised embeddings
    ema: Tensor | None = None  # (B, D) fp32: the bag of bytes' decayed sums

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.tail, self.ema) if t is not None]


class CoreRead:
    """The thinking core's per-iteration bank read, for one forward pass: state s (B, T, D) -> read (B, T, D).

    The query comes from e + s (the core's input, which carries the prelude's read, plus its state), so the
    first iteration can already ask a follow-up question ("what is next to where red is") rather than start
    from the empty state. Scaled by the router's memory gate like the prelude's read."""

    def __init__(self, reader: "MemoryReader", e: Tensor, w_memory: Tensor, bank: Bank):
        self.reader, self.e, self.w, self.bank = reader, e, w_memory.unsqueeze(-1), bank

    def __call__(self, s: Tensor) -> Tensor:
        r = self.reader
        q = r.core_query(r.core_norm(self.e + s))
        # the same entries under the core's own keys when the bank was written with them (reader.core_keys)
        bank = getattr(self.bank, "core_view", None) or self.bank
        return self.w * r.bank.output(bank.read(q), s.dtype)


class MemoryReader(nn.Module):
    """Owns the product-key memory, the bank projections and the query features. See the module docstring."""

    def __init__(self, config: RMTConfig):
        super().__init__()
        c, rc = config, config.reader
        self.config: ReaderConfig = rc
        self.chunk = c.ssm.chunk
        self.norm = RMSNorm(c.d_model)
        if rc.query_conv:
            self.tokens_norm = RMSNorm(c.d_model)
            self.tokens_conv = nn.Conv1d(c.d_model, c.d_model, rc.query_conv, groups=c.d_model, bias=False)
        if rc.query_ema:
            # A query-only byte embedding (not the LM's, which the head shares and which starts small), summed
            # with decay; every group's time constant tau starts at query_ema (lambda = exp(-1 / tau)).
            lam = torch.full((ReaderConfig.EMA_GROUPS,), math.exp(-1.0 / rc.query_ema))
            self.ema_logit = nn.Parameter(torch.log(lam / (1 - lam)))
            self.ema_embed = nn.Embedding(c.vocab_size, c.d_model)
            nn.init.normal_(self.ema_embed.weight, std=1.0)
        pk = c.product_keys
        self.product_keys = (ProductKeyMemory(c.d_model, n_keys=pk.n_keys, heads=pk.heads, d_key=pk.d_key,
                                              topk=pk.topk) if pk.enabled else None)
        bk = c.bank
        self.bank = (ExplicitMemoryRead(c.d_model, d_key=bk.d_key, heads=bk.heads, read=bk.read, sink=bk.sink)
                     if bk.enabled else None)
        if rc.core_reads:
            # The core's own query into the bank (its keys and values are the bank's): the state asks something
            # else than the prelude did, e.g. "what is near the place I found", not "where is red".
            self.core_norm = RMSNorm(c.d_model)
            self.core_query = nn.Linear(c.d_model, bk.d_key, bias=False)
        if rc.core_keys:
            # ... and, optionally, its own keys: the prelude read's keys start from what a patch shows (so that
            # "red" is found by colour), while a follow-up ("the one closest to it") must score where a patch is.
            self.core_key = nn.Linear(c.d_model, bk.d_key, bias=False)

    # --------------------------------------------------------------------------------- queries
    def token_terms(self, idx: Tensor, emb: Tensor, state: ReaderState | None = None
                    ) -> tuple[Tensor | None, ReaderState]:
        """What the raw tokens add to every query: ids (B, T), their embeddings (B, T, D), the state before them
        -> (term (B, T, D) or None when the config has no token terms, the state after them). Causal."""
        rc, term = self.config, None
        tail, ema = (state.tail, state.ema) if state is not None else (None, None)
        if rc.query_conv:
            x = self.tokens_norm(emb)
            w = rc.query_conv
            if tail is None:
                tail = x.new_zeros(x.shape[0], w - 1, x.shape[2])
            window = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, w - 1 + T, D)
            term = F.conv1d(window.transpose(1, 2), self.tokens_conv.weight, groups=x.shape[2]).transpose(1, 2)
            tail = window[:, window.shape[1] - (w - 1):]
        if rc.query_ema:
            b, t = idx.shape
            g, d = ReaderConfig.EMA_GROUPS, emb.shape[-1]
            log_lam = F.logsigmoid(self.ema_logit.float())  # (G,) log lambda < 0
            # the scale keeps every group's size at that of one embedding, whatever its time constant
            scale = (1 - torch.exp(2 * log_lam)).sqrt()
            inp = self.ema_embed(idx).float().view(b, t, g, d // g, 1) * scale[:, None, None]  # (B, T, G, P, 1)
            ones = inp.new_ones(b, t, g, 1)
            s0 = None if ema is None else ema.float().view(b, g, d // g, 1)
            sums, final = scan_chunked(inp.squeeze(-1), log_lam.expand(b, t, g), ones, ones, s0, chunk=self.chunk)
            ema = final.reshape(b, d)
            pooled = sums.reshape(b, t, d).to(emb.dtype)
            term = pooled if term is None else term + pooled
        return term, ReaderState(tail, ema)

    # --------------------------------------------------------------------------------- reads
    def read(self, h: Tensor, terms: Tensor | None, bank: Bank | None) -> Tensor:
        """The prelude's read: state h (B, T, D), token terms (B, T, D) or None, a bank or None -> m (B, T, D)."""
        if not self.config.query_state:
            q = terms  # the config guarantees token terms exist
        else:
            q = self.norm(h)
            if terms is not None:
                q = q + terms
        m = self.product_keys(q) if self.product_keys is not None else torch.zeros_like(h)
        if bank is not None:
            if self.bank is None:
                raise ValueError("an explicit memory bank was given but the config has bank.enabled = false")
            m = m + self.bank(q, bank)
        return m

    def core_read(self, e: Tensor, w_memory: Tensor, bank: Bank | None) -> CoreRead | None:
        """The core's re-read for this pass (e (B, T, D), w_memory (B, T)), or None when it reads nothing."""
        if not (self.config.core_reads and bank is not None):
            return None
        return CoreRead(self, e, w_memory, bank)

    def text_keys(self, ids: Tensor, lens: Tensor, emb: Tensor) -> Tensor:
        """Bank keys for key texts: ids (M, L) right-padded, lengths (M,), their embeddings (M, L, D) -> (M, d_key):
        the query projection of the token terms at each text's last token, i.e. the query a question made of
        exactly these words would send (the prelude's state is not part of a key)."""
        if self.bank is None:
            raise ValueError("this model was built with bank.enabled = false (no explicit memory)")
        if not self.config.query_ema:
            raise ValueError("text keys need the reader's token bag (reader.query_ema > 0)")
        terms, _ = self.token_terms(ids, emb)
        last = terms[torch.arange(ids.shape[0], device=ids.device), (lens - 1).to(ids.device)]
        return self.bank.query_proj(last)

    # --------------------------------------------------------------------------------- the bank
    def new_bank(self) -> WritableBank:
        if self.bank is None:
            raise ValueError("this model was built with bank.enabled = false (no explicit memory)")
        return self.bank.new_bank()

    def write(self, bank: WritableBank, entries: Tensor, mask: Tensor | None = None, key_entries: Tensor | None = None
              ) -> None:
        """Write entry embeddings (B, M, D) into ``bank``; keys from ``key_entries`` (B, M, D) when given."""
        if self.bank is None:
            raise ValueError("this model was built with bank.enabled = false (no explicit memory)")
        keys, values = self.bank.encode_entries(entries, key_entries)
        bank.write(keys, values, mask)
        if self.config.core_keys:
            if bank.core_view is None:
                bank.core_view = self.bank.new_bank()
            bank.core_view.write(self.core_key(entries), values, mask)
