"""Probe: can a depth-recurrent SSM thinking core learn chained arithmetic on the CPU in minutes?"""
import argparse, random, time, math
import torch, torch.nn as nn, torch.nn.functional as F
from rmt.model.ssm import Block, RMSNorm

CUR = [4]
DEV = ['cpu']
NAMES = [("Mia", "She"), ("Tom", "He"), ("Ana", "She"), ("Leo", "He"), ("Ivy", "She"), ("Max", "He")]
OBJS = ["apples", "pens", "coins", "cards", "shells", "books"]

def problem(rng, form, lo=1, hi=4):
    hi = min(hi, CUR[0])
    steps = rng.randint(lo, hi)
    v = rng.randint(0, 20)
    name, P = rng.choice(NAMES); obj = rng.choice(OBJS)
    parts = [f"{v}"] if form == "compact" else [f"Q: {name} has {v} {obj}."]
    for _ in range(steps):
        while True:
            op = rng.choice("+-*")
            if op == "+": n = rng.randint(1, 20); nv = v + n
            elif op == "-": n = rng.randint(1, 20); nv = v - n
            else: n = rng.randint(2, 5); nv = v * n
            if 0 <= nv <= 99: break
        v = nv
        if form == "compact": parts.append(f"{op}{n}")
        else:
            parts.append({"+": f"{P} gets {n}.", "-": f"{P} loses {n}.", "*": f"{P} {['doubles','triples','quadruples','quintuples'][n-2] if op == '*' else ''} them."}[op])
    prompt = (" ".join(parts) + " =") if form == "compact" else (" ".join(parts) + f" How many now? A:")
    return prompt, f" {v}\n", steps

class Probe(nn.Module):
    def __init__(self, d=128, n_pre=2, n_core=1, n_coda=1, core_conv=4, core="ssm", hc=256):
        super().__init__()
        self.kind = core
        if core == "puregru":
            self.pg = nn.GRU(d, hc, num_layers=2, batch_first=True); self.po = nn.Linear(hc, d, bias=False)
        if core == "gru":
            self.gru = nn.GRU(2 * d, hc, batch_first=True); self.gout = nn.Linear(hc, d, bias=False); self.gin = nn.Linear(hc, d, bias=False)
        self.emb = nn.Embedding(257, d)
        mk = lambda cw=4: Block(d, 2 * d, conv_width=cw, chunk=64)
        self.pre = nn.ModuleList([mk() for _ in range(n_pre)])
        self.adapt = nn.Linear(2 * d, d, bias=False)
        self.core = nn.ModuleList([mk(core_conv) for _ in range(n_core)])
        self.zgate = nn.Linear(2 * d, d)
        self.cnorm = RMSNorm(d)
        self.coda = nn.ModuleList([mk() for _ in range(n_coda)])
        self.norm = RMSNorm(d)
    def forward(self, idx, K, bptt=2):
        h = self.emb(idx)
        if self.kind == "puregru":
            return self.norm(self.po(self.pg(h)[0])) @ self.emb.weight.T
        for b in self.pre: h = b(h)
        s = torch.zeros_like(h)
        if self.kind == "gru":
            for k in range(K):
                with torch.set_grad_enabled(torch.is_grad_enabled() and k >= K - bptt):
                    g, _ = self.gru(torch.cat([self.cnorm(s), h], -1))
                    s = self.gout(g)
            K = 0
        for k in range(K):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= K - bptt):
                hs = torch.cat([self.cnorm(s), h], -1)
                u = self.adapt(hs)
                for b in self.core: u = b(u)
                z = torch.sigmoid(self.zgate(hs))
                s = (1 - z) * s + z * u
        x = h + s
        for b in self.coda: x = b(x)
        return self.norm(x) @ self.emb.weight.T

def batch(rng, form, B):
    ps = [problem(rng, form) for _ in range(B)]
    enc = [list((p + a).encode()) for p, a, _ in ps]
    T = max(map(len, enc))
    x = torch.full((B, T), 256); y = torch.full((B, T), -100)
    for i, (e, (p, a, _)) in enumerate(zip(enc, ps)):
        x[i, :len(e)] = torch.tensor(e)
        lp = len(p.encode())
        y[i, lp - 1:len(e) - 1] = torch.tensor(e[lp:])
    return x.to(DEV[0]), y.to(DEV[0])

@torch.no_grad()
def evaluate(m, form, K, n=400, seed=123):
    rng = random.Random(seed); m.eval()
    probs = [problem(rng, form) for _ in range(n)]
    correct = {1: [0, 0], 2: [0, 0], 3: [0, 0], 4: [0, 0]}
    for i in range(0, n, 100):
        chunk = probs[i:i + 100]
        # greedy decode by recomputing (probe only)
        outs = [list(p.encode()) for p, _, _ in chunk]
        done = [False] * len(chunk); gen = [""] * len(chunk)
        for _ in range(4):
            T = max(map(len, outs)); x = torch.full((len(chunk), T), 256)
            for j, o in enumerate(outs): x[j, :len(o)] = torch.tensor(o)
            lg = m(x.to(DEV[0]), K)
            for j, o in enumerate(outs):
                if done[j]: continue
                t = lg[j, len(o) - 1].argmax().item()
                if t == 10: done[j] = True
                else: o.append(t); gen[j] += chr(t)
        for (p, a, st), g in zip(chunk, gen):
            correct[st][0] += g.strip() == a.strip(); correct[st][1] += 1
    m.train()
    acc = sum(c for c, _ in correct.values()) / n
    return acc, {k: round(c / max(t, 1), 2) for k, (c, t) in correct.items()}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--form", default="compact"); ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--K", type=int, default=4); ap.add_argument("--bptt", type=int, default=2)
    ap.add_argument("--d", type=int, default=128); ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--ncore", type=int, default=1)
    ap.add_argument("--npre", type=int, default=2); ap.add_argument("--core", default="ssm"); ap.add_argument("--hc", type=int, default=256)
    ap.add_argument("--steps", type=int, default=0); ap.add_argument("--device", default="cpu"); ap.add_argument("--evals", default="")
    ap.add_argument("--kmin", type=int, default=1); ap.add_argument("--cur", type=float, default=0.0)
    a = ap.parse_args()
    torch.manual_seed(0); rng = random.Random(0)
    m = Probe(a.d, n_pre=a.npre, n_core=a.ncore, core=a.core, hc=a.hc).to(a.device); DEV[0] = a.device
    print("params", sum(p.numel() for p in m.parameters()))
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01)
    t0 = time.time(); step = 0; budget = a.minutes * 60
    evals = [int(e) for e in a.evals.split(",") if e]
    while (step < a.steps) if a.steps else (time.time() - t0 < budget):
        frac = step / a.steps if a.steps else (time.time() - t0) / budget
        if step in evals:
            c = CUR[0]; CUR[0] = 4; print("EVAL", step, evaluate(m, a.form, a.K), flush=True); CUR[0] = c
        for g in opt.param_groups: g["lr"] = a.lr * min(1, step / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        CUR[0] = 4 if frac > a.cur else 1 + int(4 * frac / a.cur) if a.cur > 0 else 4
        x, y = batch(rng, a.form, a.B)
        K = rng.randint(a.kmin, a.K) if a.K > 0 else 0
        loss = F.cross_entropy(m(x, K, a.bptt).flatten(0, 1), y.flatten())
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); step += 1
        if step % 200 == 0: print(step, round(time.time() - t0), loss.item(), flush=True)
    print("steps", step); CUR[0] = 4
    for K in sorted({0, 1, 2, a.K, 2 * a.K}):
        print("K", K, evaluate(m, a.form, K))
