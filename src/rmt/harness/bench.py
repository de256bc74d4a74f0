"""`rmt bench`: what the architecture promises (R4), measured side by side with the GPT baseline.

Every figure is the median of several repetitions after a warm-up, on this machine, in this run:

- matmul_peak_gflops: fp32 GEMM of 2048² matrices (the ceiling MFU is measured against);
- train_tokens_per_s: one training step (forward + backward) of a single sequence of each length;
- generate_ms_per_token / generate_state_bytes: decoding after a context of each length, the contexts
  timed interleaved (see ``generate_costs``); state bytes are the memory the decoding state holds alive;
- memory_lookup_ms: 4,096 product-key queries against banks of each size; explicit_per_query: the cost of
  one linear-attention read against a bank with that many entries written;
- mfu: achieved FLOP/s of an RMT training step at the `small` preset and 2,048 tokens over the GEMM peak
  (FLOPs counted as 6 x active parameters x tokens, the usual estimate);
- peak_rss_mb: peak resident memory of a fresh process that runs one RMT training step of that length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from rmt.baselines.gpt import GPT, GPTConfig
from rmt.model.memory import ExplicitMemoryBank, ProductKeyMemory
from rmt.model import RMT, loss_fn
from rmt.model.presets import count_params, preset
from rmt.rundir import claim_folder


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() over reps runs, after warm-up runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(reps: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: a @ b, reps, warmup=2) / 1e9


def models(seed: int = 0) -> tuple[RMT, GPT]:
    torch.manual_seed(seed)
    rmt = RMT(preset("tiny"))
    # A GPT of about the same parameter count as RMT without its memory table (position table excluded).
    gpt = GPT(GPTConfig(n_layer=6, n_head=4, d_model=128, max_len=16384))
    return rmt, gpt


def train_step(model, idx: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    if isinstance(model, RMT):
        out = model(idx, think_iters=2, bptt=2)
        loss_fn(out, idx)[0].backward()
    else:
        logits, _ = model(idx)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()


def held_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of memory the tensors keep alive: each distinct storage once, whole.

    Not numel x element size: a view pins its whole base storage, so a "constant-size" state made of views
    into a prompt's activations would hold O(context) memory while its numel stayed constant.
    """
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[(t.device, st.data_ptr())] = st.nbytes()
    return sum(storages.values())


@torch.no_grad()
def _decoder(model, ctx: int, n: int) -> tuple[Callable[[], float], int]:
    """Prefill a random context of ctx tokens -> (decode, state bytes).

    decode() runs n steps of one fixed token from that same cache (so every call does the same work) and
    returns the thinking-core iterations RMT ran over them (0 for the transformer): the router decides per
    token, so a context that sent more tokens to thinking would cost more for a real reason, reported apart.
    """
    idx = torch.randint(0, 256, (1, ctx))
    tok = torch.tensor([65])
    if isinstance(model, RMT):
        _, _, cache = model.prefill(idx)

        def decode() -> float:
            c, iters = cache, 0.0
            for _ in range(n):
                _, used, c = model.step(tok, c)
                iters += float(used.sum())
            return iters
        return decode, held_bytes(cache.tensors())
    _, cache = model(idx)

    def decode_gpt() -> float:
        c, pos = cache, ctx
        for _ in range(n):
            _, c = model(tok[None], c, pos)
            pos += 1
        return 0.0
    return decode_gpt, GPT.cache_bytes(cache)


@torch.no_grad()
def generate_ms(model, ctx: int, n: int = 32) -> tuple[float, int]:
    """ms per decoded token after a context of ctx tokens (median of 3 runs of n tokens), state bytes."""
    decode, state_bytes = _decoder(model, ctx, n)
    return timed(decode, 3) / n * 1e3, state_bytes


@torch.no_grad()
def generate_costs(model, contexts: list[int], n: int = 32, rounds: int = 7) -> dict[int, dict]:
    """Decoding cost after each context, measured interleaved: ctx -> {ms, ms_rounds, state_bytes, think_iters}.

    All contexts are prefilled first; then each round times one decode of n tokens per context, in an order
    rotated every round, and ms is the median over rounds. Timing the contexts one after the other instead
    lets a shared CPU's drifting load (or whatever ran just before) land on one context only; interleaving
    spreads it over all of them, so their ratio is a comparison within the same moments.
    think_iters: thinking-core iterations per decoded token (RMT), to show the compared work is the same.
    """
    decoders = {ctx: _decoder(model, ctx, n) for ctx in contexts}
    iters = {ctx: dec() / n for ctx, (dec, _) in decoders.items()}  # also the warm-up run of each
    ms: dict[int, list[float]] = {ctx: [] for ctx in contexts}
    for r in range(rounds):
        for ctx in contexts[r % len(contexts):] + contexts[:r % len(contexts)]:
            t0 = time.perf_counter()
            decoders[ctx][0]()
            ms[ctx].append((time.perf_counter() - t0) / n * 1e3)
    return {ctx: {"ms": statistics.median(ms[ctx]), "ms_rounds": ms[ctx], "state_bytes": decoders[ctx][1],
                  "think_iters": iters[ctx]} for ctx in contexts}


@torch.no_grad()
def lookup_ms(n_keys: int, reps: int) -> float:
    torch.manual_seed(0)
    mem = ProductKeyMemory(128, n_keys=n_keys, heads=4, topk=16)
    x = torch.randn(1, 4096, 128)
    return timed(lambda: mem(x), reps) * 1e3


@torch.no_grad()
def explicit_ms_per_query(entries: int, reps: int) -> float:
    bank = ExplicitMemoryBank(64, 128)
    for i in range(0, entries, 10_000):  # written in pieces, as a growing bank would be
        m = min(10_000, entries - i)
        bank.write(torch.randn(1, m, 64), torch.randn(1, m, 128))
    q = torch.randn(1, 4096, 64)
    return timed(lambda: bank.read(q), reps) * 1e3 / 4096


def mfu(peak: float, reps: int) -> float:
    """6 x (active parameters, with the core's counted once per iteration) x tokens, per second, over peak."""
    cfg = preset("small", {"core": {"iters": 2}})
    model = RMT(cfg)
    idx = torch.randint(0, 256, (1, 2048))
    sec = timed(lambda: train_step(model, idx), reps)
    core = sum(p.numel() for p in model.core.parameters())
    per_token = count_params(cfg)["active_per_token"] + (cfg.core.iters - 1) * core
    return 6 * per_token * 2048 / sec / 1e9 / peak


def peak_rss_mb(length: int) -> float:
    """Run one tiny-preset training step of `length` tokens in a fresh process and read its peak RSS.

    VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
    """
    code = ("import re, torch; from rmt.harness.bench import models, train_step; m, _ = models(); "
            f"train_step(m, torch.randint(0, 256, (1, {length}))); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # kB -> MB


# What `rmt bench` writes in its folder (see `rmt.rundir`).
BENCH_OUTPUTS = ("bench.json", "bench.png")


def run_bench(quick: bool = False, out: str | Path = "runs/bench", seed: int = 0,
              log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Measure and write OUT/bench.json and OUT/bench.png. OUT is locked meanwhile; one holding an earlier
    benchmark is refused up front (before minutes of measuring) unless `overwrite` (moved to OUT.old-N)."""
    with claim_folder(out, markers=BENCH_OUTPUTS, overwrite=overwrite):
        return _run_bench(quick, Path(out), seed, log)


def _run_bench(quick: bool, out: Path, seed: int, log: Callable[[str], None]) -> dict:
    torch.manual_seed(seed)
    reps = 2 if quick else 5
    lengths = [512, 2048] if quick else [512, 2048, 8192, 16384]
    contexts = [128, 2048] if quick else [128, 2048, 8192]
    res: dict = {"quick": quick, "threads": torch.get_num_threads(), "torch": torch.__version__}
    res["matmul_peak_gflops"] = peak = matmul_peak_gflops(reps)
    log(f"fp32 GEMM peak: {peak:.1f} GFLOP/s")
    rmt, gpt = models(seed)
    res["params"] = {"rmt": rmt.num_params(), "rmt_without_memory_values": rmt.num_params(True),
                     "transformer": gpt.num_params(), "transformer_without_positions": gpt.num_params()
                     - gpt.pos.weight.numel()}
    res["train_tokens_per_s"] = {"rmt": {}, "transformer": {}}
    for name, model in (("rmt", rmt), ("transformer", gpt)):
        for L in lengths:
            idx = torch.randint(0, 256, (1, L))
            sec = timed(lambda: train_step(model, idx), max(1, reps // 2 if L >= 8192 else reps))
            res["train_tokens_per_s"][name][str(L)] = L / sec
            log(f"train {name:11s} {L:6d} tokens: {L / sec:9.0f} tokens/s")
    gen = {k: {"rmt": {}, "transformer": {}} for k in ("generate_ms_per_token", "generate_ms_per_token_rounds",
                                                       "generate_state_bytes", "generate_think_iters_per_token")}
    for name, model in (("rmt", rmt.eval()), ("transformer", gpt.eval())):
        for ctx, c in generate_costs(model, contexts, rounds=3 if quick else 7).items():
            for key, field in (("generate_ms_per_token", "ms"), ("generate_ms_per_token_rounds", "ms_rounds"),
                               ("generate_state_bytes", "state_bytes"), ("generate_think_iters_per_token",
                                                                         "think_iters")):
                gen[key][name][str(ctx)] = c[field]
            log(f"generate {name:11s} after {ctx:5d}: {c['ms']:7.2f} ms/token (rounds {min(c['ms_rounds']):.2f}"
                f"-{max(c['ms_rounds']):.2f}), state {c['state_bytes']:,} bytes, {c['think_iters']:.1f} core iters/token")
    res.update(gen)
    # 1-minute load average over this machine's CPUs while generation was timed: on a shared CPU, other jobs
    # (and PyTorch's intra-op threads waiting on them) can multiply decoding times, so say how busy it was.
    res["generate_loadavg_per_cpu"] = os.getloadavg()[0] / (os.cpu_count() or 1)
    log(f"load average per CPU during generation timing: {res['generate_loadavg_per_cpu']:.2f}")
    slots = {"65536": 256, "262144": 512, "1048576": 1024}
    res["memory_lookup_ms"] = {"parametric": {k: lookup_ms(v, reps) for k, v in slots.items()},
                               "explicit_per_query": {str(n): explicit_ms_per_query(n, reps)
                                                      for n in (1000, 100_000)}}
    log(f"memory lookups: {json.dumps(res['memory_lookup_ms'])}")
    res["mfu"] = mfu(peak, 1 if quick else 3)
    log(f"MFU (small preset, 2,048 tokens): {res['mfu']:.3f}")
    res["peak_rss_mb"] = {"rmt": {str(L): peak_rss_mb(L) for L in ([2048] if quick else [2048, 8192])}}
    log(f"peak RSS: {res['peak_rss_mb']}")
    # FAISS-backed explicit bank (rmt[faiss]; reported as skipped without it): top-1 agreement with exact search
    # and build / query cost of a large bank (1,000,000 entries; 20,000 with --quick).
    from rmt.integrations.faiss_bank import bench_faiss

    res["faiss"] = bench_faiss(quick, seed)
    log(f"FAISS bank: {json.dumps(res['faiss'])}")
    (out / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    _plot(res, out / "bench.png")
    return res


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, series in res["train_tokens_per_s"].items():
        xs = sorted(series, key=int)
        a.plot([int(x) for x in xs], [series[x] for x in xs], marker="o", label=name)
    a.set(xscale="log", xlabel="sequence length (tokens)", ylabel="training tokens/s", title="training throughput")
    a.legend()
    for name, series in res["generate_ms_per_token"].items():
        xs = sorted(series, key=int)
        b.plot([int(x) for x in xs], [series[x] for x in xs], marker="o", label=name)
    b.set(xscale="log", xlabel="context length (tokens)", ylabel="ms per generated token", title="generation")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure linear scaling, constant-state generation, memory lookups, MFU")
    p.add_argument("--quick", action="store_true", help="fewer lengths and repetitions")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--seed", type=int, default=0, help="seeds the random inputs and weights")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds an earlier benchmark: it is moved to OUT.old-N first")
    p.set_defaults(func=lambda a: (run_bench(a.quick, a.out, a.seed, overwrite=a.overwrite), 0)[-1])
