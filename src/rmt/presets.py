"""Model presets from `tiny` (CPU, minutes) to 70B, with parameter counts and training-memory estimates.

Counts come from building the model on PyTorch's meta device (shapes only, no memory), so they are exact for
the code as it is. The FSDP2 estimate is the usual back-of-envelope: fp32 master weights, gradients and two
Adam moments (16 bytes per parameter) sharded over the GPUs, plus bf16 activations of the local batch with
activation checkpointing at layer boundaries; it is an estimate to plan with, not a measurement.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from rmt.config import ConfigError, RMTConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=128, n_prelude=2, n_core=1, n_coda=1, mem_n_keys=64, mem_heads=2, mem_topk=8),
    "small": dict(d_model=512, n_prelude=4, n_core=2, n_coda=2, ssm_head_dim=64, mem_n_keys=256, mem_heads=4,
                  mem_topk=16, mem_d_key=128, explicit_d_key=128),
    "base": dict(d_model=768, n_prelude=11, n_core=3, n_coda=3, ssm_head_dim=64, mem_n_keys=512, mem_heads=4,
                 mem_topk=32, mem_d_key=256, explicit_d_key=128),
    "1b": dict(d_model=2048, n_prelude=8, n_core=4, n_coda=4, ssm_head_dim=64, mem_n_keys=512, mem_heads=8,
               mem_topk=32, mem_d_key=256, explicit_d_key=256, mlp_mult=4),
    "8b": dict(d_model=4096, n_prelude=16, n_core=6, n_coda=8, ssm_head_dim=64, mem_n_keys=1024, mem_heads=8,
               mem_topk=32, mem_d_key=512, explicit_d_key=256, mlp_mult=4),
    "70b": dict(d_model=8192, n_prelude=32, n_core=10, n_coda=16, ssm_head_dim=128, mem_n_keys=1024,
                mem_heads=16, mem_topk=32, mem_d_key=512, explicit_d_key=512, mlp_mult=4),
}


def preset(name: str, **overrides) -> RMTConfig:
    """Preset `name` with `overrides` (RMTConfig fields) applied.

    Raises ConfigError (a ValueError) for an unknown preset or an unknown key, in the words `RMTConfig.from_dict`
    uses without a preset ("unknown model key(s) [...]; known keys: [...]"), and for a bad value (the field's
    own check). A config file's loader prefixes the file and table, e.g. "configs/demo.toml [model]: ...".
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {list(PRESETS)}")
    known = {f.name for f in fields(RMTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model key(s) {unknown}; known keys: {sorted(known)}")
    return RMTConfig(**{**PRESETS[name], **overrides})


def count_params(config: RMTConfig) -> dict[str, int]:
    """total, memory (product-key values), and active per token (everything but the unread memory slots)."""
    from rmt.model import RMT

    with torch.device("meta"):
        model = RMT(config)
    total = sum(p.numel() for p in model.parameters())
    memory = sum(p.numel() for p in model.memory.value_parameters()) if model.memory is not None else 0
    read_per_token = config.mem_heads * config.mem_topk * config.d_model if model.memory is not None else 0
    return {"total": total, "memory": memory, "active_per_token": total - memory + read_per_token}


def fsdp_memory_gb(config: RMTConfig, n_gpus: int, tokens_per_gpu: int = 8192) -> float:
    """Estimated training memory per GPU (GB) under FSDP2 full sharding over n_gpus."""
    params = count_params(config)["total"]
    states = 16 * params / n_gpus
    layers = config.n_prelude + config.n_coda + config.n_core * config.think_iters
    # Checkpointed layer inputs (bf16) plus one layer's internals recomputed at a time (~16 d per token).
    activations = tokens_per_gpu * config.d_model * 2 * (layers + 16)
    return (states + activations) / 1e9
