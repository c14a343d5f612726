"""Learned inner learning rates: Meta-SGD (Li, Zhou, Chen, Li 2017) and MAML++
(Antoniou, Edwards, Storkey, ICLR 2019, "How to train your MAML"): per-layer
per-step learning rates (LSLR) and the multi-step loss (MSL).

Meta-SGD's inner step is theta' = theta - alpha o grad L_support(theta), alpha
a tensor shaped like theta, learned with it; LSLR learns one scalar per parameter
tensor and per inner step. Both are one rule here: each parameter ``k`` has a
learning-rate tensor ``params["lr." + k]`` whose first axis is the inner step (length
1: the same at every step) and whose other axes broadcast against the parameter:

    Meta-SGD  [1, *shape]              (:func:`meta_sgd_lrs`)
    LSLR      [n_inner_steps, 1, ...]  (:func:`lslr_lrs`)

The learning rates live in the same ``params`` dict as the weights, so that
:class:`mamllib.outer_steps.AdamStep` and :func:`mamllib.train.fit` meta-learn them
with no change; :func:`split_lrs` separates the two.

MSL makes the meta-loss a weighted sum of the query losses after every inner step,
its weights annealed towards the last step (:func:`multi_step_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mamllib.batch import Batch
from mamllib.maml import LossFn, task_loss
from mamllib.models import Params
from mamllib.outer_steps import Objective

LR_PREFIX = "lr."


def meta_sgd_lrs(params: Params, inner_lr: float) -> Params:
    """Meta-SGD's learning rates, one per parameter element, all ``inner_lr``."""
    return {
        LR_PREFIX + k: torch.full(
            (1, *p.shape), inner_lr, dtype=p.dtype, device=p.device
        ).requires_grad_()
        for k, p in params.items()
    }


def lslr_lrs(params: Params, inner_lr: float, n_inner_steps: int) -> Params:
    """LSLR's learning rates, one per parameter tensor and inner step, all
    ``inner_lr``."""
    return {
        LR_PREFIX + k: torch.full(
            (n_inner_steps,) + (1,) * p.dim(), inner_lr, dtype=p.dtype, device=p.device
        ).requires_grad_()
        for k, p in params.items()
    }


def rate_at(lr: torch.Tensor, step: int) -> torch.Tensor:
    """The rate of inner step ``step`` from a learned-rate tensor: Meta-SGD's
    ``[1, *shape]`` serves every step, LSLR's ``[n_inner_steps, 1, ...]`` one per
    step."""
    return lr[0] if len(lr) == 1 else lr[step]


def split_lrs(params: Params) -> tuple[Params, Params]:
    """``(weights, lrs)``: the parameters, and their learning rates keyed like them."""
    weights = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
    lrs = {k.removeprefix(LR_PREFIX): v for k, v in params.items() if k not in weights}
    return weights, lrs


def metasgd_step(
    loss_of_params: Callable[[Params], torch.Tensor],
    weights: Params,
    lrs: Params,
    step: int,
    first_order: bool = False,
) -> Params:
    """One inner step, theta - alpha_step o grad L(theta), every parameter with its
    own learning rate at inner step ``step``. Second order keeps the inner
    gradient's graph, as :func:`mamllib.maml.inner_step`; the learning rates get a
    gradient either way."""
    grads = torch.autograd.grad(
        loss_of_params(weights),
        tuple(weights.values()),
        create_graph=not first_order,
        allow_unused=True,
    )
    adapted_params = {}
    for (k, p), g in zip(weights.items(), grads):
        adapted_params[k] = p if g is None else p - rate_at(lrs[k], step) * g
    return adapted_params


def metasgd_adapt(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    n_inner_steps: int,
    first_order: bool = False,
) -> list[Params]:
    """The adapted weights after each of ``n_inner_steps`` steps (the last is
    theta'); ``params`` holds weights and learning rates."""
    weights, lrs = split_lrs(params)

    def support_loss(p: Params) -> torch.Tensor:
        return task_loss(model, p, x_support, y_support, loss_fn)

    every_step = []
    for step in range(n_inner_steps):
        weights = metasgd_step(support_loss, weights, lrs, step, first_order)
        every_step.append(weights)
    return every_step


def metasgd_meta_loss(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    n_inner_steps: int,
    first_order: bool = False,
    step_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean query loss after :func:`metasgd_adapt`; its gradient w.r.t. ``params`` is
    the meta-gradient of weights and learning rates alike.

    Args:
        step_weights: MSL: sum_j w_j L_query(theta_j) over the inner steps
            j = 1..n_inner_steps instead of the last step's loss alone.
    """
    if step_weights is not None and len(step_weights) != n_inner_steps:
        raise ValueError(
            f"step_weights needs one weight per inner step ({n_inner_steps}), "
            f"got {len(step_weights)}"
        )
    losses = []
    for i in range(len(tasks)):
        every_step = metasgd_adapt(
            model,
            params,
            tasks.x_support[i],
            tasks.y_support[i],
            loss_fn,
            n_inner_steps,
            first_order,
        )
        query = [
            task_loss(model, w, tasks.x_query[i], tasks.y_query[i], loss_fn)
            for w in every_step
        ]
        if step_weights is None:
            losses.append(query[-1])
        else:
            losses.append(sum(w * q for w, q in zip(step_weights, query)))
    return torch.stack(losses).mean()


def metasgd_objective(
    model: nn.Module,
    loss_fn: LossFn,
    n_inner_steps: int,
    first_order: bool = False,
    step_weights: Sequence[float] | torch.Tensor | None = None,
) -> Objective:
    """Meta-SGD / LSLR as ``objective(params, tasks)`` for
    :class:`mamllib.outer_steps.AdamStep`; ``params`` holds weights and learning
    rates (e.g. ``{**init_params(model, g), **meta_sgd_lrs(...)}``), and after
    training test-time adaptation must use :func:`metasgd_adapt`."""

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        return metasgd_meta_loss(
            model, params, tasks, loss_fn, n_inner_steps, first_order, step_weights
        )

    return objective


def multi_step_loss(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    step_weights: Sequence[float] | torch.Tensor,
    first_order: bool = False,
) -> torch.Tensor:
    """MAML++'s multi-step loss with MAML's fixed ``inner_lr``: the weighted sum of
    the query losses after every inner step. With weights (0, ..., 0, 1) it is
    :func:`mamllib.maml.meta_loss_loop`."""
    fixed = {k: v.detach() for k, v in lslr_lrs(params, inner_lr, 1).items()}
    return metasgd_meta_loss(
        model,
        {**params, **fixed},
        tasks,
        loss_fn,
        n_inner_steps,
        first_order,
        step_weights,
    )


def multi_step_weights(n_inner_steps: int, progress: float) -> list[float]:
    """MSL's annealed step weights, summing to 1 (the schedule of Antoniou et al.'s
    code): uniform at ``progress`` 0; as ``progress`` (the fraction of the annealing
    period done) grows to 1 the earlier steps' weights fall linearly to ``0.03 /
    n_inner_steps`` each and the last step's weight takes the rest."""
    n = n_inner_steps
    floor = 0.03 / n
    earlier = max((1 - progress) / n, floor)
    last = min((1 + progress * (n - 1)) / n, 1 - (n - 1) * floor)
    return [earlier] * (n - 1) + [last]
