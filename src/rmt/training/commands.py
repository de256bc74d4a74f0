"""`rmt train`, `rmt plot` and `rmt presets`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmt.errors import RMTError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a TOML config (curriculum stages, checkpoints, resume)")
    p.add_argument("--config", help="configs/NAME.toml (not needed with --resume)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. model.d_model=64 or stages.0.steps=10 (repeatable)")
    p.add_argument("--seed", type=int, help="overrides the config's seed")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all (smoke runs)")
    p.add_argument("--out", help="output folder (default runs/<config name>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where its last checkpoint is")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --out holds another: the old run is moved to OUT.old-N, not deleted")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("plot", help="draw a run's training curves as PNG")
    p.add_argument("run", help="a run folder (with metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default RUN/training.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("presets", help="parameter counts and FSDP2 memory estimates of the model presets")
    p.set_defaults(func=_presets)


def _train(args: argparse.Namespace) -> int:
    from rmt.training.run import RunConfig, load_run_config, train

    # Errors (ConfigError, CheckpointError, RunFolderError, ...) are reported by the one boundary in rmt.cli.
    if args.resume:
        extra = [f for f, v in (("--config", args.config), ("--set", args.set), ("--seed", args.seed),
                                ("--out", args.out), ("--overwrite", args.overwrite)) if v]
        if extra:
            raise UsageError(f"--resume continues the run folder's own config and folder; drop {', '.join(extra)}")
        cfg = load_run_config(args.resume)
        out = Path(args.resume)
    else:
        if not args.config:
            raise UsageError("--config is required (or --resume DIR)")
        overrides = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = RunConfig.from_toml(args.config, overrides)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps: expected >= 1, got {args.max_steps}")
    from rmt.evaluation.task_reports import write_task_reports
    from rmt.training.run import task_settings

    names = sorted({t for s in cfg.stages for t in s.tasks})
    settings = {name: task_settings(cfg, name) for name in names}
    train(cfg, out, resume=bool(args.resume), max_steps=args.max_steps, progress=not args.no_progress,
          overwrite=args.overwrite,
          on_end=lambda model, tok, seconds: write_task_reports(model, settings, tok, out, seconds))
    print(f"run folder: {out} (last checkpoint: {out / 'checkpoints' / 'latest'})")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rmt.evaluation.plots import plot_training, read_metrics

    try:
        rows = read_metrics(args.run)
    except (FileNotFoundError, ValueError) as e:  # the plotting module's own errors are about the run's files
        raise RMTError(str(e)) from None
    path = plot_training(rows, args.out or Path(args.run) / "training.png", title=f"{args.run}: training loss")
    print(path)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from rmt.model.presets import PRESETS, count_params, fsdp_memory_gb, preset

    print("| preset | total params | active per token | memory values | FSDP2 GB/GPU (8 GPUs) | (64 GPUs) |")
    print("|---|---|---|---|---|---|")
    for name in PRESETS:
        cfg = preset(name)
        n = count_params(cfg)
        print(f"| {name} | {n['total'] / 1e6:,.1f}M | {n['active_per_token'] / 1e6:,.1f}M | {n['memory'] / 1e6:,.1f}M "
              f"| {fsdp_memory_gb(cfg, 8):,.1f} | {fsdp_memory_gb(cfg, 64):,.1f} |")
    print("FSDP2 estimate: 16 bytes/param (fp32 weights, grads, 2 Adam moments) sharded, plus bf16 activations of "
          "8,192 tokens per GPU with layer checkpointing.")
    return 0
