"""Data-parallel training on torch.distributed: process groups, rank helpers and the local launcher.

``trainer.devices=N`` on one machine starts N processes here (NCCL on GPUs, gloo on CPU); under
``torchrun`` (several nodes, or SLURM) the processes already exist and this module only joins the
group from the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 0 alone
writes checkpoints and the MLflow run.
"""

from __future__ import annotations

import os
import socket


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_type: str):
    """Join the process group from the environment; returns this process's torch.device."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device_type)


def teardown() -> None:
    import torch.distributed as dist

    if active():
        dist.destroy_process_group()


def sum_all(*values) -> list:
    """Element-wise sums of tensors over ranks (the values themselves when not distributed)."""
    import torch.distributed as dist

    if not active():
        return list(values)
    out = []
    for v in values:
        v = v.clone()
        dist.all_reduce(v)
        out.append(v)
    return out


def broadcast_state(module, buffers_only: bool = False) -> None:
    """Rank 0's parameters and buffers of ``module`` (or its buffers only: BatchNorm's statistics, which differ per
    rank) on every rank; nothing when not distributed."""
    import torch
    import torch.distributed as dist

    if active():
        with torch.no_grad():
            for tensor in [*([] if buffers_only else module.parameters()), *module.buffers()]:
                dist.broadcast(tensor, 0)


def gather(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank: int, world: int, port: int, fn, args, results) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    value = fn(*args)
    if local_rank == 0:
        results.put(value)


def spawn(fn, nprocs: int, *args):
    """Run ``fn(*args)`` in ``nprocs`` fresh processes forming one group on this machine; returns rank 0's value."""
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_entry, args=(nprocs, free_port(), fn, args, results), nprocs=nprocs, join=True)
    return results.get()
