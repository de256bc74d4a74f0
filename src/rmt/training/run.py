"""A training run described by a TOML file: the model, the tasks, the curriculum stages, checkpointing.

    seed = 0
    checkpoint_every = 100          # optimizer steps between checkpoints
    [model]
    preset = "tiny"                 # the model's own keys may follow and override the preset
    [model.core]                    # ... section by section (RMTConfig: ssm, product_keys, bank, reader, core,
    iters = 4                       #     router; [model.encoders.NAME] for a modality's encoder)
    [tasks.arithmetic]              # task config overrides (the run's seed is the default seed)
    n_train = 100000
    [[stages]]
    name = "facts"
    steps = 300
    tasks = { "facts-synthetic" = 1.0 }

Layout of an output folder:

    OUT/run_config.json                    the resolved config (what `--resume OUT` continues)
    OUT/metrics.jsonl                      one JSON object per logging interval
    OUT/checkpoints/step-0000100/          model.safetensors, config.json, tokenizer, training state
    OUT/checkpoints/latest -> step-...     always the last complete checkpoint (swapped atomically)
    OUT/.rmt-lock                          flock-ed by the process writing OUT (its pid inside; see rmt.rundir)

A folder belongs to one run: a new run in a folder holding another's files is refused (`--resume OUT`
continues it, `--overwrite` moves it to OUT.old-N first), and so is any second process while one writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from rmt.checkpoint import CheckpointError, load_model, load_training_state, save_model, save_training_state
from rmt.model.config import ConfigError, RMTConfig
from rmt.errors import RunFolderError
from rmt.rundir import RunFolder, claim_folder, reason, writing
from rmt.model import RMT
from rmt.model.presets import preset
from rmt.tasks import TASKS, get_task
from rmt.tokenizer import ByteTokenizer, TokenizerConfig
from rmt.training.curriculum import Stage
from rmt.training import distributed
from rmt.training.batches import collate, encode_example, filter_examples
from rmt.training.trainer import Trainer


@dataclass
class RunConfig:
    model: RMTConfig
    stages: list[Stage]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    device: str = "cpu"
    parallel: str = "ddp"  # with several processes: "ddp" (replicated) or "fsdp" (FSDP2, sharded)
    eval_every: int = 0  # optimizer steps between validation losses (0 = none)
    eval_task: str = ""  # the task whose validation split is scored (default: the last stage's first task)
    eval_rows: int = 512  # validation examples scored each time (the first ones, the same every time)
    # [tokenizer]: bytes, or a BPE learned from the run's training texts (its vocabulary size sets the model's)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    preset: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed: expected an integer, got {self.seed!r}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device: expected 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.eval_task and self.eval_task not in TASKS:
            raise ConfigError(f"eval_task: unknown task {self.eval_task!r}; known tasks: {sorted(TASKS)}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel: expected 'ddp' or 'fsdp', got {self.parallel!r}")
        if not self.stages:
            raise ConfigError("stages: expected at least one [[stages]] table")
        for name in ("log_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: expected an integer >= 0, got {self.checkpoint_every!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "RunConfig":
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        model_raw = dict(raw.pop("model", {}))
        name = model_raw.pop("preset", raw.pop("preset", None))
        where = f"{source} [model]"  # every model config error names the file and table
        model = preset(name, model_raw, where) if name is not None else RMTConfig.from_dict(model_raw, where)
        stages = []
        for i, st in enumerate(raw.pop("stages", [])):
            try:
                stages.append(Stage.from_dict(st))
            except ConfigError as e:
                raise ConfigError(f"{source} stages[{i}]: {e}") from None
        try:
            tokenizer = TokenizerConfig.from_dict(raw.pop("tokenizer", {}))
        except ValueError as e:
            raise ConfigError(f"{source} [tokenizer]: {e}") from None
        tasks = raw.pop("tasks", {})
        for name in tasks:
            if name not in TASKS:
                raise ConfigError(f"{source} [tasks.{name}]: unknown task; known tasks: {sorted(TASKS)}")
        with torch.device("meta"):  # parameter names only, to check `frozen` prefixes
            names = [n for n, _ in RMT(model).named_parameters()]
        for i, stage in enumerate(stages):
            for t in stage.tasks:
                if t not in TASKS:
                    raise ConfigError(f"{source} stages[{i}].tasks: unknown task {t!r}; known tasks: {sorted(TASKS)}")
            for t in stage.filters:
                if t not in stage.tasks:
                    raise ConfigError(f"{source} stages[{i}].filters: {t!r} is not one of the stage's tasks")
            for prefix in stage.frozen:
                if not any(n.startswith(prefix) for n in names):
                    raise ConfigError(f"{source} stages[{i}].frozen: {prefix!r} matches no parameter "
                                      f"(top-level modules: {sorted({n.split('.')[0] for n in names})})")
        if not stages:
            raise ConfigError(f"{source}: stages: expected at least one [[stages]] table, found none")
        try:
            return cls(model=model, stages=stages, tasks=tasks, tokenizer=tokenizer, preset=name, **raw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | None = None) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: expected a TOML text file, found a byte that is not UTF-8 "
                              f"(0x{e.object[e.start]:02x} at byte {e.start})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        if not raw:
            raise ConfigError(f"{path}: the file is empty; expected a [model] table and at least one [[stages]] "
                              "table (see configs/demo.toml)")
        for item in overrides or []:
            apply_override(raw, item)
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "stages": [vars(s) for s in self.stages], "tasks": self.tasks,
                "seed": self.seed, "log_every": self.log_every, "checkpoint_every": self.checkpoint_every,
                "keep_checkpoints": self.keep_checkpoints, "device": self.device, "parallel": self.parallel,
                "eval_every": self.eval_every, "eval_task": self.eval_task, "eval_rows": self.eval_rows,
                "tokenizer": self.tokenizer.to_dict()}


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`--set model.d_model=64`, `--set stages.0.steps=10`, `--set seed=3`: edit the raw config in place.
    The value is read as a TOML value (numbers, booleans, strings in quotes, inline tables), else a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: no item {part!r} (there are {len(node)})")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: no item {last!r} (there are {len(node)})")
        node[int(last)] = value
    else:
        node[last] = value


# ------------------------------------------------------------------------------------------------ run folder
# What `rmt train` writes in its folder: a folder holding any of these holds a run (see `rmt.rundir`).
TRAIN_OUTPUTS = ("run_config.json", "metrics.jsonl", "checkpoints", "tensorboard", "report.json",
                 "predictions_*.jsonl", "*_attention.png", "training.png")
TMP_PREFIX = ".tmp-"  # a checkpoint being written: checkpoints/.tmp-step-NNNNNNN


def _claim(out: Path, rank: int, world: int, device: torch.device, resume: bool, overwrite: bool) -> RunFolder | None:
    """Rank 0 claims (locks) the run folder; every rank learns whether that worked, so that under torchrun the
    other ranks stop as soon as rank 0 is refused instead of waiting for a collective that never comes."""
    folder, error = None, None
    if rank == 0:
        try:
            folder = claim_folder(out, markers=TRAIN_OUTPUTS, resume=resume, overwrite=overwrite,
                                  flag="--resume" if resume else "--out", hint=f"continue it with --resume {out}")
            if resume:
                _remove_interrupted(out)
        except BaseException as e:  # reported to the other ranks first, then raised
            error = e
    if world > 1 and not distributed.all_ok(error is None, device):
        if error is None:
            raise RunFolderError(f"{out}: rank 0 could not claim the run folder (see its error); rank {rank} stops")
    if error is not None:
        raise error
    return folder


def _remove_interrupted(out: Path) -> None:
    """Remove what an interrupted checkpoint write left (`latest` never points there)."""
    ckpts = out / "checkpoints"
    if not ckpts.is_dir():
        return
    for p in ckpts.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    (ckpts / ".latest.tmp").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ checkpoints
def _save(out: Path, model: RMT, tok, state: dict, keep: int) -> None:
    """Called on every process (gathering sharded weights is a collective); only rank 0 writes."""
    weights = get_model_state_dict(model, options=distributed.state_dict_options())
    if distributed.world()[0] != 0:
        return
    ckpts = out / "checkpoints"
    step_dir = ckpts / f"step-{state['global_step']:07d}"
    tmp = ckpts / f"{TMP_PREFIX}{step_dir.name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp, tok, state_dict=weights)
        save_training_state(state, tmp)
    except (OSError, SafetensorError) as e:  # disk full, read-only: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        latest = ckpts / "latest"
        kept = f"checkpoints/latest is still {os.readlink(latest)}" if latest.is_symlink() else "no checkpoint was kept"
        raise RunFolderError(f"{out}: cannot write checkpoint {step_dir.name}: {reason(e)}; {kept}") from None
    shutil.rmtree(step_dir, ignore_errors=True)
    os.replace(tmp, step_dir)
    # Point `latest` at the new folder in one atomic rename of a fresh symlink.
    link_tmp = ckpts / ".latest.tmp"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(step_dir.name)
    os.replace(link_tmp, ckpts / "latest")
    old = sorted(p for p in ckpts.glob("step-*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, max_steps: int | None = None,
          progress: bool = True, overwrite: bool = False,
          on_end: Callable[[RMT, Any, float], None] | None = None) -> RMT:
    """Run (or continue) the configured curriculum, writing checkpoints and metrics under `out`.

    on_end(model, tokenizer, train_seconds): called on rank 0 when training stops (`rmt train` writes the tasks' own
    reports there: `rmt.evaluation.task_reports.write_task_reports`).

    The folder is locked while this runs (rank 0 holds the lock). A new run (not `resume`) is refused in a
    folder that holds another run's files, unless `overwrite`, which moves them aside to OUT.old-N first.
    """
    out = Path(out)
    sources: dict = {}
    pools = build_pools(cfg, sources)  # before anything is written: a bad task setting loses nothing
    rank, world, device = distributed.init_from_env(cfg.device)
    try:
        folder = _claim(out, rank, world, device, resume, overwrite)
    except BaseException:
        distributed.shutdown()
        raise
    try:
        return _train(cfg, out, pools, sources, rank, world, device, resume, max_steps, progress, on_end)
    finally:
        if folder is not None:
            folder.release()
        distributed.shutdown()


def _train(cfg: RunConfig, out: Path, pools: dict, sources: dict, rank: int, world: int, device: torch.device,
           resume: bool, max_steps: int | None, progress: bool, on_end: Callable[[RMT, Any, float], None] | None) -> RMT:
    torch.manual_seed(cfg.seed)
    state = None
    latest = out / "checkpoints" / "latest"
    if resume:
        if not latest.exists():
            raise CheckpointError(f"--resume {out}: nothing to resume: no complete checkpoint (checkpoints/latest "
                                  f"is missing); start a new run there with --config ... --out {out} --overwrite")
        model, tok = load_model(latest)
        tok = tok or ByteTokenizer()  # the run's own tokenizer, saved in every checkpoint (never retrained)
        if model.config != cfg.model:
            raise CheckpointError(f"{latest}: checkpoint was written for another model config than {out}/run_config.json")
        state = load_training_state(latest)
        if state["stage_index"] >= len(cfg.stages):
            return model
    else:
        tok = build_tokenizer(cfg.tokenizer, pools)
        # the tokenizer decides the vocabulary; run_config.json (written below) keeps the resolved model config
        cfg.model = cfg.model.replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
        model = RMT(cfg.model)
    model.to(device)
    if world > 1 and cfg.parallel == "fsdp":
        distributed.shard(model)
    if rank == 0:
        with writing(out, "run_config.json"):
            (out / "run_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    metrics = out / "metrics.jsonl"
    if state is not None and rank == 0 and metrics.is_file():
        # Rows logged after the checkpoint were lost work; the resumed run logs those steps again.
        keep = [l for l in metrics.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= state["global_step"]]
        with writing(out, "metrics.jsonl"):
            metrics.write_text("".join(l + "\n" for l in keep))
    tb = _tensorboard(out / "tensorboard") if rank == 0 else None

    def log(m: dict) -> None:
        with writing(out, "metrics.jsonl"), metrics.open("a") as f:
            f.write(json.dumps(m) + "\n")
        if tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(k, v, m["step"])
            tb.flush()

    evaluate = validation_loss_fn(cfg, tok) if cfg.eval_every else None
    trainer = Trainer(model, tok, pools, evaluate=evaluate, eval_every=cfg.eval_every, seed=cfg.seed, on_metrics=log, progress=progress and rank == 0,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, max_steps=max_steps,
                      on_checkpoint=lambda tr, st: _save(out, model, tok, st, cfg.keep_checkpoints),
                      bank_sources=bank_sources(sources, tok))
    trainer.run(cfg.stages, resume=state)
    if rank == 0 and on_end is not None:
        # optimizer-step wall seconds of the whole run, a resumed one included (kept in the checkpoints)
        on_end(model, tok, trainer.train_seconds)
    return model


def _tensorboard(directory: Path):
    """A TensorBoard writer when the `tensorboard` package is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))


def build_tokenizer(config: TokenizerConfig, pools: dict[str, list]):
    """The run's tokenizer: bytes, or a BPE learned from every training example of the run's tasks (in task-name
    order, so the same config gives the same tokenizer)."""
    return config.build(ex.text() for name in sorted(pools) for ex in pools[name])


def task_settings(cfg: RunConfig, name: str) -> dict[str, Any]:
    """A task's settings: the run's seed (for tasks that take one) under the config's own overrides."""
    seeded = "seed" in {f.name for f in fields(TASKS[name].Config)}
    return {**({"seed": cfg.seed} if seeded else {}), **cfg.tasks.get(name, {})}


def bank_sources(tasks: dict, tokenizer) -> dict:
    """task name -> examples -> BankSource, for the tasks whose examples come with bank inputs (images, facts)."""
    sources = {name: task.bank_source("train", tokenizer) for name, task in tasks.items()}
    return {name: s for name, s in sources.items() if s is not None}


def build_pools(cfg: RunConfig, sources: dict | None = None) -> dict[str, list]:
    """The training examples of every task a stage names; checks every stage's filters keep something and
    that the model can do every task (`Task.check_model`).

    sources: when given, filled with task name -> Task, so that once the tokenizer exists the caller can ask
    each for its bank inputs (`bank_sources`).
    """
    pools = {}
    for name in sorted({t for s in cfg.stages for t in s.tasks}):
        try:
            task = get_task(name, **task_settings(cfg, name))
            pools[name] = task.split("train")
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise ConfigError(f"tasks.{name}: {e}") from None
        if not pools[name]:
            where = f" (read from {task.config.path})" if hasattr(task.config, "path") else ""
            raise ConfigError(f"tasks.{name}: expected training examples, found an empty train split{where}")
        task.check_model(cfg.model)
        if sources is not None:
            sources[name] = task
    for i, stage in enumerate(cfg.stages):
        for name, flt in stage.filters.items():
            try:
                filter_examples(pools[name], flt)
            except ValueError as e:
                raise ConfigError(f"stages[{i}].filters.{name}: {e}") from None
    return pools


def validation_loss_fn(cfg: RunConfig, tok, batch_size: int = 64):
    """-> model -> {"val_loss": mean cross-entropy over the scored tokens of a fixed validation subset},
    computed the way the model is used: eval mode, inference-time routing, the config's K."""
    name = cfg.eval_task or next(iter(cfg.stages[-1].tasks))
    task = get_task(name, **task_settings(cfg, name))
    examples = task.split("validation")[: cfg.eval_rows]
    encoded = [encode_example(ex, tok) for ex in examples]
    source = task.bank_source("validation", tok)  # e.g. a visual task's rows are scored with their image in the bank

    @torch.no_grad()
    def evaluate(model: RMT) -> dict:
        model.eval()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, len(encoded), batch_size):
            x, y = collate(encoded[i:i + batch_size], tok.pad_id)
            x, y = x.to(device), y.to(device)
            extra = {}
            if source is not None:
                extra["explicit_bank"] = source(examples[i:i + batch_size]).to(device)
            logits = model(x, **extra).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                                             ignore_index=-100, reduction="sum"))
            count += int((y != -100).sum())
        return {"val_loss": total / max(count, 1), "val_task": name}

    return evaluate


def load_run_config(out: str | Path) -> RunConfig:
    path = Path(out) / "run_config.json"
    if not path.is_file():
        raise ConfigError(f"{out}: not a run folder (run_config.json is missing)")
    return RunConfig.from_dict(json.loads(path.read_text()), source=str(path))
