"""`rmt generate` and `rmt eval --task`: answer with a trained checkpoint, with test-time compute as flags.

    rmt generate --checkpoint runs/demo/checkpoint --prompt "Q: Mia has 7 apples. She gets 5 more. How many apples now? A:" \
        --think-iters 8 --refine-rounds 2

--think-iters K runs the thinking core K times per token (more than in training is allowed: R6);
--refine-rounds R feeds each answer back as a thought and re-reads the question (``refine.py``), stopping
early when the answer is stable. Neither changes a weight; `rmt eval --task` checks that (weights_unchanged).

    rmt eval --task arithmetic --checkpoint runs/demo --limit 200 --think-iters 8 --refine-rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from rmt.checkpoint import CheckpointError, load_model
from rmt.integrations import find_checkpoint
from rmt.refine import evaluate_refined, refine_answer
from rmt.router import BRANCHES
from rmt.tasks import TASKS, get_task
from rmt.tokenizer import ByteTokenizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with a checkpoint (thinking iterations, refinement rounds)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable); default: lines of stdin")
    p.add_argument("--think-iters", type=int, default=None, help="thinking iterations K (default: the config's)")
    p.add_argument("--refine-rounds", type=int, default=0, help="refinement rounds R (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--memory-off", action="store_true", help="never read memory (an ablation)")
    p.add_argument("--router", default="learned", choices=("learned",) + BRANCHES, help="force a branch")
    p.add_argument("--seed", type=int, default=0, help="generation is greedy; the seed only fixes torch's RNG")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt with every round's answer")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    for name in ("think_iters", "refine_rounds", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "max_new_tokens" else 0):
            raise SystemExit(f"rmt generate: error: --{name.replace('_', '-')}: expected >= 0, got {value}")
    torch.manual_seed(args.seed)
    model, tok = _load(args.checkpoint, "generate")
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for prompt in prompts:
        answers = refine_answer(model, tok, prompt, args.refine_rounds, max_new_tokens=args.max_new_tokens,
                                think_iters=args.think_iters, memory=not args.memory_off, router=args.router)
        if args.json:
            print(json.dumps({"prompt": prompt, "answer": answers[-1], "rounds": answers}))
        else:
            print(prompt + answers[-1])
    return 0


def _load(run: str, command: str):
    try:
        model, tok = load_model(find_checkpoint(run))
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"rmt {command}: error: {e}") from None
    return model, tok or ByteTokenizer()


def eval_task(args: argparse.Namespace) -> int:
    """`rmt eval --task NAME`: greedy answers on a task split, exact match, optionally refined; JSON out."""
    if args.think_iters is not None and args.think_iters < 0:
        raise SystemExit(f"rmt eval: error: --think-iters: expected >= 0, got {args.think_iters}")
    if args.refine_rounds < 0:
        raise SystemExit(f"rmt eval: error: --refine-rounds: expected >= 0, got {args.refine_rounds}")
    torch.manual_seed(args.seed)
    model, tok = _load(args.checkpoint, "eval")
    try:
        seeded = args.task in TASKS and "seed" in {f.name for f in fields(TASKS[args.task].Config)}
        examples = get_task(args.task, **({"seed": args.seed} if seeded else {})).split(args.split)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"rmt eval: error: --task {args.task} --split {args.split}: {e}") from None
    examples = [ex for ex in examples if ex.kind == "qa"]
    if not examples:
        raise SystemExit(f"rmt eval: error: task {args.task!r} split {args.split!r} has no question-answer examples")
    if args.limit is not None:
        examples = examples[:max(1, int(args.limit if args.limit >= 1 else args.limit * len(examples)))]
    res = evaluate_refined(model, examples, tok, args.refine_rounds, max_new_tokens=args.max_gen_toks or 32,
                           batch_size=args.batch_size, think_iters=args.think_iters, memory=not args.memory_off)
    out = {"task": args.task, "split": args.split, "n": len(examples), "think_iters": args.think_iters,
           "refine_rounds": args.refine_rounds, "accuracy": res.acc_after, "accuracy_by_round": res.accuracy_by_round,
           "rounds_run": res.rounds_run, "tokens_per_answer": res.tokens_per_answer,
           "weights_unchanged": res.weights_unchanged}
    print(json.dumps(out))
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(out, indent=2) + "\n")
        with open(d / "samples.jsonl", "w") as f:
            for ex, pred in zip(examples, res.predictions):
                f.write(json.dumps({"prompt": ex.prompt, "target": ex.target, "prediction": pred}) + "\n")
    return 0
