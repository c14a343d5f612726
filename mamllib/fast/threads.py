"""The batched meta-objective with the meta-batch shared out among CPU threads.

Replaces :func:`mamllib.maml.meta_loss_batched` on a multi-core CPU (strategy
``"threads"``); ``tests/test_conv4.py`` holds it equal to the batched path and the loop.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from mamllib.batch import Batch
from mamllib.maml import LossFn, meta_loss_batched
from mamllib.models import Params


class _PrecomputedMetaLoss(torch.autograd.Function):
    """A loss whose gradient w.r.t. ``params`` was computed already: ``forward``
    returns ``loss``, ``backward`` the stored gradients times the incoming one."""

    @staticmethod
    def forward(ctx, loss, grads, *values):
        ctx.save_for_backward(*grads)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_loss):
        return (None, None, *(grad_loss * g for g in ctx.saved_tensors))


def meta_loss_threads(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """:func:`meta_loss_batched` with the meta-batch shared out among CPU threads.

    Why: on a 2-core CPU one process with two intra-op threads splits every small
    operation of the batched path in two, and synchronises after each; here each
    of ``torch.get_num_threads()`` Python threads takes its share of the tasks
    through the whole meta-iteration (forward, inner steps, backward) with one
    intra-op thread, and the shares are summed (faster at the Omniglot 20-way
    setting on two cores: ``benchmarks/README.md``).
    Tasks are independent (batch norm is per task), so the result is the batched
    path's, up to rounding.

    The gradient is computed here, so the returned loss can be differentiated
    once, w.r.t. ``params`` only (what :func:`meta_gradient` and training do); for
    anything else use ``"batched"``. Intra-op threads are set to 1 for the call
    and restored after it, for the whole process: other threads that run torch
    meanwhile run on one. On a GPU, or with one thread, it is ``"batched"``.
    The gain needs freed memory kept for reuse
    (:func:`mamllib.fast.allocator.keep_freed_memory`,
    which the training scripts call): with glibc's default allocator the threads'
    page faults contend and it is no faster than ``"batched"``.
    """
    n_threads = min(torch.get_num_threads(), len(tasks))
    if n_threads < 2 or not tasks.x_support.is_cpu:
        return meta_loss_batched(
            model, params, tasks, loss_fn, inner_lr, n_inner_steps, first_order
        )
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}

    def share(index: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.enable_grad():
            loss = meta_loss_batched(
                model,
                leaves,
                tasks.subset(index),
                loss_fn,
                inner_lr,
                n_inner_steps,
                first_order,
            )
            grads = torch.autograd.grad(loss, tuple(leaves.values()), allow_unused=True)
        weight = len(index) / len(tasks)  # the meta-loss is a mean over tasks
        return weight * loss.detach(), [
            torch.zeros_like(p) if g is None else weight * g
            for p, g in zip(leaves.values(), grads)
        ]

    shares = torch.arange(len(tasks)).tensor_split(n_threads)
    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_threads) as pool:
            results = list(pool.map(share, shares))
    finally:
        torch.set_num_threads(intra_op)
    loss = torch.stack([loss for loss, _ in results]).sum()
    grads = [torch.stack(g).sum(0) for g in zip(*(g for _, g in results))]
    return _PrecomputedMetaLoss.apply(loss, grads, *params.values())
