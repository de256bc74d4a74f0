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
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch

from tqdm import tqdm

from rmt.checkpoint import load_model
from rmt.errors import UsageError
from rmt.checkpoint import find_checkpoint
from rmt.model import PREFILL_CHUNK
from rmt.evaluation.refine import evaluate_refined, refine_answer
from rmt.model.router import BRANCHES
from rmt.tasks import TASKS, get_task
from rmt.tokenizer import ByteTokenizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with a checkpoint (thinking iterations, refinement rounds)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeatable), read as the bytes given; default: the non-blank lines of stdin")
    p.add_argument("--think-iters", type=int, default=None, help="thinking iterations K (default: the config's)")
    p.add_argument("--refine-rounds", type=int, default=0, help="refinement rounds R (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--memory-off", action="store_true", help="never read memory (an ablation)")
    p.add_argument("--facts", nargs="?", const="", default=None, metavar="FILE",
                   help="write the facts of this fact file (default: facts.jsonl beside the checkpoint, see "
                        "`rmt memory write`) into the explicit bank the answers read")
    p.add_argument("--router", default="learned", choices=("learned",) + BRANCHES, help="force a branch")
    p.add_argument("--seed", type=int, default=0, help="generation is greedy; the seed only fixes torch's RNG")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt with every round's answer")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK,
                   help=f"read a long prompt this many tokens at a time (default {PREFILL_CHUNK}): memory holds one "
                        "chunk's activations, whatever the prompt's length")
    p.set_defaults(func=_main)


def _prompts(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """-> [(where, the prompt's bytes)]: --prompt arguments exactly as given (the bytes the shell passed, even
    if they are not UTF-8), else stdin's non-blank lines without their line ending."""
    if args.prompt:
        return [(f"--prompt {i + 1}" if len(args.prompt) > 1 else "--prompt", os.fsencode(p))
                for i, p in enumerate(args.prompt)]
    stdin = getattr(sys.stdin, "buffer", None)  # a replaced sys.stdin (tests) may be text only
    lines = [line.rstrip(b"\r\n") for line in stdin] if stdin is not None else [
        line.rstrip("\r\n").encode("utf-8", errors="surrogateescape") for line in sys.stdin]
    prompts = [(f"stdin line {i + 1}", line) for i, line in enumerate(lines) if line.strip()]
    if not prompts:
        raise UsageError("no prompt: expected --prompt TEXT or non-blank lines on stdin, found none")
    return prompts


def _prompt_text(where: str, data: bytes, tok) -> str:
    """The prompt as the str the tokenizer encodes. Bytes that are not UTF-8 ride along as surrogate escapes,
    which the byte tokenizer turns back into those bytes (any byte is a token); other tokenizers read text."""
    if not data:
        raise UsageError(f"{where}: expected at least one byte, got an empty prompt")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if isinstance(tok, ByteTokenizer):
            return data.decode("utf-8", errors="surrogateescape")
        raise UsageError(f"{where}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8, and this "
                         f"checkpoint's tokenizer ({type(tok).__name__}) reads UTF-8 text") from None


def _main(args: argparse.Namespace) -> int:
    for name, low in (("think_iters", 0), ("refine_rounds", 0), ("max_new_tokens", 1), ("prefill_chunk", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')}: expected >= {low}, got {value}")
    torch.manual_seed(args.seed)
    model, tok = _load(args.checkpoint)
    bank = _fact_bank(args, model, tok) if args.facts is not None and not args.memory_off else None
    prompts = [(where, _prompt_text(where, data, tok)) for where, data in _prompts(args)]
    for where, prompt in prompts:
        with _PrefillProgress(f"reading {where}", args.prefill_chunk) as bar:
            answers = refine_answer(model, tok, prompt, args.refine_rounds, max_new_tokens=args.max_new_tokens,
                                    think_iters=args.think_iters, memory=not args.memory_off, router=args.router,
                                    prefill_chunk=args.prefill_chunk, on_prefill=bar.update, explicit_bank=bank)
        if args.json:
            print(json.dumps({"prompt": prompt, "answer": answers[-1], "rounds": answers}), flush=True)
        else:  # the prompt's own bytes back, then the answer
            sys.stdout.flush()
            sys.stdout.buffer.write((prompt + answers[-1]).encode("utf-8", errors="surrogateescape") + b"\n")
            sys.stdout.buffer.flush()
    return 0


class _PrefillProgress:
    """A progress bar on stderr for prompts longer than one prefill chunk (shorter ones show nothing)."""

    def __init__(self, desc: str, chunk: int):
        self.desc, self.chunk, self.bar = desc, chunk, None

    def update(self, done: int, total: int) -> None:
        if total <= self.chunk:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="token", unit_scale=True, file=sys.stderr)
        self.bar.n = done
        self.bar.refresh()
        if done >= total:  # a refinement round reads a longer prompt again: a new bar
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "_PrefillProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _fact_bank(args: argparse.Namespace, model, tok):
    """The bank of the fact file --facts names (a run's facts.jsonl by default), encoded by the model."""
    from rmt.factfile import bank_entries, default_path, read_facts
    from rmt.tasks.facts_bank import FactBank

    c = model.config
    if not (c.bank.enabled and c.reader.query_ema):
        raise UsageError("--facts: this model has no explicit bank that reads fact texts (it needs "
                         "model.bank.enabled and model.reader.query_ema > 0)")
    path = Path(args.facts) if args.facts else default_path(find_checkpoint(args.checkpoint))
    facts = read_facts(path)
    if not facts:
        raise UsageError(f"--facts: {path} holds no facts")
    with torch.no_grad():
        return FactBank.from_texts(bank_entries(facts), tok, rows=1).build(model)[0]


def _load(run: str):
    model, tok = load_model(find_checkpoint(run))  # CheckpointError / FileNotFoundError: reported by rmt.cli
    return model, tok or ByteTokenizer()


def eval_task(args: argparse.Namespace) -> int:
    """`rmt eval --task NAME`: greedy answers on a task split, exact match, optionally refined; JSON out."""
    if args.think_iters is not None and args.think_iters < 0:
        raise UsageError(f"--think-iters: expected >= 0, got {args.think_iters}")
    if args.refine_rounds < 0:
        raise UsageError(f"--refine-rounds: expected >= 0, got {args.refine_rounds}")
    torch.manual_seed(args.seed)
    model, tok = _load(args.checkpoint)
    try:
        seeded = args.task in TASKS and "seed" in {f.name for f in fields(TASKS[args.task].Config)}
        task = get_task(args.task, **({"seed": args.seed} if seeded else {}))
        examples = task.split(args.split)
    except (ValueError, KeyError) as e:
        raise UsageError(f"--task {args.task} --split {args.split}: {e}") from None
    examples = [ex for ex in examples if ex.kind == "qa"]
    if not examples:
        raise UsageError(f"--task {args.task} --split {args.split}: expected question-answer examples, found none")
    if args.limit is not None:
        examples = examples[:max(1, int(args.limit if args.limit >= 1 else args.limit * len(examples)))]
    source = task.bank_source(args.split, tok)  # e.g. facts-bank: each batch reads its people's facts
    extra = {"bank_source": source} if source is not None else {}
    res = evaluate_refined(model, examples, tok, args.refine_rounds, max_new_tokens=args.max_gen_toks or 32,
                           batch_size=args.batch_size, think_iters=args.think_iters, memory=not args.memory_off,
                           **extra)
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
