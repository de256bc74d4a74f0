"""Test-time adaptation by refinement rounds (R6): more forward passes, never a weight update.

A refinement round feeds the model's own draft answer back as a thought segment and has it read the question
again:

    round 0   "Q: Mia has 7 apples. ... How many apples now? A:"                          -> draft " 21"
    round 1   "Q: Mia has 7 apples. ... A: 21\nQ: Mia has 7 apples. ... A:"              -> " 24"
    round 2   "Q: ... A: 24\nQ: ... A:"                                                 -> " 24"  (stable: stop)

Why re-reading helps a recurrent model: on the first read a token only knows what came before it; on the
second read every token's state already holds the whole problem and the draft, so the second pass can
check it (as "read twice" prompting does for linear RNNs). Each round is a plain greedy generation from a
longer prompt, so the thinking core runs on every re-read token as well.

Training sees this format through `refinement_examples`: the same problems with a draft that is right half of
the time and wrong otherwise, so the model learns to re-solve rather than to copy the draft.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from rmt.evaluation.evaluate import decode_answer, evaluate_qa
from rmt.model import RMT
from rmt.tasks import Example
from rmt.tasks.scoring import exact_match
from rmt.tokenizer import Tokenizer


def refine_prompt(prompt: str, draft: str) -> str:
    """The prompt of a refinement round: question, draft answer (as generated, e.g. " 21"), question again."""
    return f"{prompt}{draft.split(chr(10), 1)[0]}\n{prompt}"


def _wrong_answer(target: str, rng: random.Random) -> str:
    """A plausible wrong draft: a nearby number for numeric targets, otherwise the target with a typo."""
    t = target.strip()
    if t.lstrip("-").isdigit():
        v = int(t)
        while (w := max(0, v + rng.choice([-1, 1]) * rng.randint(1, 10))) == v:
            pass
        return f" {w}"
    i = rng.randrange(len(t)) if t else 0
    return " " + t[:i] + rng.choice("aeiounrst") + t[i + 1:]


def refinement_examples(examples: list[Example], seed: int, p_right: float = 0.5) -> list[Example]:
    """Training examples in the refinement format: each question with a draft (the right answer with
    probability p_right, else a wrong one) and the question again; the target stays the right answer."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        draft = ex.target if rng.random() < p_right else _wrong_answer(ex.target, rng)
        out.append(replace(ex, prompt=refine_prompt(ex.prompt, draft), cot=None,
                           meta={**ex.meta, "refine_draft_right": draft == ex.target}))
    return out


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, raw bytes): equal fingerprints mean
    bit-identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class RefinedResult:
    accuracy_by_round: list[float]  # [draft accuracy, after round 1, ...] (rows that stopped keep their answer)
    rounds_run: float  # mean refinement rounds actually run per question (early stop when the answer is stable)
    tokens_per_answer: float  # generated tokens over all rounds, per question
    weights_unchanged: bool  # the model's fingerprint before == after
    predictions: list[str] = field(default_factory=list)

    @property
    def acc_before(self) -> float:
        return self.accuracy_by_round[0]

    @property
    def acc_after(self) -> float:
        return self.accuracy_by_round[-1]


@torch.no_grad()
def evaluate_refined(model: RMT, examples: list[Example], tok: Tokenizer, rounds: int, *,
                     max_new_tokens: int = 16, progress: bool = False, desc: str = "refine",
                     **generate_kwargs) -> RefinedResult:
    """Answer every example, then refine for up to `rounds` rounds; a question stops refining as soon as a
    round reproduces its previous answer. generate_kwargs go to `RMT.generate` (think_iters, memory, ...)."""
    if rounds < 0:
        raise ValueError(f"rounds: expected >= 0, got {rounds}")
    before = weights_fingerprint(model)
    kw = dict(max_new_tokens=max_new_tokens, progress=progress, **generate_kwargs)
    first = evaluate_qa(model, examples, tok, desc=f"{desc} draft", **kw)
    preds = [p.split("\n", 1)[0] for p in first.predictions]
    tokens = first.tokens_per_answer * len(examples)
    targets = [(ex.target,) + tuple(ex.aliases) for ex in examples]

    def accuracy() -> float:
        return sum(exact_match(p, t) for p, t in zip(preds, targets)) / max(len(examples), 1)

    history, active, rounds_run = [accuracy()], list(range(len(examples))), 0
    for r in range(rounds):
        if not active:
            history.append(history[-1])
            continue
        batch = [replace(examples[i], prompt=refine_prompt(examples[i].prompt, preds[i])) for i in active]
        res = evaluate_qa(model, batch, tok, desc=f"{desc} round {r + 1}", **kw)
        tokens += res.tokens_per_answer * len(batch)
        rounds_run += len(batch)
        still = []
        for i, p in zip(active, res.predictions):
            p = p.split("\n", 1)[0]
            if p != preds[i]:
                still.append(i)
            preds[i] = p
        active = still
        history.append(accuracy())
    n = max(len(examples), 1)
    return RefinedResult(history, rounds_run / n, tokens / n, weights_fingerprint(model) == before, preds)


@torch.no_grad()
def refine_answer(model: RMT, tok: Tokenizer, prompt: str, rounds: int, *, max_new_tokens: int = 32,
                  **generate_kwargs) -> list[str]:
    """One prompt's answers round by round: [draft, round 1, ...], stopping once an answer repeats."""
    model.eval()
    device = next(model.parameters()).device

    def answer(text: str) -> str:
        idx = torch.tensor([tok.encode(text)], dtype=torch.long, device=device)
        ids = model.generate(idx, max_new_tokens, eos_id=tok.eos_id, **generate_kwargs).tokens[0].tolist()
        return decode_answer(ids, tok)[0]

    answers = [answer(prompt)]
    for _ in range(rounds):
        answers.append(answer(refine_prompt(prompt, answers[-1])))
        if answers[-1] == answers[-2]:
            break
    return answers
