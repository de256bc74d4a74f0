"""How well does a trained hop model's prelude read locate the object a question names? (issue 19)

    python experiments/sort_of_clevr_focus.py RUN_DIR [--n 1200] [--at last|colour]

For the first --n test questions: the prelude read's weights at the last prompt token (or the colour word's, --at colour) (H, M), the focus the
hop uses (each head's weight-averaged cell position, then their mean), the centroid of the head-mean weight's
top cells (>= half its top), and the named object's true centre. Prints, per question kind, the mean distance of
each focus from the true centre in grid cells and the share within half a cell; and how sharp the read is: its
head-mean top weight, its weight within 1.5 cells of the named object, and how often its top cell is nearer the
named object than any other object. Not part of the library.
"""
from __future__ import annotations

import argparse
import json

import torch

from rmt.checkpoint import find_checkpoint, load_model
from rmt.tasks import get_task
from rmt.tasks.image_encoder import ImageBank
from rmt.tasks.sort_of_clevr import COLORS, centres, question_example

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--n", type=int, default=1200)
p.add_argument("--at", choices=("last", "colour"), default="last",
               help="the position whose read is measured: the last prompt token, or the colour word's token")
args = p.parse_args()
torch.set_num_threads(1)

model, tok = load_model(find_checkpoint(args.run))
model.eval()
task = get_task("sort-of-clevr", seed=0)
scenes = task.scenes["test"]
enc = model.encoders["image"]
coords = enc.coords[:, :2]  # (M, 2) in [-1, 1]
cell = 2.0 / (model.encoders["image"].grid - 1)  # one grid step in those units
errors: dict[str, dict[str, list[float]]] = {}
with torch.no_grad():
    for row in range(min(args.n, len(scenes.questions))):
        ex = question_example(scenes, row)
        bank, _ = ImageBank(torch.from_numpy(scenes.images[[ex.meta["image"]]])).build(model)
        bank.record = True
        ids = tok.encode(ex.prompt)
        model(torch.tensor([ids]), explicit_bank=bank)
        at = -1 if args.at == "last" else max(i for i in range(len(ids)) if ex.meta["color"] in tok.decode([ids[i]]))
        a1 = bank.recorded[0][0, at].float()  # (H, M): the prelude read at the last prompt token
        f_heads = (a1 @ coords) / a1.sum(-1, keepdim=True).clamp_min(1e-6)  # (H, 2)
        mean = a1.mean(0)
        top = mean * (mean >= 0.5 * mean.max())
        focus = {"hop focus (mean of heads)": f_heads.mean(0), "top cells": (top @ coords) / top.sum(),
                 "best head": None}
        # object centres (6, 2) in pixels -> the grid's [-1, 1] coordinates (cell i's centre is pixel 8 i + 3.5)
        px = torch.from_numpy(centres(scenes.objects[ex.meta["image"]], task.config.object_size)).float()
        obj = (px - (enc.cell - 1) / 2) / enc.cell * cell - 1.0
        true = obj[COLORS.index(ex.meta["color"])]
        d_heads = (f_heads - true).norm(dim=-1) / cell
        out = errors.setdefault(ex.meta["question"], {})
        for name, f in focus.items():
            d = d_heads.min().item() if f is None else ((f - true).norm() / cell).item()
            out.setdefault(name, []).append(d)
        out.setdefault("sink share", []).append(1.0 - a1.sum(-1).mean().item())
        out.setdefault("top weight (head mean)", []).append(mean.max().item())
        near = ((coords - true).norm(dim=-1) / cell) <= 1.5
        out.setdefault("weight within 1.5 cells", []).append(mean[near].sum().item())
        top_cell = coords[mean.argmax()]
        out.setdefault("top cell nearest the named object", []).append(
            float((obj - top_cell).norm(dim=-1).argmin().item() == COLORS.index(ex.meta["color"])))
DISTANCES = ("hop focus (mean of heads)", "top cells", "best head")
summary = {q: {k: ({"mean": round(sum(v) / len(v), 3), "within_half_cell": round(sum(x < 0.5 for x in v) / len(v), 3)}
                   if k in DISTANCES else round(sum(v) / len(v), 3)) for k, v in d.items()} for q, d in errors.items()}
print(json.dumps(summary, indent=1))
