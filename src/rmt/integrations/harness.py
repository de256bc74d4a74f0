"""lm-evaluation-harness integration: the `rmt` model (`--model rmt`) and this package's local tasks.

    from rmt.integrations.harness import evaluate
    results = evaluate("runs/demo", ["rmt_triviaqa"], limit=20)      # or: rmt eval --harness rmt_triviaqa ...

Importing this module registers `RMTHarnessLM` under the name "rmt" in lm-eval's model registry, so
`lm_eval.simple_evaluate(model="rmt", model_args="checkpoint=runs/demo", ...)` works after the import.

Requests, as lm-eval defines them:

* `loglikelihood(context, continuation)` -> (sum of log p(continuation tokens | context), is_greedy), where
  is_greedy says that greedy decoding would have produced exactly those tokens. Tokenisation follows the
  harness's causal-LM rule: trailing spaces of the context move to the continuation, the pair is encoded
  whole and the continuation's tokens are what follows the context's own encoding. An empty context is
  conditioned on the end-of-sample token ("\\n"): RMT has no BOS token, and "\\n" is what precedes every
  sample it was trained on.
* `loglikelihood_rolling(text)` -> the log-likelihood of all of `text`, conditioned on "\\n" as above. RMT has no
  context window, so there are no rolling windows: one pass scores the whole text.
* `generate_until(context, {until, max_gen_toks, do_sample})` -> greedy continuation through the constant-size
  cache (`RMT.prefill` then `RMT.step`), stopped when any `until` string or the end-of-sample token appears,
  and cut at the first `until` string (as the harness's Hugging Face backend does). Sampling is refused.

Requests are batched only with others of the same token length (an SSM state cannot skip padding).

The local tasks (`TASKS_DIR`, YAML next to this file) read the shared JSONL files and the project's synthetic
tasks through `rmt.tasks`, never through the Hub, so they run with HF_DATASETS_OFFLINE=1:
rmt_gsm8k, rmt_triviaqa (same prompts, filters and metrics as the harness's gsm8k / triviaqa tasks),
rmt_facts_synthetic and rmt_arithmetic (this project's exact match: the first line, stripped). lm-eval's own
gsm8k and triviaqa download their data from the Hub; offline, `evaluate` refuses them in one line naming the
local task instead (`HarnessTaskError`), and an unknown task name likewise.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rmt.checkpoint import find_checkpoint
from rmt.integrations import require

lm_eval = require("lm_eval", "eval", "The lm-evaluation-harness integration (rmt.integrations.harness)")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

from rmt.checkpoint import load_model  # noqa: E402
from rmt.tokenizer import ByteTokenizer, Tokenizer  # noqa: E402

TASKS_DIR = Path(__file__).with_name("harness_tasks")
LOCAL_TASKS = ("rmt_gsm8k", "rmt_triviaqa", "rmt_facts_synthetic", "rmt_arithmetic")
# lm-eval's own tasks (and their variants: gsm8k_cot, triviaqa_...) whose data is on the Hugging Face Hub
# (openai/gsm8k, mandarjoshi/trivia_qa), and the local task that reads the same questions from the shared files.
HUB_TASKS = {"gsm8k": "rmt_gsm8k", "triviaqa": "rmt_triviaqa"}


class HarnessTaskError(ValueError):
    """A harness task that cannot run: an unknown name, or a Hub task while the Hub is unreachable. The message
    is one line and names the local task to use."""


def local_task_for(name: str) -> str | None:
    """The local task standing in for lm-eval's `name` (gsm8k, gsm8k_cot, triviaqa, ...), or None."""
    for prefix, local in HUB_TASKS.items():
        if name == prefix or name.startswith(prefix + "_"):
            return local
    return None


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


@register_model("rmt")
class RMTHarnessLM(LM):
    """An rmt checkpoint as an lm-eval LM (see the module docstring for what each request computes).

    Args (also as lm-eval model_args "checkpoint=DIR,think_iters=2,..."):
        checkpoint: a checkpoint folder or a run folder holding one (RUN/checkpoint, RUN/checkpoints/latest).
        batch_size: the most requests of equal token length run together.
        device: torch device ("cpu", "cuda").
        think_iters: K for the thinking core (default: the config's); memory: False switches memory off.
        max_gen_toks: default generation budget when a task gives none.
    """

    def __init__(self, checkpoint: str, batch_size: int | str = 16, device: str | None = "cpu",
                 think_iters: int | str | None = None, memory: bool | str = True, max_gen_toks: int | str = 256,
                 **unused: Any) -> None:
        super().__init__()
        model, tok = load_model(find_checkpoint(checkpoint), map_location=device or "cpu")
        self.model = model.eval()
        self.tok: Tokenizer = tok if tok is not None else ByteTokenizer()
        bs = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = bs
        self._device = torch.device(device or "cpu")
        self.think_iters = None if think_iters in (None, "") else int(think_iters)
        self.memory = _as_bool(memory, "memory")
        self.max_gen_toks = int(max_gen_toks)
        self.checkpoint = str(checkpoint)

    @property
    def tokenizer_name(self) -> str:  # lm-eval keys its request cache by this
        return f"rmt-{type(self.tok).__name__}-{self.checkpoint}"

    def _kw(self) -> dict[str, Any]:
        return {"think_iters": self.think_iters, "memory": self.memory}

    # ------------------------------------------------------------------------------------------- log-likelihood
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation), the harness's causal rule (module docstring)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return [self.tok.eos_id], self.tok.encode(continuation)
        whole = self.tok.encode(context + continuation)
        context_ids = self.tok.encode(context)
        return context_ids, whole[len(context_ids):]

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]], progress: bool = False) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum of continuation log-probs, greedy?) per pair, batched by length."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                results[i] = (0.0, True)  # nothing to predict: log 1, trivially greedy
            else:
                by_len[len(ctx) + len(cont)].append(i)
        batches = [rows[j:j + self.batch_size] for _, rows in sorted(by_len.items())
                   for j in range(0, len(rows), self.batch_size)]
        for rows in tqdm(batches, disable=not progress, desc="rmt loglikelihood"):
            seqs = torch.tensor([pairs[i][0] + pairs[i][1] for i in rows], device=self._device)
            # Position t predicts token t+1, so the last token is never an input.
            logits = self.model(seqs[:, :-1], **self._kw()).logits.float()  # (b, L-1, V)
            logp = F.log_softmax(logits, dim=-1)
            for r, i in enumerate(rows):
                n = len(pairs[i][1])
                target = seqs[r, -n:]
                lp = logp[r, -n:]  # the positions that predict the continuation
                results[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.score([self.encode_pair(*req.args) for req in requests], progress=not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs = [([self.tok.eos_id], self.tok.encode(req.args[0])) for req in requests]
        return [ll for ll, _ in self.score(pairs, progress=not disable_tqdm)]

    # ------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        prompts: list[list[int]] = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            if _as_bool(gen_kwargs.pop("do_sample", False), "do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
                raise ValueError("the rmt harness model decodes greedily only; the task asked for sampling "
                                 f"({req.args[1]})")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok.encode(context) or [self.tok.eos_id]
            prompts.append(ids)
            groups[(len(ids), tuple(until), max_new)].append(i)
        batches = [(key, rows[j:j + self.batch_size]) for key, rows in sorted(groups.items())
                   for j in range(0, len(rows), self.batch_size)]
        for (_, until, max_new), rows in tqdm(batches, disable=disable_tqdm, desc="rmt generate_until"):
            texts = self._greedy(torch.tensor([prompts[i] for i in rows], device=self._device), list(until), max_new)
            for i, text in zip(rows, texts):
                out[i] = text
        return out  # type: ignore[return-value]

    def _greedy(self, idx: torch.Tensor, until: list[str], max_new: int) -> list[str]:
        """Greedy decoding of equal-length prompts idx (B, T), each row stopping at the end-of-sample token or
        once its text contains an `until` string; returns each row's text cut at the first `until` string."""
        b = idx.shape[0]
        kw = self._kw()
        logits, _, cache = self.model.prefill(idx, **kw)
        step_kw = {"memory": kw["memory"]}
        tokens: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        for n in range(max_new):
            nxt = logits.argmax(-1)
            for r in range(b):
                if done[r]:
                    continue
                t = int(nxt[r])
                if t == self.tok.eos_id:
                    done[r] = True
                    continue
                tokens[r].append(t)
                if until and any(s in self.tok.decode(tokens[r]) for s in until if s):
                    done[r] = True
            if all(done) or n + 1 == max_new:
                break
            logits, _, cache = self.model.step(nxt, cache, **step_kw)
        texts = []
        for r in range(b):
            text = self.tok.decode(tokens[r])
            for s in until:  # the harness's truncation: split at each stop string in turn
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts


def task_manager(extra_include: list[str] | None = None):
    """An lm-eval TaskManager that knows this package's local tasks (plus any `extra_include` folders)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *(extra_include or [])])


def check_task_names(manager: Any, tasks: list[str]) -> None:
    """Raise HarnessTaskError for a name that is no lm-eval task, group, tag or YAML file, listing the local tasks."""
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known and not Path(name).is_file():
            local = local_task_for(name)
            hint = f"did you mean {local}? " if local else ""
            raise HarnessTaskError(f"--harness {name}: not an lm-eval task, group or tag; {hint}the local offline "
                                   f"tasks are {', '.join(LOCAL_TASKS)}")


def _hub_unreachable(tasks: list[str], error: Exception) -> HarnessTaskError:
    """The one-line error for lm-eval tasks whose Hub data could not be fetched (`error`, a ConnectionError)."""
    hub = [name for name in tasks if name not in LOCAL_TASKS] or tasks
    stand_ins = dict.fromkeys(local for local in map(local_task_for, hub) if local)  # in order, no repeats
    advice = "; ".join(f"offline, use the local task {local} (lm-eval's {local.removeprefix('rmt_')} prompt, "
                       f"filters and metric on the shared local data): rmt eval --harness {local}"
                       for local in stand_ins)
    advice = advice or f"the offline local tasks are {', '.join(LOCAL_TASKS)}"
    detail = " ".join(str(error).split())
    return HarnessTaskError(f"--harness {','.join(hub)}: lm-eval's own task reads its data from the Hugging Face "
                            f"Hub, which cannot be reached ({detail}); {advice}")


def evaluate(checkpoint: str | Path, tasks: list[str], *, limit: int | float | None = None,
             num_fewshot: int | None = None, batch_size: int = 16, device: str = "cpu", seed: int = 0,
             think_iters: int | None = None, memory: bool = True, log_samples: bool = True,
             include_path: list[str] | None = None, gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on an rmt checkpoint, fully offline -> lm-eval's results dict
    (results[task] = {"exact_match,strict-match": ..., ...}, and samples[task] when log_samples).
    gen_kwargs (e.g. {"max_gen_toks": 32}) override every generation task's own.

    Raises HarnessTaskError for an unknown task name, and for a Hub task (lm-eval's gsm8k, triviaqa, ...) when
    its data cannot be fetched: offline that is always, unless the dataset is in the local datasets cache
    (HF_DATASETS_OFFLINE is set to 1 here unless already set)."""
    # Offline by construction: the local tasks never touch the Hub, and these stop anything else from trying.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate

    tasks = list(tasks)
    manager = task_manager(include_path)
    check_task_names(manager, tasks)
    lm = RMTHarnessLM(str(checkpoint), batch_size=batch_size, device=device, think_iters=think_iters, memory=memory)
    try:
        return simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                               task_manager=manager, log_samples=log_samples,
                               random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                               fewshot_random_seed=seed, bootstrap_iters=0, gen_kwargs=gen_kwargs)
    except ConnectionError as e:  # datasets' "Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)"
        raise _hub_unreachable(tasks, e) from None
