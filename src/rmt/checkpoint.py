"""Checkpoints: weights in safetensors, config and tokenizer beside them; nothing is ever unpickled.

    DIR/model.safetensors   tensors only
    DIR/config.json         RMTConfig
    DIR/tokenizer_config.json (+ tokenizer.json for BPE)

Files are written to a temporary name and renamed, so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rmt.errors import RMTError
from rmt.model import RMT, ConfigError, RMTConfig, migrate_state_dict
from rmt.tokenizer import Tokenizer, load_tokenizer


class CheckpointError(RMTError, RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or written for another model."""


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by the owner only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: RMT, directory: str | Path, tokenizer: Tokenizer | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """state_dict: the full weights when the model itself is sharded (FSDP gathers them first)."""
    d = Path(directory)
    # Clones, so that no two saved tensors share storage (safetensors refuses that).
    tensors = {k: v.detach().contiguous().clone() for k, v in (state_dict or model.state_dict()).items()}
    atomic_write(d / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(d / "config.json", lambda p: p.write_text(model.config.to_json() + "\n"))
    if tokenizer is not None:
        tokenizer.save(d)
    return d


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[RMT, Tokenizer | None]:
    d = Path(directory)
    for name in ("model.safetensors", "config.json"):
        if not (d / name).is_file():
            raise CheckpointError(f"{d}: not a checkpoint: {name} is missing")
    try:
        config = RMTConfig.from_json(d / "config.json")
    except ConfigError as e:
        raise CheckpointError(f"{d / 'config.json'}: {e}") from None
    try:
        # weights saved before the memory reader owned the memories carry the old names
        tensors = migrate_state_dict(load_file(str(d / "model.safetensors"), device=map_location))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{d / 'model.safetensors'}: corrupt or truncated ({e})") from None
    model = RMT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in [
            f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
            ", ".join(f"{k}: expected {tuple(expected[k].shape)}, got {tuple(tensors[k].shape)}" for k in wrong[:5]),
        ] if s)
        raise CheckpointError(f"{d}: weights do not match config.json ({detail})")
    model.load_state_dict(tensors)
    tok = load_tokenizer(d) if (d / "tokenizer_config.json").is_file() else None
    return model, tok


# ------------------------------------------------------------------------------------------------ training state
TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"


def save_training_state(state: dict, directory: str | Path) -> None:
    """Optimizer, schedule position and random-number-generator states (see `Trainer.training_state`).

    Tensors (Adam moments, the torch RNG) go to safetensors, everything else to JSON: no pickle anywhere.
    """
    d = Path(directory)
    opt = state["optimizer"]
    tensors = {"torch_rng": state["torch_rng"].clone()}
    plain_state: dict[str, dict] = {}
    for param, per_param in opt["state"].items():  # keyed by parameter name (torch.distributed.checkpoint)
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param}.{name}"] = value.detach().contiguous().clone()
            else:
                plain_state.setdefault(str(param), {})[name] = value
    meta = {"stage_index": state["stage_index"], "stage_step": state["stage_step"],
            "global_step": state["global_step"], "train_seconds": state.get("train_seconds", 0.0),
            "param_groups": opt["param_groups"],
            "optimizer_plain_state": plain_state, "mix": _jsonable(state["mix"]), "k_rng": _jsonable(state["k_rng"])}
    atomic_write(d / TRAINING_STATE_TENSORS, lambda p: save_file(tensors, str(p)))
    atomic_write(d / TRAINING_STATE_JSON, lambda p: p.write_text(json.dumps(meta) + "\n"))


def load_training_state(directory: str | Path) -> dict:
    d = Path(directory)
    for name in (TRAINING_STATE_TENSORS, TRAINING_STATE_JSON):
        if not (d / name).is_file():
            raise CheckpointError(f"{d}: cannot resume: {name} is missing")
    try:
        tensors = load_file(str(d / TRAINING_STATE_TENSORS))
        meta = json.loads((d / TRAINING_STATE_JSON).read_text())
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{d}: training state is corrupt or truncated ({e})") from None
    opt_state: dict[str, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            param, name = key.removeprefix("optimizer.").rsplit(".", 1)
            opt_state.setdefault(param, {})[name] = value
    for param, plain in meta["optimizer_plain_state"].items():
        opt_state.setdefault(param, {}).update(plain)
    return {"stage_index": meta["stage_index"], "stage_step": meta["stage_step"], "global_step": meta["global_step"],
            "train_seconds": meta.get("train_seconds", 0.0),  # absent in checkpoints written before it was kept
            "optimizer": {"state": opt_state, "param_groups": meta["param_groups"]}, "mix": meta["mix"],
            "k_rng": meta["k_rng"], "torch_rng": tensors["torch_rng"]}


def _jsonable(x):
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint folder for `run`: the folder itself when it holds model.safetensors + config.json, else
    RUN/checkpoint (what `rmt demo` writes) or RUN/checkpoints/latest (what `rmt train` writes)."""
    run = Path(run)
    for candidate in (run, run / "checkpoint", run / "checkpoints" / "latest"):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run or checkpoint folder")
    raise FileNotFoundError(f"{run}: no checkpoint found (looked for model.safetensors + config.json in {run}, "
                            f"{run / 'checkpoint'} and {run / 'checkpoints' / 'latest'})")
