"""`rmt generate`: answer prompts with a trained checkpoint, with test-time compute as flags.

    rmt generate --checkpoint runs/demo/checkpoint --prompt "Q: Mia has 7 apples. She gets 5 more. How many apples now? A:" \
        --think-iters 8 --refine-rounds 2

--think-iters K runs the thinking core K times per token (more than in training is allowed: R6);
--refine-rounds R feeds each answer back as a thought and re-reads the question (``refine.py``), stopping
early when the answer is stable. Neither changes a weight.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from rmt.checkpoint import CheckpointError, load_model
from rmt.refine import refine_answer
from rmt.router import BRANCHES
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
    try:
        model, tok = load_model(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f"rmt generate: error: {e}") from None
    tok = tok or ByteTokenizer()
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for prompt in prompts:
        answers = refine_answer(model, tok, prompt, args.refine_rounds, max_new_tokens=args.max_new_tokens,
                                think_iters=args.think_iters, memory=not args.memory_off, router=args.router)
        if args.json:
            print(json.dumps({"prompt": prompt, "answer": answers[-1], "rounds": answers}))
        else:
            print(prompt + answers[-1])
    return 0
