"""Q3: facts held in an explicit key-value bank, read by softmax attention from the question.

Data: rmt.tasks `facts-synthetic` with 600 entities x 4 attributes. Entities 0..499 are "trained"; 500..599 are
"run-time" entities: never in training, never in the tokenizer's text; their facts exist only as bank entries.
Tokenizer: word-piece (vocab 1500, trained on the trained entities' text only), so names are pieces and an unseen
name splits into known pieces (a word-level tokenizer maps every unseen name to [UNK]; see tokens.py).

Model (plain PyTorch, d=128): embedding -> 2 prelude blocks (causal depthwise conv + MLP, as in arith.py).
  write: each fact sentence ("Vorla Minet lives in Paris.") is encoded by the same prelude;
         key = W_k attnpool_k(h), value = W_v attnpool_v(h)        (learned softmax pooling over its tokens)
  read:  at every question/answer position t, q_t = W_q RMSNorm(prefix-mean of h up to t);
         r_t = softmax_i(q_t . k_i / sqrt(d)) v_i ;  x_t = h_t + W_r r_t  -> 1 coda block -> RMSNorm -> tied head.
  bank off: r = 0 (same trained model).
Training batch: 16 trained entities, one question per attribute each (a training phrasing) = 64 questions; the bank
is the 64 facts of those 16 entities (each stated in a random statement template), shared by the batch, so every
question has 60 distractor entries. Loss on the answer pieces + [EOS]; greedy exact match.
Test: questions in the held-out phrasing (the task's test+validation splits); bank = the facts of groups of 16
entities (64 entries) and, harder, all 100 run-time entities at once (400 entries).

Run: OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ../../.venv/bin/python facts_bank.py --steps 1000 [--fresh [--curriculum] --name NAME]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

from common import EOS, PAD, Timer, build_wordpiece, get_task_retry  # noqa: F401  (sets threads)

import torch
import torch.nn as nn
import torch.nn.functional as F

from arith import ConvBlock, RMSNorm

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")
N_TRAINED = 500


def pad(seqs):
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    return x


class AttnPool(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Linear(d, 1)

    def forward(self, h, mask):  # h [N,T,d], mask [N,T] True on real tokens
        a = self.w(h).squeeze(-1).masked_fill(~mask, -1e9).softmax(-1)
        return (a.unsqueeze(-1) * h).sum(1)


class BankModel(nn.Module):
    def __init__(self, V, d=128, n_pre=2, n_coda=1):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        nn.init.normal_(self.emb.weight, std=0.1)  # tied head: keeps initial logits ~N(0,1) (default init gives ~11)
        self.pre = nn.ModuleList([ConvBlock(d) for _ in range(n_pre)])
        self.pool_k, self.pool_v = AttnPool(d), AttnPool(d)
        self.k, self.v, self.q, self.r = (nn.Linear(d, d) for _ in range(4))
        self.qnorm = RMSNorm(d)
        self.coda = nn.ModuleList([ConvBlock(d) for _ in range(n_coda)])
        self.norm = RMSNorm(d)
        self.d = d

    def prelude(self, idx):
        h = self.emb(idx)
        for b in self.pre:
            h = b(h)
        return h

    def write(self, facts):  # facts [M,T] -> keys, values [M,d]
        h = self.prelude(facts)
        m = facts != PAD
        return self.k(self.pool_k(h, m)), self.v(self.pool_v(h, m))

    def forward(self, idx, bank=None, mask=None):
        h = self.prelude(idx)
        x = h
        if bank is not None:
            keys, vals = bank
            n = torch.arange(1, idx.shape[1] + 1).view(1, -1, 1)
            q = self.q(self.qnorm(h.cumsum(1) / n))
            logit = q @ keys.T / math.sqrt(self.d)
            if mask is not None:  # [Bq, M]: which entries each question may read
                logit = logit.masked_fill(~mask.unsqueeze(1), -1e9)
            att = logit.softmax(-1)
            x = x + self.r(att @ vals)
        for b in self.coda:
            x = b(x)
        return self.norm(x) @ self.emb.weight.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ents", type=int, default=16, help="entities per batch (x4 questions)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="bank")
    ap.add_argument("--curriculum", action="store_true",
                    help="each question reads only a sub-bank of g entities (4g facts), g = 1,2,4,8,16 over training")
    ap.add_argument("--fresh", action="store_true",
                    help="train on freshly invented entities every batch (new names + random values), so no fact "
                         "can be memorised and the bank is the only way to answer")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    task = get_task_retry("facts-synthetic", n_entities=600)
    from rmt.tasks.facts_synthetic import ATTRIBUTES
    ents = task.entities
    trained, runtime = ents[:N_TRAINED], ents[N_TRAINED:]
    tset = set(trained)
    facts = {(f.entity, f.attribute): f.value for f in task.facts}
    attrs = task.attribute_names
    rel = {a: ATTRIBUTES[a][1] for a in attrs}
    train_split = task.split("train")
    heldout = task.split("test") + task.split("validation")  # one held-out question phrasing per fact
    heldout_t = {(e.meta["entity"], e.meta["attribute"]): e.meta["template"] for e in heldout}
    # the tokenizer sees the trained entities' text only
    tok_text = [e.prompt + " " + e.target for e in train_split if e.meta["entity"] in tset]
    tok = build_wordpiece(tok_text, vocab_size=1500)
    V = tok.get_vocab_size()
    enc = lambda s: tok.encode(s).ids  # noqa: E731
    ans_len = [len(enc(" " + v)) for v in set(facts.values())]
    unk_rt = sum(i == 1 for e in runtime for i in enc(e))
    print(f"vocab {V}; value pieces mean {sum(ans_len)/len(ans_len):.2f} max {max(ans_len)}; "
          f"UNK pieces in run-time names: {unk_rt}", flush=True)

    def question(ent, attr, template):
        return enc(rel[attr].ask(template, ent)), enc(" " + facts[(ent, attr)]) + [EOS]

    def statement(ent, attr, template):
        return enc(rel[attr].state(template, ent, facts[(ent, attr)]))

    from rmt.tasks.facts_synthetic import CODAS, SYLLABLES
    forbidden = set(ents)

    def fresh_group(n):
        group = []
        while len(group) < n:
            part = lambda: (rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(CODAS)).capitalize()  # noqa
            ent = f"{part()} {part()}"
            if ent in forbidden or ent in group:
                continue
            for attr in attrs:
                facts[(ent, attr)] = rng.choice(ATTRIBUTES[attr][0])
                heldout_t[(ent, attr)] = rng.randrange(len(rel[attr].questions))
            group.append(ent)
        return group

    def batch(group, train):
        qs, plen, alen, bank = [], [], [], []
        for ent in group:
            for attr in attrs:
                held = heldout_t[(ent, attr)]
                if train:
                    t = rng.choice([t for t in range(len(rel[attr].questions)) if t != held])
                else:
                    t = held
                p, a = question(ent, attr, t)
                qs.append(p + a); plen.append(len(p)); alen.append(len(a))
                st = rng.randrange(len(rel[attr].statements)) if train else 0
                bank.append(statement(ent, attr, st))
        return pad(qs), torch.tensor(plen), torch.tensor(alen), pad(bank)

    def loss_and_ok(model, x, p, a, bank, mask=None):
        logits = model(x[:, :-1], bank, mask)
        T = x.shape[1] - 1
        pos = torch.arange(T).unsqueeze(0)
        m = (pos >= (p - 1).unsqueeze(1)) & (pos < (p + a - 1).unsqueeze(1))
        tgt = x[:, 1:]
        loss = F.cross_entropy(logits[m], tgt[m])
        ok = ((logits.argmax(-1) == tgt) | ~m).all(1)
        return loss, ok

    model = BankModel(V)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    print(f"{sum(p.numel() for p in model.parameters())/1e6:.3f}M params", flush=True)

    @torch.no_grad()
    def evaluate(entities, whole_bank=False):
        model.eval()
        res = {"bank": [], "off": []}
        groups = [entities] if whole_bank else [entities[i:i + args.ents] for i in range(0, len(entities), args.ents)]
        for g in groups:
            x, p, a, b = batch(g, train=False)
            res["bank"].append(loss_and_ok(model, x, p, a, model.write(b))[1])
            res["off"].append(loss_and_ok(model, x, p, a, None)[1])
        model.train()
        return {k: round(torch.cat(v).float().mean().item(), 3) for k, v in res.items()}

    log = os.path.join(RES, f"facts_{args.name}.jsonl")
    timer, train_s = Timer(), 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        lr = args.lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        group = fresh_group(args.ents) if args.fresh else rng.sample(trained, args.ents)
        x, p, a, b = batch(group, train=True)
        mask = None
        if args.curriculum:
            frac = step / args.steps
            g = 1 if frac < 0.2 else 2 if frac < 0.35 else 4 if frac < 0.5 else 8 if frac < 0.65 else args.ents
            qg = torch.arange(len(x)) // (len(attrs) * g)  # question i is about entity i // 4
            mask = qg.unsqueeze(1) == (torch.arange(len(b)) // (len(attrs) * g)).unsqueeze(0)
        if args.fresh:  # forget them: each invented entity is seen in one batch only
            for ent in group:
                for attr in attrs:
                    facts.pop((ent, attr)); heldout_t.pop((ent, attr))
        loss, _ = loss_and_ok(model, x, p, a, model.write(b), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_s += time.perf_counter() - t0
        if step % args.eval_every == 0 or step == args.steps:
            row = dict(step=step, loss=round(loss.item(), 4), s_per_step=round(train_s / step, 4),
                       trained_heldout_phrasing=evaluate(trained[:200]),
                       runtime_bank16=evaluate(runtime),
                       runtime_bank_all100=evaluate(runtime, whole_bank=True))
            print(json.dumps(row), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
    final = dict(final=True, steps=args.steps, train_s=round(train_s, 1), wall_s=round(timer.wall(), 1),
                 trained_all500_bank16=evaluate(trained),
                 trained_bank_all500=evaluate(trained, whole_bank=True),
                 runtime_bank16=evaluate(runtime), runtime_bank_all100=evaluate(runtime, whole_bank=True))
    print(json.dumps(final), flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(final) + "\n")
    torch.save(model.state_dict(), os.path.join(RES, f"ckpt_facts_{args.name}.pt"))


if __name__ == "__main__":
    main()
