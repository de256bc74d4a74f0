"""`rmt export --hf`, `rmt eval --harness` and `rmt memory build`: the command-line side of the integrations.

Each handler imports its integration only when it runs, so `rmt --help` and every other command work without
the optional extras, and a missing extra is reported by name (`pip install 'rmt[hf]'`, ...).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from rmt.factfile import register_commands as register_fact_commands


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fail(command: str, error: Exception) -> int:
    """One line on stderr, exit status 2 (as argparse, `rmt data` and `rmt train` report bad input)."""
    print(f"rmt {command}: error: {error}", file=sys.stderr)
    return 2


def _export(args: argparse.Namespace) -> int:
    from rmt.integrations.hf import export_checkpoint

    out = export_checkpoint(args.run, args.out)
    print(f"wrote a transformers model folder to {out} (load it with: "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True) and "
          f"AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True))")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.task:
        from rmt.evaluation.generate import eval_task

        return eval_task(args)
    if args.refine_rounds:
        raise SystemExit("--refine-rounds: only with --task (the harness path generates once per request)")
    from rmt.checkpoint import CheckpointError
    from rmt.integrations.harness import LOCAL_TASKS, HarnessTaskError, evaluate

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    if not tasks:
        raise SystemExit(f"--harness: expected one or more task names, e.g. {','.join(LOCAL_TASKS)}")
    if args.limit is not None and args.limit <= 0:
        raise SystemExit(f"--limit: expected a positive number, got {args.limit}")
    _seed(args.seed)
    gen_kwargs = {"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None
    try:
        results = evaluate(args.checkpoint, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                           batch_size=args.batch_size, device=args.device, seed=args.seed,
                           think_iters=args.think_iters, memory=not args.memory_off, log_samples=args.out is not None,
                           gen_kwargs=gen_kwargs)
    except (HarnessTaskError, CheckpointError, FileNotFoundError) as e:
        return _fail("eval", e)
    for task, metrics in results["results"].items():
        shown = {k: v for k, v in metrics.items() if k not in ("name", "alias") and "stderr" not in k}
        print(f"{task}: {json.dumps(shown)}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results["results"], indent=2, default=str) + "\n")
        with open(out / "samples.jsonl", "w") as f:
            for task, samples in results.get("samples", {}).items():
                for s in samples:
                    f.write(json.dumps({"task": task, "doc_id": s["doc_id"], "resps": s["resps"],
                                        "filtered_resps": s["filtered_resps"], "target": s["target"]},
                                       default=str) + "\n")
        print(f"wrote {out / 'results.json'} and {out / 'samples.jsonl'}")
    return 0


def _memory_build(args: argparse.Namespace) -> int:
    from rmt.checkpoint import load_model
    from rmt.checkpoint import find_checkpoint
    from rmt.integrations.faiss_bank import IndexSpec, build_bank, read_facts
    from rmt.tokenizer import ByteTokenizer

    _seed(args.seed)
    ckpt = find_checkpoint(args.checkpoint)
    model, tok = load_model(ckpt)
    texts = read_facts(args.facts)
    spec = IndexSpec(kind=args.index, nlist=args.nlist, nprobe=args.nprobe)
    meta = build_bank(model, tok or ByteTokenizer(), texts, args.out, spec, seed=args.seed,
                      batch_size=args.batch_size, checkpoint=str(ckpt))
    print(f"stored {meta['entries']} facts in {args.out} ({meta['index']['kind']} index; encoding "
          f"{meta['encode_seconds']} s, indexing {meta['index_seconds']} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="convert a checkpoint for another ecosystem (Hugging Face transformers)")
    p.add_argument("--hf", nargs=2, metavar=("RUN", "DIR"), required=True,
                   help="write RUN's checkpoint as a transformers model folder DIR (needs rmt[hf])")
    p.set_defaults(func=lambda a: _export(argparse.Namespace(run=a.hf[0], out=a.hf[1])))

    p = sub.add_parser("eval", help="score a checkpoint on a task: natively (--task) or with lm-evaluation-harness "
                                    "(--harness, needs rmt[eval])")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--harness", metavar="TASK[,TASK]",
                       help="lm-eval task names: the local rmt_gsm8k, rmt_triviaqa, rmt_facts_synthetic, rmt_arithmetic")
    which.add_argument("--task", help="an rmt task (rmt data show lists them), scored by the project's own evaluator")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="a run folder or checkpoint folder")
    p.add_argument("--limit", type=float, default=None, help="at most this many documents per task (<1: a fraction)")
    p.add_argument("--num-fewshot", type=int, default=None, help="override the tasks' few-shot count (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-gen-toks", type=int, default=None, help="override the tasks' generation budget")
    p.add_argument("--think-iters", type=int, default=None, help="thinking iterations K (default: the config's)")
    p.add_argument("--memory-off", action="store_true", help="evaluate with the memory read switched off")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seeds lm-eval's few-shot sampling and the task splits' RNGs")
    p.add_argument("--out", default=None, help="also write DIR/results.json and DIR/samples.jsonl")
    p.add_argument("--split", default="test", help="with --task: the split to score (default test)")
    p.add_argument("--refine-rounds", type=int, default=0,
                   help="with --task: refinement rounds R (the draft answer re-read as a thought; default 0)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("memory", help="explicit memory on disk: a checkpoint's fact file (write, edit, delete, "
                                      "list) and FAISS-indexed banks (build, needs rmt[faiss])")
    msub = p.add_subparsers(dest="memory_command", required=True)
    register_fact_commands(msub)
    b = msub.add_parser("build", help="encode fact texts (one per line) with a model into a FAISS-indexed bank")
    b.add_argument("--facts", required=True, help="text file, one fact per line")
    b.add_argument("--checkpoint", required=True, metavar="RUN", help="a run folder or checkpoint folder")
    b.add_argument("--out", required=True, metavar="DIR", help="bank folder to write")
    b.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                   help="auto: exact (flat) up to 50,000 facts, IVF above")
    b.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about 4 sqrt(N))")
    b.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query")
    b.add_argument("--batch-size", type=int, default=256, help="facts encoded per forward pass")
    b.add_argument("--seed", type=int, default=0, help="seeds IVF k-means and its training sample")
    b.set_defaults(func=_memory_build)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `rmt` command")
