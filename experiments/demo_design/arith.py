"""Q2: arithmetic word problems (rmt.tasks `arithmetic`, 1-4 steps) on word tokens, with a thinking core.

Models (all self-contained plain PyTorch; widths below are the defaults):
  gru      plain baseline: embedding(256) -> nn.GRU 2 layers x 256 -> linear -> RMSNorm -> tied head.
  rmt_gru  embedding(d=128) -> 2 prelude blocks [causal depthwise conv (width 4) + MLP, pre-norm residual]
           -> thinking core x K (shared weights): g = nn.GRU([RMSNorm(s), e]) over the whole sequence (fused),
              u = W_u g, z = sigmoid(W_z g), s <- s + z * (u - s)      (s starts at 0; e re-injected each time)
           -> x = e + s -> 1 coda block (same as prelude) -> RMSNorm -> tied head.
           K ~ U{1..4} per training step, gradient through the last `bptt` iterations; test K=4 and K=0 (core off).
  rmt_lin  as rmt_gru, but the core's sequence mixer is a linear, selective, diagonal recurrence
           h_t = a_t * h_{t-1} + (1 - a_t) * b_t  (a_t = sigmoid(W_a x_t), b_t = W_b x_t, 256 channels),
           computed with a log-depth Hillis-Steele scan (no Python loop over time), read out as
           W_o (h * silu(W_g x)).  Nonlinearity only between core iterations (depth), not along the tokens.
  rmt_tok  per-token thinking, state carried token to token: one fused nn.GRU runs over T*K micro-steps, each
           token repeated K times with a learned "think slot" embedding added ([RMSNorm(e), slot_k]); the core
           output at a token is the GRU output at its last micro-step, then the same gated update into s.
           K=0: core off (x = e).
Loss on the answer token + [EOS] only; greedy exact match on the 1,000-problem test split (never in training).
Runs resume from results/ckpt_<name>.pt so a 2,500-step run is cut into <= 6-minute invocations.

Run (one core):  OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ../../.venv/bin/python arith.py \
                     --model rmt_gru --name rmt_gru --steps 2500 --max-wall 330
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

from common import EOS, PAD, Timer, answer_mask, build_wordlevel, encode_qa, get_task_retry  # noqa: F401  (sets threads)

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")


# ----------------------------------------------------------------------------------------------- data
def load_data():
    cache = os.path.join(RES, "arith_words.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    task = get_task_retry("arithmetic")
    tr, te = task.split("train"), task.split("test")
    tok = build_wordlevel([e.prompt + e.target for e in tr])
    xtr, ptr, atr = encode_qa(tok, tr)
    xte, pte, ate = encode_qa(tok, te)
    d = dict(vocab=tok.get_vocab_size(), xtr=xtr, ptr=ptr, atr=atr, xte=xte, pte=pte, ate=ate,
             steps_te=torch.tensor([e.meta["steps"] for e in te]))
    torch.save(d, cache)
    return d


# ----------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


class ConvBlock(nn.Module):
    """Causal token mixer: depthwise conv (width w) then MLP, both pre-norm residual."""

    def __init__(self, d, w=4, mult=4):
        super().__init__()
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.conv = nn.Conv1d(d, d, w, groups=d, padding=0)
        self.w = w
        self.mlp = nn.Sequential(nn.Linear(d, mult * d), nn.GELU(), nn.Linear(mult * d, d))

    def forward(self, x):
        y = self.n1(x).transpose(1, 2)
        y = self.conv(F.pad(y, (self.w - 1, 0))).transpose(1, 2)
        x = x + y
        return x + self.mlp(self.n2(x))


def scan_linear(a, b):
    """h_t = a_t * h_{t-1} + b_t along dim 1 (h_{-1} = 0), Hillis-Steele: log2(T) vectorised steps."""
    T = a.shape[1]
    s = 1
    while s < T:
        b = torch.cat([b[:, :s], b[:, s:] + a[:, s:] * b[:, :-s]], 1)
        a = torch.cat([a[:, :s], a[:, s:] * a[:, :-s]], 1)
        s *= 2
    return b


class LinearRecurrence(nn.Module):
    def __init__(self, d_in, h, d_out):
        super().__init__()
        self.inp = nn.Linear(d_in, 3 * h)
        self.out = nn.Linear(h, d_out)
        with torch.no_grad():  # start with slow decay (a ~ 0.9) so values can be carried
            self.inp.bias[:h].fill_(2.0)

    def forward(self, x):
        a, b, g = self.inp(x).chunk(3, -1)
        a = torch.sigmoid(a)
        h = scan_linear(a, (1 - a) * b)
        return self.out(h * F.silu(g))


# ----------------------------------------------------------------------------------------------- models
class PlainGRU(nn.Module):
    def __init__(self, V, d=256, layers=2):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.gru = nn.GRU(d, d, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(d, d)
        self.norm = RMSNorm(d)

    def forward(self, idx, K=None):
        return self.norm(self.proj(self.gru(self.emb(idx))[0])) @ self.emb.weight.T


class RMTProbe(nn.Module):
    def __init__(self, V, core="gru", d=128, hc=256, n_pre=2, n_coda=1, kmax=4, bptt=2, prelude="conv"):
        super().__init__()
        self.core_kind, self.kmax, self.bptt = core, kmax, bptt
        self.emb = nn.Embedding(V, d)
        self.pre = nn.ModuleList([ConvBlock(d) for _ in range(n_pre)])
        self.pre_gru = nn.GRU(d, d, batch_first=True) if prelude == "gru" else None
        self.snorm, self.enorm = RMSNorm(d), RMSNorm(d)
        if core == "gru":
            self.mix = nn.GRU(2 * d, hc, batch_first=True)
        elif core == "lin":
            self.mix = LinearRecurrence(2 * d, hc, hc)
        elif core == "tok":
            self.mix = nn.GRU(2 * d, hc, batch_first=True)
            self.slot = nn.Embedding(kmax, d)
        else:
            raise ValueError(core)
        self.u = nn.Linear(hc, d)
        self.z = nn.Linear(hc, d)
        self.coda = nn.ModuleList([ConvBlock(d) for _ in range(n_coda)])
        self.norm = RMSNorm(d)

    def core_step(self, s, e):
        x = torch.cat([self.snorm(s), e], -1)
        g = self.mix(x)[0] if isinstance(self.mix, nn.GRU) else self.mix(x)
        z = torch.sigmoid(self.z(g))
        return s + z * (self.u(g) - s)

    def forward(self, idx, K):
        e = self.emb(idx)
        if self.pre_gru is not None:
            e = self.pre_gru(e)[0]
        for b in self.pre:
            e = b(e)
        s = torch.zeros_like(e)
        if K > 0 and self.core_kind == "tok":
            B, T, d = e.shape
            x = torch.cat([self.enorm(e).unsqueeze(2).expand(B, T, K, d),
                           self.slot.weight[:K].view(1, 1, K, d).expand(B, T, K, d)], -1).reshape(B, T * K, 2 * d)
            g = self.mix(x)[0].view(B, T, K, -1)[:, :, -1]
            z = torch.sigmoid(self.z(g))
            s = z * self.u(g)
        else:
            for k in range(K):
                with torch.set_grad_enabled(torch.is_grad_enabled() and k >= K - self.bptt):
                    s = self.core_step(s, e)
        x = e + s
        for b in self.coda:
            x = b(x)
        return self.norm(x) @ self.emb.weight.T


def build(args, V):
    if args.model == "gru":
        return PlainGRU(V, d=args.d_gru)
    return RMTProbe(V, core=args.model.split("_")[1], d=args.d, hc=args.hc, n_pre=args.n_pre, n_coda=args.n_coda,
                    kmax=args.kmax, bptt=args.bptt, prelude=args.prelude)


# ----------------------------------------------------------------------------------------------- eval / train
@torch.no_grad()
def evaluate(model, D, K, bs=250):
    model.eval()
    correct = []
    for i in range(0, len(D["xte"]), bs):
        x, p, a = D["xte"][i:i + bs], D["pte"][i:i + bs], D["ate"][i:i + bs]
        T = int((p + a).max())
        x = x[:, :T]
        logits = model(x[:, :-1], K)
        tgt, m = answer_mask(x, p, a)
        ok = ((logits.argmax(-1) == tgt) | ~m).all(1)
        correct.append(ok)
    model.train()
    c = torch.cat(correct).float()
    by = [round(c[D["steps_te"] == s].mean().item(), 3) for s in (1, 2, 3, 4)]
    return round(c.mean().item(), 3), by


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="rmt_gru", choices=["gru", "rmt_gru", "rmt_lin", "rmt_tok"])
    ap.add_argument("--name", default=None)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--max-wall", type=float, default=330, help="stop (and checkpoint) after this many seconds")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--hc", type=int, default=256)
    ap.add_argument("--d-gru", type=int, default=256)
    ap.add_argument("--kmax", type=int, default=4)
    ap.add_argument("--emb-std", type=float, default=0.0, help="if > 0: embedding (= tied head) init std")
    ap.add_argument("--n-pre", type=int, default=2)
    ap.add_argument("--prelude", default="conv", choices=["conv", "gru"], help="gru: one nn.GRU(d, d) before the conv blocks")
    ap.add_argument("--n-coda", type=int, default=1)
    ap.add_argument("--kmin", type=int, default=1)
    ap.add_argument("--bptt", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-at", type=int, default=0, help="checkpoint and exit at this step (schedule still --steps)")
    ap.add_argument("--time-only", type=int, default=0, help="just time this many steps, no checkpoint")
    args = ap.parse_args()
    name = args.name or args.model
    os.makedirs(RES, exist_ok=True)
    ck, log = os.path.join(RES, f"ckpt_{name}.pt"), os.path.join(RES, f"arith_{name}.jsonl")
    D = load_data()
    torch.manual_seed(args.seed)
    model = build(args, D["vocab"])
    if args.emb_std > 0:
        nn.init.normal_(model.emb.weight, std=args.emb_std)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if os.path.exists(ck) and not args.time_only:
        st = torch.load(ck)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); gen.set_state(st["gen"])
        step = st["step"]
    nparam = sum(p.numel() for p in model.parameters())
    print(f"{name}: {nparam/1e6:.3f}M params, vocab {D['vocab']}, threads {torch.get_num_threads()}, "
          f"resuming at step {step}", flush=True)
    timer, train_s, seg_steps = Timer(), 0.0, 0
    c_train = 0.0
    kinds = []
    while step < args.steps:
        if args.time_only and seg_steps >= args.time_only:
            break
        if not args.time_only and (timer.wall() > args.max_wall or (args.stop_at and step >= args.stop_at)):
            break
        t0, c0 = time.perf_counter(), time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        idx = torch.randint(len(D["xtr"]), (args.bs,), generator=gen)
        K = int(torch.randint(args.kmin, args.kmax + 1, (1,), generator=gen))
        x, p, a = D["xtr"][idx], D["ptr"][idx], D["atr"][idx]
        T = int((p + a).max())
        x = x[:, :T]
        logits = model(x[:, :-1], K)
        tgt, m = answer_mask(x, p, a)
        loss = F.cross_entropy(logits[m], tgt[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seg_steps += 1
        train_s += time.perf_counter() - t0
        c_train += time.process_time() - c0
        kinds.append(K)
        if args.time_only:
            continue
        if step % args.eval_every == 0 or step == args.steps:
            acc4, by4 = evaluate(model, D, args.kmax)
            acc0, by0 = evaluate(model, D, 0)
            row = dict(step=step, loss=round(loss.item(), 4), acc_k4=acc4, by_steps_k4=by4, acc_k0=acc0,
                       by_steps_k0=by0, seg_s_per_step=round(train_s / seg_steps, 4),
                       seg_cpu_per_step=round(c_train / seg_steps, 4), seg_steps=seg_steps)
            if args.model != "gru" and step == args.steps:
                row["acc_by_K"] = {k: evaluate(model, D, k)[0] for k in range(1, args.kmax + 1)}
            print(json.dumps(row), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.time_only:
        print(json.dumps(dict(name=name, steps=seg_steps, s_per_step=round(train_s / seg_steps, 4),
                              cpu_per_step=round(c_train / seg_steps, 4), mean_K=sum(kinds) / len(kinds),
                              threads=torch.get_num_threads(), params=nparam)), flush=True)
        return
    torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step), ck)
    seg = dict(segment_end_step=step, seg_steps=seg_steps, train_s=round(train_s, 1),
               s_per_step=round(train_s / max(1, seg_steps), 4), cpu_s=round(c_train, 1), wall_s=round(timer.wall(), 1))
    print(json.dumps(seg), flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(seg) + "\n")


if __name__ == "__main__":
    main()
