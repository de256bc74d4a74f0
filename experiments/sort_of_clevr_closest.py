"""Where do a trained hop model's closest / furthest errors come from? (issue 19)

    python experiments/sort_of_clevr_closest.py RUN_DIR [N]

Over the closest / furthest questions among the first N test questions (default all 4,000): accuracy, accuracy
where the runner-up object has the other shape (where a read that mixes the two cannot be right by luck), and,
binned by the distance gap between the answer object and the runner-up, how much of the last core read's weight
lies on each of them and on the named object (cells within one cell of the object's centre). Writes
RUN_DIR/closest_diag.json. Not part of the library.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from rmt.checkpoint import find_checkpoint, load_model
from rmt.evaluation.visual_qa import answer_visual, read_attention
from rmt.tasks import get_task
from rmt.tasks.sort_of_clevr import COLORS, centres, question_example

torch.set_num_threads(1)
run = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
model, tok = load_model(find_checkpoint(run))
model.eval()
task = get_task("sort-of-clevr", seed=0)
scenes = task.scenes["test"]
examples = [question_example(scenes, r) for r in range(min(n, len(scenes.questions)))]
examples = [e for e in examples if e.meta["question"] in ("closest", "furthest")]
preds = answer_visual(model, examples, scenes.images, tok)
maps = read_attention(model, examples, scenes.images, tok)  # (n_reads, G, G) each; the last core read last
grid = model.encoders["image"].grid
cell = task.config.image_size / grid  # pixels per grid cell
yy, xx = np.mgrid[:grid, :grid]
cx, cy = (xx + 0.5) * cell, (yy + 0.5) * cell  # cell centres in pixels
rows = []
for ex, pred, amap in zip(examples, preds, maps):
    objects = scenes.objects[ex.meta["image"]]
    c = centres(objects, task.config.object_size)
    k = COLORS.index(ex.meta["color"])
    d = np.sqrt(((c - c[k]) ** 2).sum(-1))
    order = sorted((i for i in range(len(c)) if i != k), key=lambda i: d[i], reverse=ex.meta["question"] == "furthest")
    target, runner_up = order[0], order[1]
    w = amap[-1]

    def mass(i: int) -> float:
        return float(w[(np.abs(cx - c[i, 0]) < cell) & (np.abs(cy - c[i, 1]) < cell)].sum())

    rows.append(dict(question=ex.meta["question"], right=pred.strip() == ex.target.strip(),
                     gap=float(abs(d[target] - d[runner_up])), same_shape=bool(objects[target, 2] == objects[runner_up, 2]),
                     mass_target=mass(target), mass_runner_up=mass(runner_up), mass_named=mass(k)))
for q in ("closest", "furthest"):
    rs = [r for r in rows if r["question"] == q]
    other = [r for r in rs if not r["same_shape"]]
    print(f"{q}: n={len(rs)} accuracy {np.mean([r['right'] for r in rs]):.3f}; "
          f"where the runner-up has the other shape (n={len(other)}) {np.mean([r['right'] for r in other]):.3f}")
    for lo, hi in ((0, 3), (3, 6), (6, 10), (10, 15), (15, 25), (25, 200)):
        b = [r for r in other if lo <= r["gap"] < hi]
        if b:
            print(f"  gap {lo:>2}-{hi:<3} px n={len(b):4d} accuracy {np.mean([r['right'] for r in b]):.3f}  core read weight "
                  f"on the answer {np.mean([r['mass_target'] for r in b]):.2f}, the runner-up "
                  f"{np.mean([r['mass_runner_up'] for r in b]):.2f}, the named object {np.mean([r['mass_named'] for r in b]):.2f}")
json.dump(rows, open(f"{run}/closest_diag.json", "w"))
