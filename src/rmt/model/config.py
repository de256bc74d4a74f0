"""`RMTConfig`: the model's architecture as a few global fields and one section per part.

    [model]                 vocab_size, pad_id, d_model, n_prelude, n_coda, mlp_mult
    [model.ssm]             the selective-SSM token mixer of every layer            (ssm.py)
    [model.product_keys]    the parametric product-key memory                      (memory/product_key.py)
    [model.bank]            the explicit (run-time) memory bank and its read       (memory/bank.py)
    [model.reader]          how memory queries are built; whether the core re-reads (memory/reader.py)
    [model.core]            the thinking core: layers, iterations K, initial state  (thinking.py)
    [model.router]          the router over {memory, think, both}                   (router.py)
    [model.encoders.NAME]   an encoder a modality brings (images -> bank entries)   (encoders.py)

Every section is a small dataclass that checks its own fields; the whole config round-trips through plain
dicts, JSON and TOML, so a checkpoint's `config.json` and a training config's `[model]` table describe the same
thing. An unknown key, a wrong type or an out-of-range value raises a `ConfigError` naming the field
(``model.core.iters``), what was expected and what was given.

Checkpoints written before the config was nested have one flat table (``d_model``, ``mem_n_keys``,
``think_iters``, ...). `RMTConfig.from_dict` recognises that form and migrates it (`migrate_flat`); the one
option that no longer exists (``core_read_distance``, measured as giving nothing) is refused when it was on.
Configs from before the image encoder moved to the visual task have a ``[vision]`` section; it becomes
``[encoders.image]`` with ``type = "image-patches"`` (`migrate_vision`).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from rmt.errors import RMTError


class ConfigError(RMTError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


class Section:
    """Base of every config section: type checks by annotation, dict I/O with messages that name the field."""

    path: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        self.validate()

    def _check_types(self) -> None:
        for f in fields(self):
            if f.type not in _TYPES:  # a nested section: it checks itself
                continue
            value, expected = getattr(self, f.name), _TYPES[f.type]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{self.path}.{f.name}: expected {f.type}, got {value!r} ({type(value).__name__})")

    def _positive(self, *names: str, minimum: int = 1) -> None:
        for name in names:
            if getattr(self, name) < minimum:
                what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                raise ConfigError(f"{self.path}.{name}: expected {what}, got {getattr(self, name)}")

    def validate(self) -> None:
        self._check_types()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None):
        """`data` -> the section; errors start with `source` (a file and table) when given."""
        at = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ConfigError(f"{at}{cls.path}: expected a table, got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{at}unknown {cls.path} key(s) {unknown}; known keys: {known}")
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                sub = _SECTIONS.get(f.name) if cls is RMTConfig else None
                kwargs[f.name] = sub.from_dict(data[f.name], source) if sub is not None else data[f.name]
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{at}{e}") from None


@dataclass
class SSMConfig(Section):
    """Selective-SSM token mixer (Mamba-2 style), in every prelude, core and coda layer."""

    path: ClassVar[str] = "model.ssm"
    expand: int = 2  # inner width = expand * d_model
    head_dim: int = 32
    d_state: int = 16
    conv: int = 4  # short causal conv in prelude/coda; the core has none (exact per-token skipping)
    chunk: int = 64  # chunk length of the training scan

    def validate(self) -> None:
        super().validate()
        self._positive("expand", "head_dim", "d_state", "conv", "chunk")


@dataclass
class ProductKeyConfig(Section):
    """Parametric product-key memory: n_keys ** 2 slots, top-k per head (Lample et al., 2019)."""

    path: ClassVar[str] = "model.product_keys"
    enabled: bool = True
    n_keys: int = 64
    heads: int = 2
    topk: int = 8
    d_key: int = 64

    def validate(self) -> None:
        super().validate()
        self._positive("n_keys", "heads", "topk", "d_key")
        if self.d_key % 2:
            raise ConfigError(f"{self.path}.d_key: expected an even number (two product halves), got {self.d_key}")
        if self.topk > self.n_keys:
            raise ConfigError(f"{self.path}.topk: expected <= n_keys={self.n_keys}, got {self.topk}")


@dataclass
class BankConfig(Section):
    """The explicit memory bank written at run time (facts, documents, image patches) and how it is read."""

    path: ClassVar[str] = "model.bank"
    enabled: bool = True
    d_key: int = 64
    # "linear": a fixed-size state, cost per query independent of the number of entries; "softmax": exact
    # multi-head attention over the entries, O(entries) per query, sharp enough to pick one object of an image.
    read: str = "linear"
    heads: int = 1
    sink: bool = False  # softmax only: one implicit zero entry, so a read's size says how much matched

    def validate(self) -> None:
        super().validate()
        self._positive("d_key", "heads")
        if self.read not in ("linear", "softmax"):
            raise ConfigError(f"{self.path}.read: expected 'linear' or 'softmax', got {self.read!r}")
        if self.sink and self.read != "softmax":
            raise ConfigError(f"{self.path}.sink: only the softmax read has a sink (set read = 'softmax')")
        if self.read == "linear" and self.heads != 1:
            raise ConfigError(f"{self.path}.heads: the linear read has one head; got {self.heads} "
                              "(set read = 'softmax' for several)")
        if self.d_key % self.heads:
            raise ConfigError(f"{self.path}.heads: must divide d_key={self.d_key}, got {self.heads}")


@dataclass
class ReaderConfig(Section):
    """How the memory reader builds its queries, and whether the thinking core reads the bank again.

    By default a query is the normalised prelude state. Two token terms can be added, for questions whose key
    words must reach the query before the prelude has learned to carry them (experiments/README.md,
    Sort-of-CLEVR): a causal depthwise conv over the last `query_conv` token embeddings, and a decayed
    bag of query-only byte embeddings (the streamed form of End-to-End Memory Networks' bag-of-words query)
    whose 8 channel groups start at time constant `query_ema` tokens and learn their own decay.
    """

    path: ClassVar[str] = "model.reader"
    query_conv: int = 0  # window of the token conv (0 = off)
    query_ema: int = 0  # starting time constant of the decayed bag of bytes (0 = off)
    query_state: bool = True  # False: the prelude's read queries with the token terms alone
    core_reads: bool = False  # the core reads the bank again at every iteration, with a query from its state
    # the core's re-reads score the entries with keys of their own: a separate projection of the entry
    # embeddings (content and position), not the prelude read's keys (for banks written from entries)
    core_keys: bool = False

    EMA_GROUPS: ClassVar[int] = 8

    def validate(self) -> None:
        super().validate()
        self._positive("query_conv", "query_ema", minimum=0)
        if self.query_ema == 1:
            raise ConfigError(f"{self.path}.query_ema: expected 0 (off) or a starting time constant >= 2 tokens, got 1")
        if not self.query_state and not (self.query_conv or self.query_ema):
            raise ConfigError(f"{self.path}.query_state: false needs query_conv or query_ema, which then form the "
                              "whole query")


@dataclass
class CoreConfig(Section):
    """The thinking core (`rmt.model.thinking`), one of two kinds:

    * ``mixer = "ssm"``: n_layers shared-weight selective-SSM layers iterated K times in depth over the whole
      sequence (recurrent depth);
    * ``mixer = "gru"``: n_layers gated GRU layers whose state is carried from token to token, each thinking
      token taking K update steps (recurrence in time: a running value, such as a word problem's count).
    """

    path: ClassVar[str] = "model.core"
    mixer: str = "ssm"
    n_layers: int = 1
    iters: int = 4  # K at inference (training samples K per batch from its stage's range)
    init: str = "zero"  # initial core state: "zero" or "random" (random in training only; ssm core)
    hidden: int = 0  # gru core: width of the recurrent state (0 = mlp_mult * d_model)

    MIXERS: ClassVar[tuple[str, ...]] = ("ssm", "gru")

    def validate(self) -> None:
        super().validate()
        self._positive("n_layers")
        self._positive("iters", "hidden", minimum=0)
        if self.mixer not in self.MIXERS:
            raise ConfigError(f"{self.path}.mixer: expected one of {list(self.MIXERS)}, got {self.mixer!r}")
        if self.init not in ("zero", "random"):
            raise ConfigError(f"{self.path}.init: expected 'zero' or 'random', got {self.init!r}")


@dataclass
class RouterConfig(Section):
    """The learned router over {memory, think, both}."""

    path: ClassVar[str] = "model.router"
    threshold: float = 0.5  # at inference a token with p(think) + p(both) below this skips the core
    init_think: float = 1.0  # initial logit bonus of the think/both branches, so training starts by thinking
    # also route on the reader's token bag (needs reader.query_ema): what the question is about so far, not only
    # the prelude's state, which is just the token itself in a model with no prelude
    context: bool = False

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{self.path}.threshold: expected a value in (0, 1), got {self.threshold}")


@dataclass
class RMTConfig(Section):
    """The whole architecture. Top level: vocabulary and layer counts; everything else in its section."""

    path: ClassVar[str] = "model"
    vocab_size: int = 257  # the byte tokenizer: 256 bytes + pad
    pad_id: int = 256
    d_model: int = 128
    n_prelude: int = 2
    n_coda: int = 1
    mlp_mult: int = 2  # gated-MLP hidden size = mlp_mult * d_model
    # std of the (tied) embedding at initialisation; 0 = d_model ** -0.5, which with the tied head gives logits
    # of unit scale (the demo's arithmetic learns ~2x faster with it than with 0.02: experiments/demo_v2)
    embed_init: float = 0.02
    ssm: SSMConfig = field(default_factory=SSMConfig)
    product_keys: ProductKeyConfig = field(default_factory=ProductKeyConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    # name -> {"type": ..., the encoder's own settings}: the encoders a modality brings (encoders.py); none
    # for a text model
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        for name, section in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):  # RMTConfig(core={"iters": 2}) as well as RMTConfig(core=CoreConfig(...))
                value = section.from_dict(value)
                setattr(self, name, value)
            if not isinstance(value, section):
                raise ConfigError(f"model.{name}: expected a {section.__name__} or a table, got {value!r}")
            value.validate()
        self._positive("vocab_size", "d_model", "mlp_mult")
        self._positive("n_prelude", "n_coda", minimum=0)
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"model.pad_id: expected 0 <= pad_id < vocab_size={self.vocab_size}, got {self.pad_id}")
        if (self.ssm.expand * self.d_model) % self.ssm.head_dim:
            raise ConfigError(f"model.ssm.head_dim: must divide ssm.expand * d_model = "
                              f"{self.ssm.expand * self.d_model}, got {self.ssm.head_dim}")
        if self.d_model % self.bank.heads:
            raise ConfigError(f"model.bank.heads: must divide d_model={self.d_model}, got {self.bank.heads}")
        if self.reader.query_ema and self.d_model % ReaderConfig.EMA_GROUPS:
            raise ConfigError(f"model.reader.query_ema: its {ReaderConfig.EMA_GROUPS} channel groups must divide "
                              f"d_model, got {self.d_model}")
        if not isinstance(self.encoders, dict):
            raise ConfigError(f"model.encoders: expected a table of encoders by name, got {self.encoders!r}")
        from .encoders import encoder_settings  # imports the encoders' modules only when a config names one
        for name, spec in self.encoders.items():
            encoder_settings(name, spec)
            if not self.bank.enabled:
                raise ConfigError(f"model.encoders.{name}: an encoder writes into the explicit bank; "
                                  "needs bank.enabled = true")
        if self.embed_init < 0:
            raise ConfigError(f"model.embed_init: expected >= 0 (0 = d_model ** -0.5), got {self.embed_init}")
        if self.router.context and not self.reader.query_ema:
            raise ConfigError("model.router.context: routes on the reader's token bag; needs reader.query_ema > 0")
        if self.reader.core_reads and self.core.mixer != "ssm":
            raise ConfigError("model.reader.core_reads: the core's re-reads are for the ssm core (core.mixer = 'ssm')")
        if self.reader.core_reads and not self.bank.enabled:
            raise ConfigError("model.reader.core_reads: needs bank.enabled = true")
        if self.reader.core_keys and not self.reader.core_reads:
            raise ConfigError("model.reader.core_keys: keys for the core's re-reads; needs reader.core_reads = true")

    # ----------------------------------------------------------------------------------------- I/O
    def replace(self, **changes: Any) -> "RMTConfig":
        """A copy with some fields changed; a section may be given as a partial dict (merged into the current)."""
        data = self.to_dict()
        for k, v in changes.items():
            data[k] = {**data[k], **v} if (k in _SECTIONS and isinstance(v, dict)) else v
            if k == "encoders" and isinstance(v, dict):  # per encoder, a partial table merges into the current
                data[k] = {**self.encoders, **{n: {**self.encoders.get(n, {}), **e} if isinstance(e, dict) else e
                                               for n, e in v.items()}}
        return RMTConfig.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "RMTConfig":
        """A nested dict (this config's `to_dict`) or the flat form of older checkpoints (migrated)."""
        if isinstance(data, dict) and is_flat(data):
            data = migrate_flat(data, source)
        if isinstance(data, dict) and "vision" in data:
            data = migrate_vision(data, source)
        return super().from_dict(data, source)

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
        """The config as TOML: the global fields, then one ``[section]`` table each (relative to ``[model]``
        when pasted under it: write ``[model.core]`` there)."""
        d = self.to_dict()
        tables = {**{name: d[name] for name in _SECTIONS}, **{f"encoders.{n}": e for n, e in d["encoders"].items()}}
        top = "".join(f"{k} = {_toml_value(v)}\n" for k, v in d.items() if k not in _SECTIONS and k != "encoders")
        sections = "".join(f"\n[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
                           for name, table in tables.items())
        return top + sections

    @classmethod
    def from_toml(cls, text: str, source: str = "<toml>") -> "RMTConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        return cls.from_dict(data, source=source)


_SECTIONS: dict[str, type[Section]] = {"ssm": SSMConfig, "product_keys": ProductKeyConfig, "bank": BankConfig,
                                       "reader": ReaderConfig, "core": CoreConfig, "router": RouterConfig}

# ------------------------------------------------------------------------------------------- the flat form
# Old flat key -> (section or None for the top level, new key).
FLAT_KEYS: dict[str, tuple[str | None, str]] = {
    "vocab_size": (None, "vocab_size"), "pad_id": (None, "pad_id"), "d_model": (None, "d_model"),
    "n_prelude": (None, "n_prelude"), "n_coda": (None, "n_coda"), "mlp_mult": (None, "mlp_mult"),
    "ssm_expand": ("ssm", "expand"), "ssm_head_dim": ("ssm", "head_dim"), "ssm_d_state": ("ssm", "d_state"),
    "ssm_conv": ("ssm", "conv"), "ssm_chunk": ("ssm", "chunk"),
    "memory": ("product_keys", "enabled"), "mem_n_keys": ("product_keys", "n_keys"),
    "mem_heads": ("product_keys", "heads"), "mem_topk": ("product_keys", "topk"), "mem_d_key": ("product_keys", "d_key"),
    "explicit_memory": ("bank", "enabled"), "explicit_d_key": ("bank", "d_key"), "explicit_read": ("bank", "read"),
    "explicit_heads": ("bank", "heads"), "explicit_sink": ("bank", "sink"),
    "memory_query_conv": ("reader", "query_conv"), "memory_query_ema": ("reader", "query_ema"),
    "memory_query_state": ("reader", "query_state"), "core_reads_memory": ("reader", "core_reads"),
    "n_core": ("core", "n_layers"), "think_iters": ("core", "iters"), "think_init": ("core", "init"),
    "router_threshold": ("router", "threshold"), "router_init_think": ("router", "init_think"),
    "vision": ("vision", "enabled"), "vision_image_size": ("vision", "image_size"), "vision_patch": ("vision", "patch"),
    "vision_channels": ("vision", "channels"), "vision_stem": ("vision", "stem"),
    "vision_conv_layers": ("vision", "conv_layers"), "vision_recon": ("vision", "recon"),
}
_REMOVED = {"core_read_distance": "it was measured as giving nothing and removed (experiments/README.md, "
                                  "Sort-of-CLEVR); delete the key, or use the code of commit 6491e24, which had it"}
FLAT_ONLY_KEYS = ((set(FLAT_KEYS) | set(_REMOVED)) - {name for sec, name in FLAT_KEYS.values() if sec is None}
                  - set(_SECTIONS) - {"vision"})


def is_flat(data: dict[str, Any]) -> bool:
    """True for the flat config form of older checkpoints: a key that only that form has (``mem_n_keys``,
    ``think_iters``, ...), or ``vision`` holding a plain value instead of a table."""
    return bool(FLAT_ONLY_KEYS & set(data)) or ("vision" in data and not isinstance(data["vision"], dict))


def migrate_flat(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """The flat form (``d_model``, ``mem_n_keys``, ``think_iters``, ...) -> the nested form of `RMTConfig`.

    Unknown keys are left for `from_dict` to report; a removed option that was on is refused."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _REMOVED:
            if value:
                at = f"{source}: " if source else ""
                raise ConfigError(f"{at}{key} = {value!r} is no longer supported: {_REMOVED[key]}")
            continue
        if key in (*_SECTIONS, "vision") and isinstance(value, dict):  # a section already nested: merge with migrated keys
            out[key] = {**out.get(key, {}), **value}
            continue
        if key not in FLAT_KEYS:  # left for from_dict to accept or report
            out[key] = value
            continue
        section, name = FLAT_KEYS[key]
        if section is None:
            out[name] = value
        else:
            out.setdefault(section, {})[name] = value
    return out


def migrate_vision(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """A config with the old ``vision`` section (the model's own image encoder) -> the same encoder as
    ``encoders.image`` of type "image-patches"; ``enabled = false`` (the default) means no encoder."""
    data = dict(data)
    vision = data.pop("vision")
    if not isinstance(vision, dict):
        at = f"{source}: " if source else ""
        raise ConfigError(f"{at}model.vision: expected a table, got {vision!r}")
    vision = dict(vision)
    if vision.pop("enabled", False):
        data["encoders"] = {**data.get("encoders", {}), "image": {"type": "image-patches", **vision}}
    return data


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid TOML basic string
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
