"""Curriculum stages: what to train on, how long, how fast, what is frozen and how long the core thinks.

A run is a list of stages (R5): e.g. stage 1 pretrains on fact text so the memory bank fills up, stage 2
trains the thinking core on arithmetic with the facts mixed back in so they are not forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from rmt.model.config import ConfigError


@dataclass
class Stage:
    name: str
    steps: int
    tasks: dict[str, float]  # task name -> sampling weight
    batch_size: int = 64
    seq_len: int = 0  # longest row in tokens (longer samples are cut); 0 = no limit
    lr: float = 3e-3
    schedule: str = "cosine"  # "cosine" (warm-up, then cosine to lr * min_lr_frac) or "constant" (after warm-up)
    warmup: int = 50
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    memory_lr_mult: float = 5.0  # memory values learn faster: each slot is touched by few tokens
    weight_decay: float = 0.01
    frozen: list[str] = field(default_factory=list)  # parameter-name prefixes, e.g. ["memory", "prelude"]
    think_iters_min: int = 1  # K ~ uniform{min..max} per batch
    think_iters_max: int = 4
    bptt: int = 2
    router_cost: float = 0.01  # weight of the compute cost (expected thinking iterations per token)
    memory_aux: float = 0.0  # weight of the memory read's own next-token loss (0 = off)
    # Also score the examples' intermediate targets (`Example.intermediate`: e.g. a word problem's running value
    # after each sentence); evaluation never sees them.
    intermediate: bool = False
    # Per-task example filters, e.g. {"arithmetic": {"max_steps": 2}} (a curriculum over difficulty).
    filters: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}"
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type.split("[")[0]
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict, "list": list}[kind]
            if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
                raise ConfigError(f"{where}: {f.name}: expected {f.type}, got {value!r}")
            if kind == "float":
                setattr(self, f.name, float(value))
        if self.steps < 1:
            raise ConfigError(f"{where}: steps: expected >= 1, got {self.steps}")
        if not self.tasks or any(w <= 0 for w in self.tasks.values()):
            raise ConfigError(f"{where}: tasks: expected a non-empty mapping to positive weights, got {self.tasks}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}: batch_size: expected >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"{where}: lr: expected > 0, got {self.lr}")
        if not 0 <= self.think_iters_min <= self.think_iters_max:
            raise ConfigError(f"{where}: think_iters_min/max: expected 0 <= min <= max, "
                              f"got {self.think_iters_min}, {self.think_iters_max}")
        if self.seq_len < 0:
            raise ConfigError(f"{where}: seq_len: expected >= 0, got {self.seq_len}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"{where}: schedule: expected 'cosine' or 'constant', got {self.schedule!r}")
        if self.bptt < 1:
            raise ConfigError(f"{where}: bptt: expected >= 1, got {self.bptt}")
        for task, flt in self.filters.items():
            unknown = set(flt) - {"min_steps", "max_steps"}
            if unknown:
                raise ConfigError(f"{where}: filters.{task}: unknown filter(s) {sorted(unknown)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stage":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"stage {data.get('name', '?')!r}: unknown key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:  # a required key is missing
            raise ConfigError(f"stage {data.get('name', '?')!r}: {e}") from None
