"""Encoders that a modality brings: modules that turn its inputs (images, ...) into explicit-bank entries.

The core model knows only this interface. An encoder's code and its settings live with the task that needs it
(the Sort-of-CLEVR image encoder is `rmt.tasks.image_encoder.PatchEncoder`); a model config names the encoders
it carries, each by a type and that type's own settings:

    [model.encoders.image]
    type = "image-patches"          # a name in ENCODER_TYPES, or "package.module:Class" for one of your own
    image_size = 75
    stem = "conv"

`RMT` builds one module per entry (``model.encoders["image"]``), so an encoder's weights are part of the model
and of its checkpoint; a `BankSource` (the task's batch of images) calls it inside ``forward``.

An encoder class provides:
    Config                          a `Section` dataclass of its settings (validated, with "type" stripped)
    __init__(d_model, config)
    encode(inputs) -> (key_inputs, entries)      each (B, M, d_model): what the keys and the values come from
    aux_losses(inputs, entries) -> dict | None   weighted auxiliary training losses (e.g. reconstruction)
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .config import ConfigError

# Short names for the encoders this package ships; "module:Class" names any other.
ENCODER_TYPES: dict[str, str] = {"image-patches": "rmt.tasks.image_encoder:PatchEncoder"}


def encoder_class(type_name: str, where: str = "model.encoders") -> type[nn.Module]:
    """The class a config's ``type`` names; a `ConfigError` naming `where` if it cannot be imported."""
    target = ENCODER_TYPES.get(type_name, type_name)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise ConfigError(f"{where}.type: expected one of {sorted(ENCODER_TYPES)} or 'package.module:Class', "
                          f"got {type_name!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.type: cannot import {target!r} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "Config")):
        raise ConfigError(f"{where}.type: {target!r} is not an encoder (an nn.Module with a Config)")
    return cls


def encoder_settings(name: str, spec: Any):
    """A config's ``encoders[name]`` table -> (the encoder class, its validated Config)."""
    where = f"model.encoders.{name}"
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigError(f"{where}: expected a table with a string 'type', got {spec!r}")
    cls = encoder_class(spec["type"], where)
    settings = {k: v for k, v in spec.items() if k != "type"}
    try:
        return cls, cls.Config.from_dict(settings)
    except ConfigError as e:  # name the field by where it sits in this config, not by the class's default
        raise ConfigError(str(e).replace(cls.Config.path, where)) from None


def build_encoders(encoders: dict[str, dict[str, Any]], d_model: int) -> nn.ModuleDict:
    """The config's encoders table -> one module per entry, by name."""
    modules = {}
    for name, spec in encoders.items():
        cls, settings = encoder_settings(name, spec)
        modules[name] = cls(d_model, settings)
    return nn.ModuleDict(modules)
