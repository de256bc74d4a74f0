"""Multi-process training through PyTorch's own engine: `torchrun` + DistributedDataParallel.

`torchrun --nproc_per_node N -m rmt.cli train --config ...` starts N copies of the same command; each reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment, joins the process group (NCCL on GPUs, gloo on the CPU)
and takes its contiguous slice of every global batch. The loss is normalised by the global number of target
tokens, so N processes compute the same update as one process with the whole batch. If a rank dies, torchrun
stops the others; the collective timeout bounds any wait that torchrun does not see.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_from_env(device: str, timeout_s: float = 300.0) -> tuple[int, int, torch.device]:
    """-> (rank, world size, this process's device). A single process (no torchrun) is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return rank, world, dev


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: shard the model's parameters over the processes, in place.

    Prelude and coda layers and the product-key memory (its value table is most of the parameters at scale)
    are their own units; the thinking core stays in the root unit, because its shared weights are used K times
    per forward pass and a root unit gathers them once.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in [*model.prelude, *model.coda]:
        fully_shard(layer)
    if model.reader.product_keys is not None:
        fully_shard(model.reader.product_keys)
    fully_shard(model)
    return model


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def state_dict_options(strict: bool = True):
    """Full (gathered, on the CPU) state dicts when training is distributed; plain ones otherwise."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if dist.is_available() and dist.is_initialized():
        return StateDictOptions(full_state_dict=True, cpu_offload=True, strict=strict)
    return StateDictOptions(strict=strict)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_ok(ok: bool, device: torch.device) -> bool:
    """True when every process passed ok=True. A collective (every rank calls it), bounded by the process
    group's timeout; a single process just gets its own flag back."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
