"""The contract every task satisfies: an `Example` record, a `Task` base class and the leakage check.

A task turns a dataset (synthetic or read from disk) into three deterministic splits of `Example`s. The model and
training code only ever see this interface, so a new task is one new module and one registry entry.
"""

from __future__ import annotations

import functools
import gc
import random
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

SPLITS: tuple[str, ...] = ("train", "validation", "test")
KINDS: tuple[str, ...] = ("qa", "text")

# Ends every training sample; the generator stops when the model emits it.
END_OF_SAMPLE = "\n"


@dataclass(frozen=True)
class Example:
    """One sample.

    `kind="qa"`: the model reads `prompt` and is scored on producing `target` (which starts with a space, e.g.
    prompt ``"Q: Where does Vorla Minet live? A:"``, target ``" Paris"``).
    `kind="text"`: plain language-modelling text; `prompt` is ``""`` and `target` holds the whole text.
    """

    prompt: str
    target: str
    kind: str
    # JSON-serialisable description (steps, template index, entity, ...). Excluded from the hash so an Example
    # stays hashable even though a dict is not.
    meta: dict[str, Any] = field(hash=False)
    # Chain-of-thought target for the transformer baseline; ends with the same final answer as `target`.
    cot: str | None = None
    # Intermediate targets inside the prompt, for training only: (n, text) asks the model, once it has read
    # prompt[:n], to predict text's first token (a word problem's running value after each sentence, as GSM8K's
    # solutions carry their intermediate results). Scored only by stages with `intermediate` on; never evaluated.
    intermediate: tuple[tuple[int, str], ...] = field(default=(), compare=False)
    # Other accepted answers (TriviaQA). `target` is always accepted as well.
    aliases: tuple[str, ...] = ()
    # False for a window cut out of a running text (the `text` task): it has no end, so no end-of-sample
    # newline is added — the model would otherwise learn to predict a newline the text does not contain.
    terminated: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Example.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.kind == "text" and self.prompt:
            raise ValueError(f"Example.prompt: expected '' for a text example, got {self.prompt!r}")
        if not isinstance(self.aliases, tuple):
            raise ValueError(f"Example.aliases: expected a tuple, got {type(self.aliases).__name__}")

    def text(self, cot: bool = False) -> str:
        """The full training string: prompt, then the chain of thought (if asked for and present) or the target,
        then the end-of-sample newline. Examples without a `cot` fall back to the target, so a CoT run can mix tasks.
        """
        answer = self.cot if cot and self.cot is not None else self.target
        return self.prompt + answer + (END_OF_SAMPLE if self.terminated else "")


class Task(ABC):
    """Base class: a named, configured source of train/validation/test splits.

    Subclasses set `name` and `Config` (a frozen, self-validating dataclass with a `seed` field when the task
    uses randomness) and implement `_build_splits`. Splits are built once, on first use, and cached.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any | None = None) -> None:
        if config is None:
            config = self.Config()
        if not isinstance(config, self.Config):
            raise ValueError(
                f"{type(self).__name__}.config: expected {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def split(self, name: str) -> list[Example]:
        """The examples of split `name` ("train", "validation" or "test"), as a fresh list."""
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {name!r}")
        return list(self._splits[name])

    @functools.cached_property
    def _splits(self) -> dict[str, list[Example]]:
        # Building a split allocates hundreds of thousands of small, acyclic objects; left on, the cyclic garbage
        # collector re-scans the growing heap over and over (a third of arithmetic's build time) for nothing.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            splits = self._build_splits()
        finally:
            if was_enabled:
                gc.enable()
        missing = set(SPLITS) - set(splits)
        if missing:  # a programming error in the subclass, not a user error
            raise RuntimeError(f"{type(self).__name__}._build_splits returned no {sorted(missing)} split")
        return splits

    @abstractmethod
    def _build_splits(self) -> dict[str, list[Example]]:
        """Build all three splits, deterministically from the config."""

    def bank_source(self, split: str, tokenizer: Any = None) -> Callable[[list[Example]], Any] | None:
        """For a task whose examples come with inputs that the model writes into its explicit memory bank (an
        image, fact texts, tokenized with `tokenizer`), a function from a batch's examples to the `rmt.model.BankSource` of their rows; None for a
        text-only task (the default). Trainer and evaluation pass what it returns as the forward's
        ``explicit_bank``, and know nothing else of the inputs."""
        return None

    def check_model(self, config: Any) -> None:
        """Raise `rmt.model.ConfigError` if a model with this `RMTConfig` cannot do the task (e.g. it has no
        image encoder for a visual task). Nothing by default."""

    def meta_stats(self, examples: list[Example]) -> dict[str, dict[str, int]]:
        """Task-specific histograms for `rmt data show` (e.g. arithmetic's steps). Empty by default."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def seeded_rng(seed: int, stream: str) -> random.Random:
    """An independent random stream for one purpose ("names", "test", ...), fixed by `seed` and `stream`.

    Separate streams keep one part of a task stable when another changes (e.g. a larger training set leaves the
    test split untouched). String seeds are hashed with SHA-512 by `random`, so this is stable across runs.
    """
    return random.Random(f"{seed}/{stream}")


def histogram(values: Any) -> dict[str, int]:
    """A JSON-friendly histogram: str(value) -> count, in sorted value order."""
    return {str(value): count for value, count in sorted(Counter(values).items())}


def check_leakage(task: Task) -> list[str]:
    """The validation/test prompts that appear verbatim inside some training example's text; empty when clean.

    Only "qa" examples have prompts worth checking (a text example's prompt is empty). The test is substring
    containment, not just equality, because a training sample could embed an evaluation question in longer text;
    training texts are checked both with and without their chain of thought.
    """
    prompts = {
        example.prompt for split in ("validation", "test") for example in task.split(split) if example.kind == "qa"
    }
    if not prompts:
        return []
    train = task.split("train")
    texts = [example.text() for example in train] + [example.text(cot=True) for example in train if example.cot]
    # Joined by a character no prompt contains, so a match cannot straddle two samples.
    return sorted(find_substrings("\0".join(texts), prompts))


def find_substrings(haystack: str, needles: set[str]) -> set[str]:
    """The `needles` that occur in `haystack` (exact, overlapping occurrences included).

    One `str.find` pass per needle costs minutes on arithmetic's 40 MB of training text, so instead: scan for
    the needles' short anchors (their first few characters) with `str.find`, and at each anchor hit look up the
    needles sharing the next `key_length` characters. The cost is one pass per distinct anchor plus a dict
    lookup per anchor hit.
    """
    needles = {needle for needle in needles if needle}
    if not needles:
        return set()
    key_length = min(len(needle) for needle in needles)
    by_key: dict[str, list[str]] = {}
    for needle in needles:
        by_key.setdefault(needle[:key_length], []).append(needle)
    found = set()
    for anchor in {needle[: min(key_length, 4)] for needle in needles}:
        position = haystack.find(anchor)
        while position != -1:
            for needle in by_key.get(haystack[position : position + key_length], ()):
                if haystack.startswith(needle, position):
                    found.add(needle)
            position = haystack.find(anchor, position + 1)
    return found
