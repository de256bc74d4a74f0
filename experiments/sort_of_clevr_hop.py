"""Sort-of-CLEVR relational-hop micro-probe: does a second bank read whose query is built from the question and
the first read's result answer closest / furthest / count? (issue 19; experiments/README.md, Sort-of-CLEVR)

    image -> PatchEncoder (conv stem, 10 x 10 grid, pixel reconstruction) -> bank of 100 cells
    question -> q = colour embedding + question-kind embedding          (no text model: the hop is the question)
    r1 = read1(q)                                                      finds the named object
    q2 = MLP([q, r1]);  r2 = read2(q2)                                 --hops 2: the relational hop
    answer = MLP([q, r1, r2])

Read 2's keys: the entries through its own key projection, plus with --coord-keys a linear map of fixed
coordinate features (x, y, x^2 + y^2) of every cell, so that q.k can score -|p - p_i|^2 for a p the query took
from read 1. --focus biases read 2 by distance from read 1's weight-averaged position (and by read 1's own
weights, inhibition of return); --pairs adds an RN-style g(entry_i, r1, q, coords_i) averaged over the cells.
--score-mlp scores read 2 by an MLP of [entry_i, q2, p_i - f, |p_i - f|^2, a1_i] (with --focus-detach: the design
that learned the hop, relational 0.913 at 12k steps; --per-head, --locate, --mass-focus, --sharp-focus, --oracle-focus are its variants). Curriculum: --objects-steps non-relational questions, then --relations-steps of all. At the end,
accuracy by question on the 200 test images (4,000 questions), and again with read 2 zeroed (hop off).
Not part of the library. CPU, one thread by default. Numbers: experiments/README.md, "A two-read micro-probe".
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from rmt.model.memory import ExplicitMemoryRead
from rmt.tasks.image_encoder import PatchEncoder, PatchEncoderConfig
from rmt.tasks import get_task
from rmt.tasks.sort_of_clevr import ANSWERS, COLORS, QUESTIONS

p = argparse.ArgumentParser()
p.add_argument("--hops", type=int, default=2, choices=(1, 2))
p.add_argument("--coord-keys", action="store_true")
p.add_argument("--focus", action="store_true",
               help="read 2 addresses relative to read 1's focus: logits + slope(q2) |p_i - f|^2 + ior(q2) a1_i")
p.add_argument("--focus-detach", action="store_true", help="--focus: read 1's weights enter read 2 without gradient")
p.add_argument("--score-mlp", action="store_true",
               help="read 2 scored by an MLP of [entry_i, q2, p_i - f, |p_i - f|^2, a1_i] (f: read 1's focus) per head")
p.add_argument("--per-head", action="store_true",
               help="--score-mlp: the scorer sees every read-1 head's offset, distance and weight, and read 2's dot-product "
                    "score per head (added to its output)")
p.add_argument("--locate", action="store_true",
               help="--score-mlp: the focus f from a read of its own whose query is the colour alone (trained through f)")
p.add_argument("--mass-focus", action="store_true",
               help="--score-mlp: f pools read 1's heads by the weight each puts on cells (a head on its sink counts "
                    "little), not as an equal mean of per-head focuses")
p.add_argument("--sharp-focus", action="store_true",
               help="--score-mlp: f is the centroid of the cells where read 1's head-mean weight is at least half its "
                    "top (the named object), not of all its weight (a diffuse head pulls f to the middle)")
p.add_argument("--oracle-focus", action="store_true",
               help="diagnostic: --score-mlp's f is the named object's true centre, not read 1's focus")
p.add_argument("--focus-scale", type=float, default=4.0, help="multiplies the focus slope and inhibition")
p.add_argument("--pairs", action="store_true",
               help="+ a Relation-Network-style g(entry_i, r1, q, coords_i) summed over the cells, into the answer")
p.add_argument("--prior", action="store_true",
               help="--score-mlp: + a learnable per-head distance slope (init -3, -1, 1, 3) * |p - f|^2 and an "
                    "inhibition (init -3) * read 1's relative weight: ALiBi-like heads that start near and far")
p.add_argument("--objects-steps", type=int, default=1500)
p.add_argument("--relations-steps", type=int, default=2500)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--d", type=int, default=64)
p.add_argument("--recon", type=float, default=1.0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--log-every", type=int, default=250)
p.add_argument("--out", help="write the final numbers here as JSON")
args = p.parse_args()
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
D = args.d
QNAMES = [q[0] for q in QUESTIONS]

task = get_task("sort-of-clevr", seed=0)
train = task.split("train")
test = task.split("test")
train_images = torch.from_numpy(task.images("train"))
test_images = torch.from_numpy(task.images("test"))


class Hop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = PatchEncoder(D, PatchEncoderConfig(image_size=75, channels=32, stem="conv", conv_layers=3, recon=args.recon))
        self.colour = nn.Embedding(len(COLORS), D)
        self.kind = nn.Embedding(len(QUESTIONS), D)
        self.read1 = ExplicitMemoryRead(D, D, heads=args.heads, read="softmax", sink=True)
        if args.hops == 2:
            self.query2 = nn.Sequential(nn.Linear(2 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
            self.read2 = ExplicitMemoryRead(D, D, heads=args.heads, read="softmax", sink=True)
            self.coord_key = nn.Linear(3, D, bias=False) if args.coord_keys else None
            # per head: how read 2 weighs distance from read 1's focus, and read 1's own cells (inhibition)
            self.focus = nn.Linear(D, 2 * args.heads) if args.focus else None
            self.scorer = (nn.Sequential(nn.Linear(2 * D + (5 * args.heads if args.per_head else 4), 2 * D), nn.GELU(), nn.Linear(2 * D, args.heads))
                           if args.score_mlp else None)
            self.locator = (ExplicitMemoryRead(D, D, heads=args.heads, read="softmax", sink=True)
                            if args.locate else None)
            if args.prior:
                h = args.heads
                self.slope = nn.Parameter(torch.linspace(-3.0, 3.0, h))
                self.inhibit = nn.Parameter(torch.full((h,), -3.0))
            if self.focus is not None:  # start as a plain read; the bias grows where it pays
                nn.init.zeros_(self.focus.weight)
                nn.init.zeros_(self.focus.bias)
        # pairs: the named object (read 1) against every cell, as the RN pairs all cells, at M not M^2 per question
        self.pairs = (nn.Sequential(nn.Linear(3 * D + 3, 2 * D), nn.GELU(), nn.Linear(2 * D, 2 * D), nn.GELU(),
                                    nn.Linear(2 * D, D)) if args.pairs else None)
        self.head = nn.Sequential(nn.Linear((1 + args.hops + args.pairs) * D, 2 * D), nn.GELU(), nn.Linear(2 * D, len(ANSWERS)))

    def forward(self, images, colour, kind, hop: bool = True, record: bool = False):
        key_in, entries = self.enc.encode(images)
        q = self.colour(colour) + self.kind(kind)
        bank1 = self.read1.new_bank()
        bank1.record = record
        bank1.write(self.read1.key_proj(key_in), self.read1.value_proj(entries))
        r1 = self.read1(q[:, None], bank1)[:, 0]
        parts, weights = [q, r1], [bank1.recorded]
        if args.hops == 2:
            bank2 = self.read2.new_bank()
            bank2.record = record
            k2 = self.read2.key_proj(entries)
            if self.coord_key is not None:
                k2 = k2 + self.coord_key(self.enc.coords)
            bank2.write(k2, self.read2.value_proj(entries))
            x2 = self.query2(torch.cat([q, r1], -1))
            if self.scorer is not None:
                r2 = self.mlp_read(x2, bank1, bank2, entries, q[:, None], self.colour(colour)[:, None], key_in)
            elif self.focus is None:
                r2 = self.read2(x2[:, None], bank2)[:, 0]
            else:
                r2 = self.focus_read(x2, bank1, bank2, q[:, None])
            parts.append(r2 if hop else torch.zeros_like(r2))
            weights.append(bank2.recorded)
        if self.pairs is not None:
            m = entries.shape[1]
            pin = torch.cat([entries, r1[:, None].expand(-1, m, -1), q[:, None].expand(-1, m, -1),
                             self.enc.coords.expand(entries.shape[0], -1, -1)], -1)
            parts.append(self.pairs(pin).sum(1) / m)
        logits = self.head(torch.cat(parts, -1))
        recon = self.enc.reconstruction_loss(images, entries) if (self.training and args.recon > 0) else None
        return logits, recon, weights

    def read1_focus(self, bank1, q1):
        """Read 1's weights (B, H, M) and weight-averaged position f (B, H, 2), recomputed with gradient unless
        --focus-detach."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not args.focus_detach):
            s1 = bank1.scores(self.read1.query_proj(q1))[:, :, 0]  # (B, H, M)
            a1 = torch.softmax(torch.cat([s1, s1.new_zeros(*s1.shape[:-1], 1)], -1), -1)[..., :-1]
            pos = self.enc.coords[:, :2]  # (M, 2)
            f = (a1 @ pos) / a1.sum(-1, keepdim=True).clamp_min(1e-6)
        return a1, f

    def weighted_read(self, s2, bank2, x2):
        """Softmax with a zero-logit sink over scores (B, H, M), applied to bank 2's values -> (B, D)."""
        h = args.heads
        w = torch.softmax(torch.cat([s2, s2.new_zeros(*s2.shape[:-1], 1)], -1), -1)[..., :-1]
        if bank2.record:
            bank2.recorded.append(w.detach()[:, None])
        v = bank2.values.view(w.shape[0], -1, h, bank2.d_value // h).transpose(1, 2)  # (B, H, M, dv)
        out = (w[:, :, None] @ v)[:, :, 0].reshape(w.shape[0], -1)
        return self.read2.output(out, x2.dtype)

    def mlp_read(self, x2, bank1, bank2, entries, q1, colour_q, key_in):
        """Read 2 scored per cell by an MLP of the cell, the hop query and the cell's offset from read 1's focus
        (head-averaged): a nonlinear comparison, where a dot product needs the distance spelled out in its keys."""
        if self.locator is not None:  # where the named object is, whatever the question asks
            s1 = torch.einsum("bhd,bmhd->bhm", self.locator.query_proj(colour_q[:, 0]).view(q1.shape[0], args.heads, -1),
                              self.locator.key_proj(key_in).view(*key_in.shape[:2], args.heads, -1)) / (D // args.heads) ** 0.5
            a1 = torch.softmax(torch.cat([s1, s1.new_zeros(*s1.shape[:-1], 1)], -1), -1)[..., :-1]
            f = (a1 @ self.enc.coords[:, :2]) / a1.sum(-1, keepdim=True).clamp_min(1e-6)
        else:
            a1, f = self.read1_focus(bank1, q1)
        if args.per_head:
            return self.mlp_read_heads(x2, a1, f, bank2, entries)
        if args.mass_focus:
            f = (a1.sum(1) @ self.enc.coords[:, :2]) / a1.sum((1, 2))[:, None].clamp_min(1e-6)  # (B, 2)
            a1 = a1.mean(1)
        else:
            a1, f = a1.mean(1), f.mean(1)  # (B, M), (B, 2)
            if args.sharp_focus:
                top = a1 * (a1 >= 0.5 * a1.amax(-1, keepdim=True))
                f = (top @ self.enc.coords[:, :2]) / top.sum(-1, keepdim=True).clamp_min(1e-6)
        if ORACLE is not None:
            f = ORACLE[0]
        rel = self.enc.coords[None, :, :2] - f[:, None]  # (B, M, 2)
        m = entries.shape[1]
        x = torch.cat([entries, x2[:, None].expand(-1, m, -1), rel, (rel ** 2).sum(-1, keepdim=True),
                       a1[..., None] / a1.amax(-1, keepdim=True)[..., None].clamp_min(1e-6)], -1)
        s2 = self.scorer(x).transpose(1, 2)  # (B, H, M)
        if args.prior:
            s2 = (s2 + self.slope[:, None] * (rel ** 2).sum(-1)[:, None]
                  + self.inhibit[:, None] * x[:, None, :, -1])
        return self.weighted_read(s2, bank2, x2)

    def mlp_read_heads(self, x2, a1, f, bank2, entries):
        """--per-head: features of every head, (B, M, 5H): offsets from each head's focus, their squared lengths,
        read 1's weights, and read 2's dot-product scores, which the MLP's output is added to."""
        b, h, m = a1.shape
        if ORACLE is not None:
            f = ORACLE[0][:, None].expand(-1, h, -1)
        rel = self.enc.coords[None, None, :, :2] - f[:, :, None]  # (B, H, M, 2)
        dot = bank2.scores(self.read2.query_proj(x2[:, None]))[:, :, 0]  # (B, H, M)
        per_head = torch.cat([rel, (rel ** 2).sum(-1, keepdim=True),
                              (a1 / a1.amax(-1, keepdim=True).clamp_min(1e-6))[..., None], dot[..., None]], -1)
        x = torch.cat([entries, x2[:, None].expand(-1, m, -1), per_head.permute(0, 2, 1, 3).reshape(b, m, 5 * h)], -1)
        return self.weighted_read(dot + self.scorer(x).transpose(1, 2), bank2, x2)

    def focus_read(self, x2, bank1, bank2, q1):
        """Read 2 with a bias relative to where read 1 looked (per head): slope * |p_i - f|^2 + ior * a1_i / max a1.
        Recomputes read 1's weights with gradient (the bank records them only detached)."""
        h = args.heads
        a1, f = self.read1_focus(bank1, q1)
        pos = self.enc.coords[:, :2]  # (M, 2)
        d2 = ((pos[None, None] - f[:, :, None]) ** 2).sum(-1)  # (B, H, M)
        slope, ior = (args.focus_scale * self.focus(x2)).view(-1, 2, h).unbind(1)  # (B, H) each
        bias = slope[..., None] * d2 + ior[..., None] * a1 / a1.amax(-1, keepdim=True).clamp_min(1e-6)
        s2 = bank2.scores(self.read2.query_proj(x2[:, None]))[:, :, 0] + bias  # (B, H, M)
        return self.weighted_read(s2, bank2, x2)


ORACLE: list | None = [None] if args.oracle_focus else None


def true_centres(examples, split: str) -> torch.Tensor:
    """The named objects' centres (B, 2) in the grid's [-1, 1] coordinates (output cell j sees pixels ~8j)."""
    objects = task.scenes[split].objects
    xy = torch.tensor([objects[e.meta["image"], COLORS.index(e.meta["color"]), :2].tolist() for e in examples])
    return ((xy.float() + 4.5 - 3.5) / 8.0) * (2.0 / 9.0) - 1.0


def tensors(examples, images):
    if ORACLE is not None:
        ORACLE[0] = true_centres(examples, "train" if images is train_images else "test")
    img = images[[e.meta["image"] for e in examples]]
    colour = torch.tensor([COLORS.index(e.meta["color"]) for e in examples])
    kind = torch.tensor([QNAMES.index(e.meta["question"]) for e in examples])
    y = torch.tensor([ANSWERS.index(e.target.strip()) for e in examples])
    return img, colour, kind, y


@torch.no_grad()
def evaluate(model, hop: bool = True) -> dict:
    model.eval()
    right: dict[str, list[int]] = {}
    for i in range(0, len(test), 500):
        chunk = test[i:i + 500]
        img, colour, kind, y = tensors(chunk, test_images)
        pred = model(img, colour, kind, hop=hop)[0].argmax(-1)
        for e, ok in zip(chunk, (pred == y).tolist()):
            right.setdefault(e.meta["question"], []).append(ok)
            right.setdefault(e.meta["type"], []).append(ok)
    model.train()
    return {k: round(sum(v) / len(v), 3) for k, v in right.items()}


model = Hop()
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
rng = random.Random(args.seed)
nonrel = [e for e in train if e.meta["type"] == "non_relational"]
history, t0 = [], time.time()
total = args.objects_steps + args.relations_steps
for step in range(1, total + 1):
    pool = nonrel if step <= args.objects_steps else train
    img, colour, kind, y = tensors([rng.choice(pool) for _ in range(args.batch)], train_images)
    logits, recon, _ = model(img, colour, kind)
    loss = F.cross_entropy(logits, y) + (args.recon * recon if recon is not None else 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % args.log_every == 0 or step == total:
        ev = evaluate(model)
        history.append({"step": step, "seconds": round(time.time() - t0), **ev})
        print(json.dumps(history[-1]), flush=True)
final = {"args": vars(args), "history": history, "test": evaluate(model)}
if args.hops == 2:
    final["test_hop_off"] = evaluate(model, hop=False)
print(json.dumps({k: final[k] for k in final if k.startswith("test")}), flush=True)
if args.out:
    with open(args.out, "w") as f:
        json.dump(final, f, indent=1)
