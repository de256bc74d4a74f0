"""`RMTConfig`: every architectural choice of the model in one self-validating dataclass.

It round-trips through plain dicts, JSON and TOML, so a checkpoint's `config.json` and a training config's
`[model]` table describe the same thing. An unknown key, a wrong type or an out-of-range value raises a
`ConfigError` that names the field, what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


@dataclass
class RMTConfig:
    # Vocabulary (the byte tokenizer: 256 bytes + pad).
    vocab_size: int = 257
    pad_id: int = 256
    # Width and depth. Layers: prelude -> (memory, thinking core x K) -> coda.
    d_model: int = 128
    n_prelude: int = 2
    n_core: int = 1
    n_coda: int = 1
    mlp_mult: int = 2  # gated-MLP hidden size = mlp_mult * d_model
    # Selective-SSM token mixer.
    ssm_expand: int = 2
    ssm_head_dim: int = 32
    ssm_d_state: int = 16
    ssm_conv: int = 4  # short causal conv in prelude/coda; the core has none (exact per-token skipping)
    ssm_chunk: int = 64
    # Parametric product-key memory: n_keys**2 slots.
    memory: bool = True
    mem_n_keys: int = 64
    mem_heads: int = 2
    mem_topk: int = 8
    mem_d_key: int = 64
    # Explicit (run-time) memory bank read by linear attention.
    explicit_memory: bool = True
    explicit_d_key: int = 64
    explicit_read: str = "linear"  # "linear" (fixed-size state, cost independent of entries) or "softmax" (exact,
    explicit_heads: int = 1  #       O(entries) per query; sharp enough to pick one object out of an image's patches)
    explicit_sink: bool = False  # softmax read only: one implicit zero entry, so a read's size says how much matched
    # Width w of a causal depthwise conv over the (normalised) last w token embeddings, added to every memory
    # query (0 = off): the query then sees the question's words directly ("red" three bytes back), not only
    # through the prelude's state, which a bank read needs before the prelude has learned to carry them.
    memory_query_conv: int = 0
    # Time constant (tokens) at the start of a causal decayed sum of query-only byte embeddings, added to every
    # memory query (0 = off); 8 channel groups, each with its own learned decay. A streamed form of the
    # bag-of-words question encoding of End-to-End Memory Networks: the colour word of "Is red on the left?"
    # reaches the query with about one weight whatever its offset. Near-uniform over a question (64) binds;
    # log-spaced short time constants did not (experiments/README.md, Sort-of-CLEVR).
    memory_query_ema: int = 0
    # False: the prelude's memory read queries with the token terms above only, not the prelude's state. A
    # colour word's share of a query must be large and clean from the first step for reads to bind to it; the
    # state, added, dilutes it (experiments/README.md, Sort-of-CLEVR). The core's reads keep their own query.
    memory_query_state: bool = True
    # Image encoder (R8): a conv patch encoder whose patch embeddings are written into the explicit bank.
    vision: bool = False
    vision_image_size: int = 75
    vision_patch: int = 5  # pixels per patch side: (image_size / patch)^2 bank entries per image
    vision_channels: int = 32
    # "patch": one k=p, stride-p conv (vision_patch); "conv": vision_conv_layers 3x3 stride-2 convs at pixel level
    # (as the Relation Network's CNN), grid = image_size halved that many times, rounded up (75 -> 5 with 4);
    # "pool": vision_conv_layers [3x3 stride-1 conv, 2x2 max-pool] blocks, grid rounded down (75 -> 9 with 3).
    vision_stem: str = "patch"
    vision_conv_layers: int = 4
    # Weight of the image encoder's pixel-reconstruction loss (each bank entry decoded back into its grid cell's
    # pixels; vision.py), added to the training loss whenever images are encoded; 0 = no decoder at all.
    vision_recon: float = 0.0
    # The thinking core reads the explicit bank again at every iteration, with a query from its own state
    # (a second hop: e.g. from "where is the red object" to "what is next to that place").
    core_reads_memory: bool = False
    # ... and each of those reads adds -beta_h * |p_i - f|^2 to entry i's score in head h: f is where the prelude's
    # read looked (its weight-averaged patch position), beta_h a linear function of the core's state, zero at the
    # start (> 0 favours what is near the object found, < 0 what is far from it). Needs images (positions).
    core_read_distance: bool = False
    # Thinking core: K iterations of shared-weight layers.
    think_iters: int = 4  # K at inference (training samples K per batch from its stage's range)
    think_init: str = "zero"  # initial core state: "zero" or "random"
    # Router over {memory, think, both}.
    router_threshold: float = 0.5  # at inference a token with p(think) + p(both) below this skips the core
    router_init_think: float = 1.0  # initial logit bonus of the think/both branches, so training starts by thinking

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": float, "bool": bool, "str": str}[f.type]
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                ok = True
            if not ok:
                raise ConfigError(f"RMTConfig.{f.name}: expected {f.type}, got {value!r} ({type(value).__name__})")
        positive = ["vocab_size", "d_model", "n_core", "mlp_mult", "ssm_expand", "ssm_head_dim", "ssm_d_state",
                    "ssm_conv", "ssm_chunk", "mem_n_keys", "mem_heads", "mem_topk", "mem_d_key", "explicit_d_key", "explicit_heads",
                    "vision_image_size", "vision_patch", "vision_channels", "vision_conv_layers"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"RMTConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ["n_prelude", "n_coda", "think_iters", "memory_query_conv", "memory_query_ema"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"RMTConfig.{name}: expected an integer >= 0, got {getattr(self, name)}")
        if self.memory_query_ema == 1:
            raise ConfigError("RMTConfig.memory_query_ema: expected 0 (off) or a starting time constant >= 2 tokens, got 1")
        if not self.memory_query_state and not (self.memory_query_conv or self.memory_query_ema):
            raise ConfigError("RMTConfig.memory_query_state: false needs memory_query_conv or memory_query_ema, which "
                              "then form the whole query")
        if self.memory_query_ema and self.d_model % 8:
            raise ConfigError(f"RMTConfig.memory_query_ema: its 8 channel groups must divide d_model, got {self.d_model}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"RMTConfig.pad_id: expected 0 <= pad_id < vocab_size={self.vocab_size}, got {self.pad_id}")
        if (self.ssm_expand * self.d_model) % self.ssm_head_dim:
            raise ConfigError(f"RMTConfig.ssm_head_dim: must divide ssm_expand * d_model = "
                              f"{self.ssm_expand * self.d_model}, got {self.ssm_head_dim}")
        if self.mem_d_key % 2:
            raise ConfigError(f"RMTConfig.mem_d_key: expected an even number (two product halves), got {self.mem_d_key}")
        if self.mem_topk > self.mem_n_keys:
            raise ConfigError(f"RMTConfig.mem_topk: expected <= mem_n_keys={self.mem_n_keys}, got {self.mem_topk}")
        if self.think_init not in ("zero", "random"):
            raise ConfigError(f"RMTConfig.think_init: expected 'zero' or 'random', got {self.think_init!r}")
        if self.explicit_read not in ("linear", "softmax"):
            raise ConfigError(f"RMTConfig.explicit_read: expected 'linear' or 'softmax', got {self.explicit_read!r}")
        if self.explicit_sink and self.explicit_read != "softmax":
            raise ConfigError("RMTConfig.explicit_sink: only the softmax read has a sink (set explicit_read = 'softmax')")
        if self.explicit_read == "linear" and self.explicit_heads != 1:
            raise ConfigError(f"RMTConfig.explicit_heads: the linear read has one head; got {self.explicit_heads} "
                              "(set explicit_read = 'softmax' for several)")
        if self.explicit_d_key % self.explicit_heads or self.d_model % self.explicit_heads:
            raise ConfigError(f"RMTConfig.explicit_heads: must divide explicit_d_key={self.explicit_d_key} and "
                              f"d_model={self.d_model}, got {self.explicit_heads}")
        if self.vision and not self.explicit_memory:
            raise ConfigError("RMTConfig.vision: images are written into the explicit bank; needs explicit_memory = true")
        if self.core_reads_memory and not self.explicit_memory:
            raise ConfigError("RMTConfig.core_reads_memory: needs explicit_memory = true")
        if self.core_read_distance and not (self.core_reads_memory and self.vision and self.explicit_read == "softmax"):
            raise ConfigError("RMTConfig.core_read_distance: needs core_reads_memory = true, vision = true (patch "
                              "positions) and explicit_read = 'softmax' (per-entry weights)")
        if self.vision_stem not in ("patch", "conv", "pool"):
            raise ConfigError(f"RMTConfig.vision_stem: expected 'patch', 'conv' or 'pool', got {self.vision_stem!r}")
        if self.vision_stem == "patch" and self.vision_image_size % self.vision_patch:
            raise ConfigError(f"RMTConfig.vision_patch: must divide vision_image_size={self.vision_image_size}, "
                              f"got {self.vision_patch}")
        if not self.vision_recon >= 0.0:
            raise ConfigError(f"RMTConfig.vision_recon: expected a weight >= 0, got {self.vision_recon}")
        if self.vision_recon and not self.vision:
            raise ConfigError("RMTConfig.vision_recon: reconstructs images; needs vision = true")
        if not 0.0 < self.router_threshold < 1.0:
            raise ConfigError(f"RMTConfig.router_threshold: expected a value in (0, 1), got {self.router_threshold}")

    # ----------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RMTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> "RMTConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        return cls.from_dict(data, source=str(path))

    def to_toml(self) -> str:
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items())

    @classmethod
    def from_toml(cls, text: str, source: str = "<toml>") -> "RMTConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        return cls.from_dict(data, source=source)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid TOML basic string
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
