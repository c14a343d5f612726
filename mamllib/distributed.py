"""Data-parallel meta-training with torch.distributed, as started by torchrun.

Every rank draws the same meta-batch from the same task stream and keeps its share of
the tasks (:func:`shard`), so that the union of the shares is exactly the meta-batch a
single process would train on, whatever the number of ranks. Each rank computes the
meta-gradient of its share; :func:`all_reduce_gradients` sums the shares weighted by
their fraction of the tasks, which is the meta-gradient of the whole meta-batch. Every
rank then takes the same outer step from the same parameters. Meta-RL's TRPO step
reduces every mean over tasks it computes the same way (:func:`all_reduce_weighted`;
:mod:`mamllib.experiments.metarl_trpo`).

Why not ``DistributedDataParallel``: its reducer hooks the backward pass, and MAML's
second-order meta-gradient differentiates through ``torch.autograd.grad(...,
create_graph=True)``, which DDP does not support. An explicit all-reduce of the
finished meta-gradient needs nothing from the backward pass.

Drawing the whole meta-batch on every rank costs the sampling of the other ranks'
tasks (indexing a uint8 array or drawing sine waves), small beside their
meta-gradients.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mamllib.models import Params


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one that writes checkpoints, results and progress."""
    return rank() == 0


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment, if any.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address;
    a plain ``python`` start sets none and this does nothing. The backend is NCCL
    for CUDA and gloo for the CPU; each rank takes the GPU of its ``LOCAL_RANK``.

    Returns:
        True if this process is now one rank of several.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return is_distributed()


def local_device(device: str) -> str:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if device == "cuda" and is_distributed():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def shard(batch):
    """This rank's share of a meta-batch and its fraction of the tasks.

    The shares are contiguous and as even as ``tensor_split`` makes them; a rank may
    get no task when the meta-batch is smaller than the world, which is refused.
    """
    if not is_distributed():
        return batch, 1.0
    n_tasks, size = len(batch), world_size()
    if n_tasks < size:
        raise ValueError(
            f"meta_batch_size={n_tasks} is smaller than the {size} ranks: every rank "
            "needs at least one task; use fewer processes (--nproc_per_node)"
        )
    index = torch.arange(n_tasks).tensor_split(size)[rank()]
    return batch.subset(index), len(index) / n_tasks


def all_reduce_gradients(params: Params, fraction: float) -> None:
    """Replace each ``params[k].grad`` by the sum over ranks of ``fraction * grad``.

    The meta-loss is a mean over tasks, so weighting each rank's mean by its fraction
    of the tasks and summing gives the mean over the whole meta-batch. One flat
    tensor is reduced, in one call.
    """
    if not is_distributed():
        return
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params.values()]
    flat = torch.cat([g.reshape(-1) for g in grads]) * fraction
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params.values(), grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def all_reduce_mean(value: float, fraction: float, device: str = "cpu") -> float:
    """The sum over ranks of ``fraction * value``: a per-task mean made global."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value * fraction], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def all_reduce_weighted(tensor: torch.Tensor, fraction: float) -> torch.Tensor:
    """The sum over ranks of ``fraction * tensor``, as a new tensor (no graph): a
    per-task mean of this rank's share made the mean over the whole meta-batch.

    Outside torch.distributed, ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    total = tensor.detach() * fraction
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_rank(flag: bool, device: str | torch.device = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any: a decision all ranks take
    together (e.g. stopping at a time limit that one rank's clock reached first, where
    the others would wait for it in the next all-reduce). Outside torch.distributed,
    ``flag``."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier() -> None:
    """Wait for every rank (nothing outside torch.distributed)."""
    if is_distributed():
        dist.barrier()
