"""The training loop: one process, AdamW with warm-up + cosine, gradient clipping, a NaN guard, progress.

Each curriculum stage gets its own optimizer (its learning rates and frozen parts differ) with three
parameter groups: weights with decay; norms, biases and SSM state parameters (A_log, D, dt_bias) without;
and the memory values with their own learning rate and no decay.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from rmt.model.config import ConfigError
from rmt.errors import RMTError
from rmt.model import RMT, loss_fn
from rmt.tasks import Example
from rmt.training import distributed
from rmt.tokenizer import Tokenizer
from rmt.training.batches import TaskMix, filter_examples
from rmt.training.curriculum import Stage


def param_groups(model: RMT, stage: Stage) -> list[dict]:
    pk = model.reader.product_keys
    memory_values = {id(p) for p in (pk.value_parameters() if pk is not None else [])}
    decay, no_decay, values = [], [], []
    for name, p in model.named_parameters():
        frozen = any(name.startswith(prefix) for prefix in stage.frozen)
        p.requires_grad_(not frozen)
        if frozen:
            continue
        if id(p) in memory_values:
            values.append(p)
        elif p.dim() < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": stage.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
              {"params": values, "weight_decay": 0.0, "lr_mult": stage.memory_lr_mult}]
    return [g for g in groups if g["params"]]


def lr_at(step: int, stage: Stage) -> float:
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    if stage.schedule == "constant":
        return stage.lr
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return stage.lr * (stage.min_lr_frac + (1 - stage.min_lr_frac) * cos)


class NonFiniteLoss(RMTError, RuntimeError):
    """The loss stayed NaN or infinite for several steps (the message says which stage and step)."""


class Trainer:
    def __init__(self, model: RMT, tokenizer: Tokenizer, pools: dict[str, list[Example]], seed: int = 0,
                 on_metrics: Callable[[dict], None] | None = None, progress: bool = True, log_every: int = 25,
                 max_bad_steps: int = 5, checkpoint_every: int = 0,
                 on_checkpoint: Callable[["Trainer", dict], None] | None = None, max_steps: int | None = None,
                 evaluate: Callable[[RMT], dict] | None = None, eval_every: int = 0,
                 bank_sources: dict[str, Callable[[list[Example]], Any]] | None = None):
        """bank_sources: task name -> examples -> `BankSource` (`Task.bank_source`) for tasks whose examples
        come with inputs for the explicit memory bank; each batch of such a task passes its rows' source to the
        model as its ``explicit_bank``."""
        self.model, self.tok, self.pools, self.seed = model, tokenizer, pools, seed
        self.bank_sources = bank_sources or {}
        self.on_metrics = on_metrics or (lambda m: None)
        self.progress, self.log_every, self.max_bad_steps = progress, log_every, max_bad_steps
        self.checkpoint_every, self.on_checkpoint, self.max_steps = checkpoint_every, on_checkpoint, max_steps
        self.evaluate, self.eval_every = evaluate, eval_every
        self.train_seconds = 0.0  # optimizer-step wall time only (no evaluation, no checkpoint writing)
        self.device = next(model.parameters()).device
        self.rank, self.world = distributed.world()
        self.global_step = 0
        self.history: list[dict] = []

    def run(self, stages: list[Stage], resume: dict | None = None) -> bool:
        """Run the stages in order, from the start or from a saved `resume` state (see `training_state`).
        Returns True when every stage finished, False when `max_steps` stopped the run first."""
        first = resume["stage_index"] if resume else 0
        if resume:
            self.global_step = resume["global_step"]
            # optimizer-step seconds before the interruption (checkpoints older than this field: unknown, 0)
            self.train_seconds = float(resume.get("train_seconds", 0.0))
        for i in range(first, len(stages)):
            if not self.run_stage(stages[i], i, resume if (resume and i == first) else None):
                return False
        return True

    def training_state(self, stage_index: int, stage_step: int, opt: torch.optim.Optimizer, mix: TaskMix,
                       k_rng: random.Random) -> dict:
        """Everything needed to continue exactly: position, optimizer, and every random number generator.

        A collective under FSDP (the sharded optimizer state is gathered): every process must call it.
        """
        return {"stage_index": stage_index, "stage_step": stage_step, "global_step": self.global_step,
                "train_seconds": self.train_seconds,
                "optimizer": get_optimizer_state_dict(self.model, opt, options=distributed.state_dict_options()),
                "mix": mix.state_dict(), "k_rng": k_rng.getstate(), "torch_rng": torch.get_rng_state()}

    def run_stage(self, stage: Stage, stage_index: int = 0, resume: dict | None = None) -> bool:
        model = self.model
        model.train()
        pools = {name: filter_examples(self.pools[name], stage.filters[name]) if name in stage.filters
                 else self.pools[name] for name in stage.tasks if name in self.pools}
        mix = TaskMix(pools, stage.tasks, self.tok, seed=self.seed * 1000 + stage_index, max_len=stage.seq_len,
                      intermediate=stage.intermediate, bank_sources=self.bank_sources)
        k_rng = random.Random(self.seed * 1000 + stage_index + 500)
        opt = torch.optim.AdamW(param_groups(model, stage), lr=stage.lr, betas=(0.9, 0.95))
        net: nn.Module = model
        if self.world > 1 and not distributed.is_fsdp(model):
            if stage.batch_size % self.world:
                raise ConfigError(f"stage {stage.name!r}: batch_size {stage.batch_size} is not divisible by the "
                                 f"{self.world} processes")
            # Wrapped per stage: which parameters train (and so need gradient hooks) changes between stages.
            # Branches can be unused in a step (K = 0, forced routing), hence find_unused_parameters.
            net = DDP(model, find_unused_parameters=True)
        start = 0
        if resume is not None and resume["stage_step"] == 0:  # saved at the previous stage's end
            torch.set_rng_state(resume["torch_rng"])
        elif resume is not None:
            start = resume["stage_step"]
            set_optimizer_state_dict(self.model, opt, resume["optimizer"],
                                     options=distributed.state_dict_options(strict=False))
            mix.load_state_dict(resume["mix"])
            st = resume["k_rng"]
            k_rng.setstate((st[0], tuple(st[1]), st[2]))
            torch.set_rng_state(resume["torch_rng"])
        bar = tqdm(range(start, stage.steps), desc=f"stage {stage.name}", disable=not self.progress,
                   dynamic_ncols=True, unit="step", initial=start, total=stage.steps)
        acc: dict[str, list[float]] = defaultdict(list)
        tokens, t0, bad = 0, time.perf_counter(), 0
        for step in bar:
            step_t0 = time.perf_counter()
            if self.max_steps is not None and self.global_step >= self.max_steps:
                bar.close()
                for p in model.parameters():
                    p.requires_grad_(True)
                return False
            lr = lr_at(step, stage)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            # The global batch: the same on every process.
            x, y, names, source = mix.batch_with_bank(stage.batch_size)
            if self.world > 1:
                rows = slice(self.rank * len(names) // self.world, (self.rank + 1) * len(names) // self.world)
                x, y, names = x[rows], y[rows], names[rows]
                source = source.select(rows) if source is not None else None
            x, y = x.to(self.device), y.to(self.device)
            K = k_rng.randint(stage.think_iters_min, stage.think_iters_max)
            # A bank source is built inside the forward call (not here) so that DDP sees the encoder's use.
            extra = {"explicit_bank": source.to(self.device)} if source is not None else {}
            scored = y != -100  # only these positions get logits: the head over the vocabulary is costly
            out = net(x, think_iters=K, bptt=stage.bptt, memory_logits=stage.memory_aux > 0, logits_at=scored,
                      **extra)
            n_targets = None
            if self.world > 1:
                # DDP averages gradients over processes; scaling by world makes that a global token mean.
                n_targets = distributed.all_reduce_sum((y != -100).sum().float()) / self.world
            loss, lm = loss_fn(out, y[scored], stage.router_cost, stage.memory_aux, n_targets)
            finite = torch.isfinite(loss.detach()).float().reshape(1)
            if self.world > 1:  # every process must skip together, or their collectives would pair up wrongly
                finite = (distributed.all_reduce_sum(finite) == self.world).float()
            if not bool(finite):
                bad += 1
                acc["skipped_nonfinite"].append(1.0)
                if bad >= self.max_bad_steps:
                    raise NonFiniteLoss(f"stage {stage.name!r} step {step}: loss was not finite for {bad} steps "
                                        "in a row; stopping (the last good checkpoint is intact)")
                continue
            bad = 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # a DTensor under FSDP
            opt.step()
            tokens += int((x != self.tok.pad_id).sum())
            acc["loss"].append(lm.item())
            acc["grad_norm"].append(float(gnorm))
            # Expected iterations the router pays for (soft gates in training): K * mean w_think.
            acc["think_iters"].append(out.compute_cost.item())
            for key, aux in (out.aux_losses or {}).items():  # weighted, as they enter the total
                acc[key].append(aux.item())
            probs = out.routing.probs.detach().float().mean(dim=(0, 1)).tolist()
            for i, b in enumerate(("memory", "think", "both")):
                acc[f"router_{b}"].append(probs[i])
            with torch.no_grad():  # per-task loss: which part of the mix is still hard
                per_tok = torch.nn.functional.cross_entropy(out.logits.float(), y[scored], reduction="none")
                row_of = scored.nonzero()[:, 0]  # the row of each scored position
                for n in set(names):
                    rows = torch.tensor([nm == n for nm in names], device=y.device)
                    mine = rows[row_of]
                    if mine.any():
                        acc[f"loss/{n}"].append(float(per_tok[mine].mean()))
            self.global_step += 1
            self.train_seconds += time.perf_counter() - step_t0
            done = step + 1 == stage.steps
            capped = self.max_steps is not None and self.global_step >= self.max_steps
            if self.global_step % self.log_every == 0 or done or capped:
                elapsed = time.perf_counter() - t0
                # elapsed_s: optimizer-step wall seconds since the run started (the same clock as val_loss rows)
                m = {"step": self.global_step, "stage": stage.name, "lr": lr,
                     "tokens_per_s": tokens / max(elapsed, 1e-9), "elapsed_s": self.train_seconds}
                m.update({k: sum(v) / len(v) for k, v in acc.items() if k != "skipped_nonfinite"})
                m["skipped_nonfinite"] = len(acc.get("skipped_nonfinite", []))
                acc.clear()
                self.history.append(m)
                if self.rank == 0:
                    self.on_metrics(m)
                bar.set_postfix(loss=f"{m['loss']:.3f}", think=f"{m['think_iters']:.2f}",
                                tok_s=f"{m['tokens_per_s']:.0f}")
            if self.evaluate and self.eval_every and self.global_step % self.eval_every == 0 and self.rank == 0:
                ev = {"step": self.global_step, "stage": stage.name, "elapsed_s": self.train_seconds,
                      **self.evaluate(model)}
                model.train()
                self.history.append(ev)
                self.on_metrics(ev)
            if self.on_checkpoint and ((self.checkpoint_every and self.global_step % self.checkpoint_every == 0)
                                       or done or capped):
                # At a stage's end the saved position is the start of the next stage.
                pos = (stage_index + 1, 0) if done else (stage_index, step + 1)
                self.on_checkpoint(self, self.training_state(*pos, opt, mix, k_rng))  # writes on rank 0
                distributed.barrier()
        bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
        return True
