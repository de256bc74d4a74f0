"""An explicit memory bank behind a FAISS index: top-k reads over banks too large to read whole (R9).

The native `ExplicitMemoryBank` keeps only the linear-attention sums S = sum phi(k_i) v_i^T and z = sum phi(k_i),
so a read costs the same for 10 or 10^9 entries, but every entry is blurred into one d_key x d_value matrix. This
bank keeps every entry and reads only the k that matter for each query:

    a_i  = phi(q) . phi(k_i)                     (phi = elu + 1, the native read's feature map)
    read = sum_{i in top-k(a)} a_i v_i / (sum_{i in top-k(a)} a_i + eps)

Choice of weighting: the same feature-map similarity as the native read, restricted to its k largest terms, not
a softmax over q . k. The model was trained with the linear-attention weighting, so this read is that same
function with its smallest terms dropped, and with k >= number of entries it *is* the native read (tested); a
softmax would hand the model a read it has never seen. The index therefore stores phi(k_i) and is searched
with phi(q) by inner product. The weights a_i are then recomputed in torch from the stored phi(k_i), so they are
exact (whatever the index approximates is only *which* entries are read) and differentiable in the query.

Shared bank: one bank serves every row of a batch (a knowledge base, not per-sequence state), so `read` takes
queries (B, T, d_key) and returns (B, T, d_value) like `ExplicitMemoryBank.read`; `model(idx, explicit_bank=bank)`,
`prefill`, `step` and `generate` use it unchanged. It is read-only (written once by `build_bank`).

On disk (DIR):

    index.faiss   the FAISS index over phi(keys) (inner product)
    keys.npy      phi(keys) (N, d_key) float32, memory-mapped when read (exact weights)
    values.npy    values (N, d_value) float32, memory-mapped (only the top-k rows of a read are touched)
    facts.txt     the fact texts, one per line, in id order
    meta.json     counts, widths, index kind and parameters, and a fingerprint of the model's projections

Index kinds: "flat" (exact inner-product search, IndexFlatIP), "ivf" (IndexIVFFlat, nlist ~ 4 sqrt(N) lists,
`nprobe` of them searched) and "hnsw" (IndexHNSWFlat, graph search). "auto" picks flat below
`EXACT_MAX_ENTRIES` entries, IVF above.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rmt.integrations import require
from rmt.model.memory import feature_map
from rmt.model import RMT
from rmt.tokenizer import Tokenizer

EXACT_MAX_ENTRIES = 50_000  # auto: exact search up to here (a flat scan of 50k x 64 floats is ~1 ms a query)
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
META_FILE = "meta.json"


def _faiss():
    return require("faiss", "faiss", "The FAISS-backed memory bank (rmt.integrations.faiss_bank)")


@dataclass
class IndexSpec:
    """How to index: kind in INDEX_KINDS; nlist (IVF lists, 0 = ~4 sqrt(N)); nprobe (IVF lists searched);
    hnsw_m (HNSW neighbours per node); ef_search (HNSW search breadth); train_size (IVF k-means sample)."""

    kind: str = "auto"
    nlist: int = 0
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 128
    train_size: int = 100_000

    def resolved(self, n: int) -> "IndexSpec":
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind: expected one of {INDEX_KINDS}, got {self.kind!r}")
        for name in ("nprobe", "hnsw_m", "ef_search", "train_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"index {name}: expected a positive integer, got {getattr(self, name)}")
        kind = self.kind if self.kind != "auto" else ("flat" if n <= EXACT_MAX_ENTRIES else "ivf")
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
        return IndexSpec(kind, nlist, min(self.nprobe, nlist), self.hnsw_m, self.ef_search, self.train_size)


def build_index(keys: np.ndarray, spec: IndexSpec, seed: int = 0):
    """A FAISS index over keys (N, d) float32 (already feature-mapped) whose best match for a query is the key
    with the largest inner product; keys are added in id order.

    IVF gets the inner-product search reduced to a nearest-neighbour one (Bachrach et al., 2014): each key is
    stored as [k, sqrt(R^2 - |k|^2)] with R the largest key norm, each query as [q, 0], so that
    |q' - k'|^2 = |q|^2 + R^2 - 2 q.k and the L2-nearest key is the one with the largest q.k. Why: phi's
    features are all positive, so raw inner products are ruled by key norms and k-means cells (built on L2
    geometry) do not contain a query's best key; measured at 100k entries, IVF-IP agreed with exact top-1 on
    13% of queries at nprobe 32, the transformed IVF-L2 on 98%. `FaissMemoryBank.search` appends the 0.
    """
    faiss = _faiss()
    n, d = keys.shape
    if n == 0:
        raise ValueError("cannot index an empty bank (0 entries)")
    spec = spec.resolved(n)
    chunk = 100_000  # add in chunks, so a memory-mapped key file is never copied whole
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
        transform = lambda x: x  # noqa: E731
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = spec.ef_search
        transform = lambda x: x  # noqa: E731
    else:
        r2 = max(float(np.max(np.einsum("nd,nd->n", keys[i:i + chunk], keys[i:i + chunk]))) for i in range(0, n, chunk))

        def transform(x: np.ndarray) -> np.ndarray:
            extra = np.sqrt(np.maximum(r2 - np.einsum("nd,nd->n", x, x), 0.0))
            return np.hstack([x, extra[:, None]]).astype(np.float32)

        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d + 1), d + 1, spec.nlist, faiss.METRIC_L2)
        index.cp.seed = seed  # k-means initialisation
        rng = np.random.default_rng(seed)
        sample = keys if n <= spec.train_size else keys[np.sort(rng.choice(n, spec.train_size, replace=False))]
        index.train(transform(np.asarray(sample, dtype=np.float32)))
        index.nprobe = spec.nprobe
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(transform(np.asarray(keys[start:start + chunk], dtype=np.float32))))
    return index


def search_index(index, phi_q: np.ndarray, k: int) -> np.ndarray:
    """Top-k ids (M, k) for feature-mapped queries (M, d) from a `build_index` index (-1 where none)."""
    q = np.ascontiguousarray(phi_q, dtype=np.float32)
    if index.d == q.shape[1] + 1:  # the IVF inner-product-to-L2 transform: queries get a 0 coordinate
        q = np.hstack([q, np.zeros((q.shape[0], 1), dtype=np.float32)])
    return index.search(q, k)[1]


def exact_top1(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-1 inner-product ids (Q,) for queries (Q, d) over keys (N, d), by FAISS's flat scan."""
    faiss = _faiss()
    flat = faiss.IndexFlatIP(keys.shape[1])
    flat.add(np.ascontiguousarray(keys, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), 1)[1][:, 0]


def model_fingerprint(model: RMT) -> str:
    """sha256 of the explicit read's projections: a bank is only meaningful for the model that encoded it."""
    if model.reader.bank is None:
        raise ValueError("this model was built with bank.enabled = false: it has no explicit memory to fill")
    h = hashlib.sha256()
    for name, p in sorted(model.reader.bank.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FaissMemoryBank:
    """Read-only explicit bank: FAISS top-k over phi(keys), exact weights over those k (module docstring).

    Satisfies `rmt.model.memory.Bank` (the read side), so `RMT` reads it as any other bank; it is written once,
    by `build_bank`, not at run time.
    """

    def __init__(self, index: Any, keys: np.ndarray, values: np.ndarray, k: int = 32, eps: float = 1e-6,
                 fingerprint: str | None = None) -> None:
        if keys.shape[0] != values.shape[0] or keys.shape[0] != index.ntotal:
            raise ValueError(f"bank sizes disagree: index {index.ntotal}, keys {keys.shape[0]}, values {values.shape[0]}")
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        self.index, self.keys, self.values = index, keys, values
        self.d_key, self.d_value = keys.shape[1], values.shape[1]
        self.k, self.eps, self.fingerprint = k, eps, fingerprint

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def num_entries(self) -> Tensor:
        """(1,) int64: one bank, shared by every row that reads it."""
        return torch.tensor([len(self)])

    def state_bytes(self) -> int:
        """Bytes of the keys and values (memory-mapped from disk: the OS pages in what reads touch)."""
        return int(self.keys.nbytes + self.values.nbytes)

    def search(self, phi_q: np.ndarray, k: int | None = None) -> np.ndarray:
        """Top-k entry ids (M, k) int64 for feature-mapped queries (M, d_key); -1 where fewer than k exist."""
        return search_index(self.index, phi_q, min(k or self.k, len(self)))

    def read(self, queries: Tensor) -> Tensor:
        """queries (B, T, d_key) (before the feature map) -> (B, T, d_value), in the queries' dtype."""
        b, t, dk = queries.shape
        if dk != self.d_key:
            raise ValueError(f"queries have width {dk}, the bank's keys {self.d_key}: was it built by another model?")
        phi_q = feature_map(queries.reshape(b * t, dk).float())  # (M, d_key)
        ids = self.search(phi_q.detach().cpu().numpy())  # (M, k)
        found = torch.from_numpy(ids >= 0)
        flat = np.where(ids >= 0, ids, 0).reshape(-1)
        # Sorted unique rows: one sequential pass over the memory-mapped files instead of M*k random reads.
        rows, inverse = np.unique(flat, return_inverse=True)
        keys = torch.from_numpy(np.asarray(self.keys[rows], dtype=np.float32))[torch.from_numpy(inverse)]
        values = torch.from_numpy(np.asarray(self.values[rows], dtype=np.float32))[torch.from_numpy(inverse)]
        keys = keys.view(*ids.shape, dk).to(phi_q.device)
        values = values.view(*ids.shape, self.d_value).to(phi_q.device)
        a = torch.einsum("md,mkd->mk", phi_q, keys) * found.to(phi_q.device)  # exact weights, 0 for missing ids
        out = torch.einsum("mk,mkv->mv", a, values) / (a.sum(-1, keepdim=True) + self.eps)
        return out.view(b, t, self.d_value).to(queries.dtype)


# ---------------------------------------------------------------------------------------------------- build/load
@torch.no_grad()
def encode_facts(model: RMT, tok: Tokenizer, texts: list[str], batch_size: int = 256
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Fact texts -> (phi(keys) (N, d_key), values (N, d_value)) float32, via `RMT.encode_text` and the explicit
    read's key/value projections (what `RMT.write_memory` would write)."""
    if model.reader.bank is None:
        raise ValueError("this model was built with bank.enabled = false: it has no explicit memory to fill")
    model.eval()
    device = next(model.parameters()).device
    encoded = [tok.encode(t) for t in texts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"fact {empty[0] + 1} is empty; every line of the facts file must hold a fact")
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    keys = np.empty((len(texts), model.reader.bank.d_key), dtype=np.float32)
    values = np.empty((len(texts), model.reader.bank.d_value), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        lengths = torch.tensor([len(encoded[i]) for i in rows])
        # Right padding is safe: every mixer is causal, so a text's last real token never sees the pads after it.
        idx = torch.full((len(rows), int(lengths.max())), tok.pad_id, dtype=torch.long)
        for r, i in enumerate(rows):
            idx[r, : lengths[r]] = torch.tensor(encoded[i])
        e = model.encode_text(idx.to(device), lengths.to(device))  # (b, d_model)
        k, v = model.reader.bank.encode_entries(e)
        keys[rows] = feature_map(k.float()).cpu().numpy()
        values[rows] = v.float().cpu().numpy()
    return keys, values


def build_bank(model: RMT, tok: Tokenizer, texts: list[str], out: str | Path, spec: IndexSpec | None = None,
               seed: int = 0, batch_size: int = 256, checkpoint: str | None = None) -> dict[str, Any]:
    """Encode `texts` and write a bank folder (module docstring) -> the meta dict written to meta.json."""
    faiss = _faiss()
    if not texts:
        raise ValueError("no facts to store (the facts file is empty)")
    spec = (spec or IndexSpec()).resolved(len(texts))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    keys, values = encode_facts(model, tok, texts, batch_size)
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = build_index(keys, spec, seed)
    t_index = time.perf_counter() - t0
    faiss.write_index(index, str(out / "index.faiss"))
    np.save(out / "keys.npy", keys)
    np.save(out / "values.npy", values)
    (out / "facts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    meta = {"entries": len(texts), "d_key": keys.shape[1], "d_value": values.shape[1], "index": asdict(spec),
            "fingerprint": model_fingerprint(model), "checkpoint": checkpoint, "seed": seed,
            "encode_seconds": round(t_encode, 3), "index_seconds": round(t_index, 3)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_bank(directory: str | Path, model: RMT | None = None, k: int = 32) -> FaissMemoryBank:
    """Open a bank folder; keys and values stay on disk (memory-mapped). With `model`, refuse a bank that another
    model's projections encoded (its keys would be meaningless to this model's queries)."""
    faiss = _faiss()
    d = Path(directory)
    for name in (META_FILE, "index.faiss", "keys.npy", "values.npy"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: not a memory bank ({name} is missing; build one with `rmt memory build`)")
    meta = json.loads((d / META_FILE).read_text())
    if model is not None and meta["fingerprint"] != model_fingerprint(model):
        raise ValueError(f"{d}: this bank was encoded by a different model (checkpoint {meta.get('checkpoint')}); "
                         "rebuild it with `rmt memory build` for this checkpoint")
    index = faiss.read_index(str(d / "index.faiss"))
    if hasattr(index, "nprobe"):
        index.nprobe = meta["index"]["nprobe"]
    keys = np.load(d / "keys.npy", mmap_mode="r")
    values = np.load(d / "values.npy", mmap_mode="r")
    return FaissMemoryBank(index, keys, values, k=k, fingerprint=meta["fingerprint"])


def read_facts(path: str | Path) -> list[str]:
    """One fact per line; blank lines are refused (they would be entries with no text)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such facts file")
    lines = p.read_text(encoding="utf-8").splitlines()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{p}: line {blank[0]} is blank; expected one fact per line")
    return lines


# ---------------------------------------------------------------------------------------------------- benchmark
@torch.no_grad()
def synthetic_bank(model: RMT, n: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """phi(keys) (n, d_key) and values (n, d_value) from n random entry embeddings pushed through the model's own
    explicit-read projections: the key distribution the index sees in use, without encoding n texts."""
    gen = torch.Generator().manual_seed(seed)
    keys = np.empty((n, model.reader.bank.d_key), dtype=np.float32)
    values = np.empty((n, model.reader.bank.d_value), dtype=np.float32)
    for start in range(0, n, chunk):
        e = torch.randn(min(chunk, n - start), model.config.d_model, generator=gen)
        k, v = model.reader.bank.encode_entries(e)
        keys[start:start + len(e)] = feature_map(k).numpy()
        values[start:start + len(e)] = v.numpy()
    return keys, values


@torch.no_grad()
def synthetic_queries(model: RMT, n: int, seed: int) -> Tensor:
    """Queries (n, d_key), before the feature map, from random hidden states through the read's query projection."""
    gen = torch.Generator().manual_seed(seed)
    return model.reader.bank.query_proj(torch.randn(n, model.config.d_model, generator=gen))


def top1_agreement(keys: np.ndarray, queries: np.ndarray, spec: IndexSpec, seed: int = 0) -> dict[str, float]:
    """Fraction of queries whose approximate top-1 equals the exact top-1, and the index build seconds."""
    t0 = time.perf_counter()
    index = build_index(keys, spec, seed)
    build = time.perf_counter() - t0
    approx = search_index(index, queries, 1)[:, 0]
    exact = exact_top1(keys, queries)
    # distinct_exact: how many different entries are someone's best match (a bank where every query's best
    # match is the same entry would make agreement meaningless).
    return {"agreement": float((approx == exact).mean()), "build_s": build,
            "distinct_exact": len(np.unique(exact))}


def bench_faiss(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The FAISS section of `rmt bench`: top-1 agreement of the approximate index with exact search, and build
    time and per-query latency of a large bank. Full: agreement at 100,000 entries, latency at 1,000,000; quick:
    both at 20,000. Keys come from `synthetic_bank` (a `tiny`-width RMT's projections).
    """
    try:
        _faiss()
    except ImportError as e:
        return {"skipped": str(e)}
    from rmt.model.config import RMTConfig

    torch.manual_seed(seed)
    model = RMT(RMTConfig()).eval()
    spec = IndexSpec(kind="ivf")
    res: dict[str, Any] = {"index": asdict(spec), "d_key": model.reader.bank.d_key, "threads": torch.get_num_threads()}
    n_agree, n_big, n_queries = (20_000, 20_000, 500) if quick else (100_000, 1_000_000, 2_000)
    raw = synthetic_queries(model, n_queries, seed + 1)
    queries = feature_map(raw).numpy()
    keys, _ = synthetic_bank(model, n_agree, seed)
    agree = top1_agreement(keys, queries, spec, seed)
    res["agreement"] = {"entries": n_agree, "queries": n_queries, "top1_agreement": round(agree["agreement"], 4),
                        "distinct_exact_top1": agree["distinct_exact"],
                        "ivf_build_s": round(agree["build_s"], 2)}
    del keys
    keys, values = synthetic_bank(model, n_big, seed)
    t0 = time.perf_counter()
    index = build_index(keys, spec, seed)
    build = time.perf_counter() - t0
    bank = FaissMemoryBank(index, keys, values, k=32)
    bank.search(queries[:10])  # warm-up
    t0 = time.perf_counter()
    bank.search(queries)
    batched_ms = (time.perf_counter() - t0) * 1e3 / n_queries
    single = []
    for i in range(min(200, n_queries)):
        t0 = time.perf_counter()
        bank.search(queries[i:i + 1])
        single.append((time.perf_counter() - t0) * 1e3)
    # A whole read (search + exact weights + gathering the k values), one query at a time, as a decoding step does.
    reads = []
    for i in range(min(200, n_queries)):
        t0 = time.perf_counter()
        bank.read(raw[i:i + 1].unsqueeze(0))
        reads.append((time.perf_counter() - t0) * 1e3)
    res["large"] = {"entries": n_big, "build_s": round(build, 2), "nlist": spec.resolved(n_big).nlist,
                    "search_ms_per_query_batched": round(batched_ms, 4),
                    "search_ms_single_query_median": round(float(np.median(single)), 4),
                    "read_ms_single_query_median": round(float(np.median(reads)), 4), "k": bank.k}
    return res
