"""`arithmetic`: short GSM8K-style word problems with a controlled number of reasoning steps.

A problem starts from a count and applies `steps` operations, evaluated left to right (no precedence), with every
intermediate value kept in 0..max_value:

    prompt  "Q: Mia has 7 apples. She gets 5 more. She doubles them. She gives away 3. How many apples now? A:"
    target  " 21"
    cot     " 7 + 5 = 12. 12 * 2 = 24. 24 - 3 = 21. #### 21"

Prompts are kept to one short line because the model reads bytes and is trained on a CPU. Validation and test
problems never appear (by prompt) in training, and their step counts are spread evenly over min..max_steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rmt.tasks.base import Example, Task, histogram, seeded_rng

# --- Who and what the problems are about. ---
NAMES: tuple[tuple[str, str], ...] = (  # (name, pronoun)
    ("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Sam", "He"), ("Zoe", "She"), ("Max", "He"), ("Ivy", "She"),
    ("Tom", "He"), ("Eva", "She"), ("Ben", "He"), ("Lily", "She"), ("Noah", "He"), ("Emma", "She"), ("Liam", "He"),
    ("Ruby", "She"), ("Omar", "He"), ("Nora", "She"), ("Jack", "He"), ("Ella", "She"), ("Finn", "He"),
    ("Anna", "She"), ("Hugo", "He"), ("Rosa", "She"), ("Kai", "He"),
)
OBJECTS: tuple[tuple[str, str], ...] = (  # (singular, plural)
    ("apple", "apples"), ("marble", "marbles"), ("book", "books"), ("coin", "coins"), ("card", "cards"),
    ("shell", "shells"), ("stamp", "stamps"), ("pen", "pens"), ("egg", "eggs"), ("cookie", "cookies"),
    ("sticker", "stickers"), ("ball", "balls"), ("rock", "rocks"), ("plum", "plums"),
)

# --- Sentences. {N}: name, {P}: pronoun, {n}: operand, {obj}: object noun. Each step sentence stays short. ---
START = "{N} has {n} {obj}."
QUESTION = "How many {obj} now? A:"
STEP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": ("{P} gets {n} more.", "{P} finds {n} more.", "{P} buys {n} more."),
    "-": ("{P} gives away {n}.", "{P} loses {n}.", "{P} sells {n}."),
    "*": ("{P} has {n} times as many.", "{P} {multiply_verb} them."),
    "/": ("{P} divides them by {n}.", "{P} keeps {fraction}."),
}
MULTIPLY_VERBS: dict[int, str] = {2: "doubles", 3: "triples", 4: "quadruples"}
FRACTIONS: dict[int, str] = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
# Multipliers and divisors are small and fixed (not max_operand) so the word forms above always exist.
FACTORS: tuple[int, ...] = (2, 3, 4, 5)
OPS: tuple[str, ...] = ("+", "-", "*", "/")
APPLY = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


@dataclass(frozen=True)
class ArithmeticConfig:
    min_steps: int = 1
    max_steps: int = 4
    max_operand: int = 20  # start value is in 0..max_operand; + and - use 1..max_operand
    max_value: int = 99  # every intermediate value stays in 0..max_value
    ops: tuple[str, ...] = ("+", "-", "*")
    n_train: int = 200_000
    n_validation: int = 500
    n_test: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))  # accept a list from the command line
        if self.min_steps < 1:
            raise ValueError(f"min_steps: expected >= 1, got {self.min_steps}")
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps: expected >= min_steps ({self.min_steps}), got {self.max_steps}")
        if self.max_operand < 1:
            raise ValueError(f"max_operand: expected >= 1, got {self.max_operand}")
        if self.max_value < self.max_operand:
            raise ValueError(f"max_value: expected >= max_operand ({self.max_operand}), got {self.max_value}")
        if not self.ops or any(op not in OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops: expected distinct operators from {OPS}, got {self.ops}")
        for name in ("n_train", "n_validation", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Move:
    """One legal step from a given value, precomputed with its renderings."""

    op: str
    operand: int
    result: int
    equation: str  # the chain-of-thought fragment, e.g. "7 + 5 = 12."
    phrasings: dict[str, tuple[str, ...]]  # pronoun -> the step sentences, e.g. "She gets 5 more."


def step_sentences(op: str, operand: int) -> tuple[str, ...]:
    """Every declared phrasing of one step, with only {P} left to fill."""
    sentences = []
    for template in STEP_TEMPLATES[op]:
        if "{multiply_verb}" in template and operand not in MULTIPLY_VERBS:
            continue
        sentences.append(template.replace("{n}", str(operand))
                         .replace("{multiply_verb}", MULTIPLY_VERBS.get(operand, ""))
                         .replace("{fraction}", FRACTIONS.get(operand, "")))
    return tuple(sentences)


class Arithmetic(Task):
    name = "arithmetic"
    Config = ArithmeticConfig

    def __init__(self, config: ArithmeticConfig | None = None) -> None:
        super().__init__(config)
        # Everything that depends only on (current value, op, operand) is tabulated once, so drawing a step in the
        # hot loop is a few indexings. _moves[v] groups the legal moves from value v by operator, so the operator
        # is drawn uniformly first and the operand second (+ would otherwise swamp * and /).
        c = self.config
        pronouns = {pronoun for _, pronoun in NAMES}
        self._moves: list[list[tuple[Move, ...]]] = []
        for v in range(c.max_value + 1):
            operands = {
                "+": range(1, min(c.max_operand, c.max_value - v) + 1),
                "-": range(1, min(c.max_operand, v) + 1),
                # Scaling zero is a trivial step, so * and / need a positive value.
                "*": [k for k in FACTORS if 0 < v * k <= c.max_value],
                "/": [k for k in FACTORS if v > 0 and v % k == 0],
            }
            by_op = []
            for op in c.ops:
                moves = []
                for k in operands[op]:
                    result = APPLY[op](v, k)
                    phrasings = {p: tuple(s.replace("{P}", p) for s in step_sentences(op, k)) for p in pronouns}
                    moves.append(Move(op, k, result, f"{v} {op} {k} = {result}.", phrasings))
                if moves:
                    by_op.append(tuple(moves))
            self._moves.append(by_op)

    def sample(self, rng: random.Random, steps: int) -> Example | None:
        """One random problem with `steps` operations, or None when the walk hits a value with no legal move."""
        # Hot loop (200k problems must build in < 3 s). rng.choice costs ~1 us in pure Python; indexing with
        # rng.random() is several times cheaper. Its bias (at most len(seq) / 2**53) is irrelevant here.
        uniform = rng.random
        value = int(uniform() * (self.config.max_operand + 1))
        name, pronoun = NAMES[int(uniform() * len(NAMES))]
        singular, plural = OBJECTS[int(uniform() * len(OBJECTS))]
        values, ops, operands, sentences, cot = [value], [], [], [], []
        for _ in range(steps):
            by_op = self._moves[value]
            if not by_op:
                return None
            moves = by_op[int(uniform() * len(by_op))]
            move = moves[int(uniform() * len(moves))]
            phrasings = move.phrasings[pronoun]
            sentences.append(phrasings[int(uniform() * len(phrasings))])
            cot.append(move.equation)
            ops.append(move.op)
            operands.append(move.operand)
            values.append(move.result)
            value = move.result
        start = START.format(N=name, n=values[0], obj=singular if values[0] == 1 else plural)
        prompt = f"Q: {start} {' '.join(sentences)} {QUESTION.format(obj=plural)}"
        ends = [3 + len(start)]  # where each sentence ends in the prompt: the value is known from there on
        for s in sentences:
            ends.append(ends[-1] + 1 + len(s))
        return Example(
            prompt=prompt,
            target=f" {value}",
            kind="qa",
            meta={"steps": steps, "ops": ops, "operands": operands, "values": values},
            cot=f" {' '.join(cot)} #### {value}",
            intermediate=tuple((end, f" {v}") for end, v in zip(ends, values)),
        )

    def _draw_distinct(self, rng: random.Random, n: int, exclude: set[str], what: str) -> list[Example]:
        """`n` problems with distinct prompts not in `exclude`, step counts spread evenly over min..max_steps."""
        c = self.config
        step_values = range(c.min_steps, c.max_steps + 1)
        counts = [n // len(step_values) + (i < n % len(step_values)) for i in range(len(step_values))]
        examples: list[Example] = []
        seen = set(exclude)
        for steps, count in zip(step_values, counts):
            drawn, attempts = 0, 0
            while drawn < count:
                attempts += 1
                if attempts > 100 * count + 1000:
                    raise ValueError(
                        f"{what}: cannot draw {count} distinct {steps}-step problems under this config; "
                        "lower it or widen max_operand/max_value/ops"
                    )
                example = self.sample(rng, steps)
                if example is None or example.prompt in seen:
                    continue
                seen.add(example.prompt)
                examples.append(example)
                drawn += 1
        return examples

    def _build_splits(self) -> dict[str, list[Example]]:
        c = self.config
        # Independent streams: changing n_train leaves the evaluation splits unchanged.
        test = self._draw_distinct(seeded_rng(c.seed, "test"), c.n_test, set(), "n_test")
        test_prompts = {example.prompt for example in test}
        validation = self._draw_distinct(seeded_rng(c.seed, "validation"), c.n_validation, test_prompts,
                                         "n_validation")
        held_out = test_prompts | {example.prompt for example in validation}

        rng = seeded_rng(c.seed, "train")
        n_step_values = c.max_steps - c.min_steps + 1
        train: list[Example] = []
        attempts = 0
        while len(train) < c.n_train:
            attempts += 1
            if attempts > 100 * c.n_train:
                raise ValueError("n_train: too few problems exist outside the evaluation splits under this config")
            example = self.sample(rng, c.min_steps + int(rng.random() * n_step_values))
            if example is not None and example.prompt not in held_out:
                train.append(example)
        return {"train": train, "validation": validation, "test": test}

    def meta_stats(self, examples: list[Example]) -> dict[str, dict[str, int]]:
        return {"steps": histogram(example.meta["steps"] for example in examples)}
