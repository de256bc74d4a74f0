"""Model presets from `tiny` (CPU, minutes) to 70B, with parameter counts and training-memory estimates.

A preset is a partial nested config (`RMTConfig.from_dict` form); `preset(name, overrides)` merges a config
file's own `[model]` keys over it, section by section, and validates the result like any other config.

Counts come from building the model on PyTorch's meta device (shapes only, no memory), so they are exact for
the code as it is. The FSDP2 estimate is the usual back-of-envelope: fp32 master weights, gradients and two
Adam moments (16 bytes per parameter) sharded over the GPUs, plus bf16 activations of the local batch with
activation checkpointing at layer boundaries; it is an estimate to plan with, not a measurement.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ConfigError, RMTConfig, is_flat, migrate_flat


def _p(d_model: int, n_prelude: int, n_core: int, n_coda: int, n_keys: int, heads: int, topk: int,
       head_dim: int = 32, d_key: int = 64, bank_key: int = 64, mlp_mult: int = 2) -> dict[str, Any]:
    return {"d_model": d_model, "n_prelude": n_prelude, "n_coda": n_coda, "mlp_mult": mlp_mult,
            "ssm": {"head_dim": head_dim}, "core": {"n_layers": n_core},
            "product_keys": {"n_keys": n_keys, "heads": heads, "topk": topk, "d_key": d_key},
            "bank": {"d_key": bank_key}}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _p(128, 2, 1, 1, n_keys=64, heads=2, topk=8),
    "small": _p(512, 4, 2, 2, n_keys=256, heads=4, topk=16, head_dim=64, d_key=128, bank_key=128),
    "base": _p(768, 11, 3, 3, n_keys=512, heads=4, topk=32, head_dim=64, d_key=256, bank_key=128),
    "1b": _p(2048, 8, 4, 4, n_keys=512, heads=8, topk=32, head_dim=64, d_key=256, bank_key=256, mlp_mult=4),
    "8b": _p(4096, 16, 6, 8, n_keys=1024, heads=8, topk=32, head_dim=64, d_key=512, bank_key=256, mlp_mult=4),
    "70b": _p(8192, 32, 10, 16, n_keys=1024, heads=16, topk=32, head_dim=128, d_key=512, bank_key=512, mlp_mult=4),
}


def preset(name: str, overrides: dict[str, Any] | None = None, source: str | None = None) -> RMTConfig:
    """Preset `name` with `overrides` (nested, or the flat form of older configs) merged over it.

    Raises ConfigError for an unknown preset or any key or value the config refuses, prefixed with `source`."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"{source + ': ' if source else ''}unknown preset {name!r}; known presets: {list(PRESETS)}")
    overrides = dict(overrides or {})
    if is_flat(overrides):
        overrides = migrate_flat(overrides, source)
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for k, v in overrides.items():
        merged[k] = {**merged[k], **v} if (isinstance(v, dict) and isinstance(merged.get(k), dict)) else v
    return RMTConfig.from_dict(merged, source)


def count_params(config: RMTConfig) -> dict[str, int]:
    """total, memory (product-key values), and active per token (everything but the unread memory slots)."""
    from .rmt import RMT

    with torch.device("meta"):
        model = RMT(config)
    pk = model.reader.product_keys
    total = sum(p.numel() for p in model.parameters())
    memory = sum(p.numel() for p in pk.value_parameters()) if pk is not None else 0
    read_per_token = config.product_keys.heads * config.product_keys.topk * config.d_model if pk is not None else 0
    return {"total": total, "memory": memory, "active_per_token": total - memory + read_per_token}


def fsdp_memory_gb(config: RMTConfig, n_gpus: int, tokens_per_gpu: int = 8192) -> float:
    """Estimated training memory per GPU (GB) under FSDP2 full sharding over n_gpus."""
    params = count_params(config)["total"]
    states = 16 * params / n_gpus
    layers = config.n_prelude + config.n_coda + config.core.n_layers * config.core.iters
    # Checkpointed layer inputs (bf16) plus one layer's internals recomputed at a time (~16 d per token).
    activations = tokens_per_gpu * config.d_model * 2 * (layers + 16)
    return (states + activations) / 1e9
