"""MAML++ (Antoniou, Edwards, Storkey, ICLR 2019, "How to train your MAML"): the
training schedule around MAML's meta-objective.

The per-step pieces live in :mod:`mamllib.algorithms.metasgd` (LSLR learning rates,
the multi-step loss and its annealed weights, all one task at a time). Here:

- :func:`msl_meta_loss_vmap`: the same meta-objective (MSL weights, LSLR or a fixed
  inner learning rate, first or second order) with the meta-batch under ``vmap``;
- :func:`cosine_lr`: cosine annealing of the outer learning rate (CA);
- :class:`MAMLPlusPlusStep`: an :class:`mamllib.outer_steps.OuterStep` that applies the
  schedule of each trick at the current iteration: MSL's weights, derivative-order
  annealing (DA: first order for the first iterations, then second order) and CA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from mamllib.algorithms.metasgd import multi_step_weights, rate_at, split_lrs
from mamllib.maml import LossFn, task_loss
from mamllib.models import Params
from mamllib.outer_steps import OuterStep


def learned_rate_steps(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> list[Params]:
    """One task's weights after each of ``n_inner_steps`` SGD steps on its support
    set, with ``torch.func.grad`` (so it runs under vmap).

    When ``params`` holds learning rates (``"lr." + name``, e.g. from
    :func:`~mamllib.algorithms.metasgd.lslr_lrs` or ``meta_sgd_lrs``) the steps use
    them and ``inner_lr`` is ignored; otherwise every step uses ``inner_lr``.
    ``first_order`` treats the inner gradients as constants.
    """
    weights, lrs = split_lrs(params)

    def rate(k: str, step: int):
        if k not in lrs:
            return inner_lr
        return rate_at(lrs[k], step)

    every_step = []
    for step in range(n_inner_steps):
        g = grad(lambda p: task_loss(model, p, x_support, y_support, loss_fn))(weights)
        if first_order:  # the inner gradient as a constant: no Hessian term
            g = {k: v.detach() for k, v in g.items()}
        weights = {k: weights[k] - rate(k, step) * g[k] for k in weights}
        every_step.append(weights)
    return every_step


def query_losses_vmap(
    model: nn.Module,
    params: Params,
    tasks: Any,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
    per_task: bool = False,
) -> torch.Tensor:
    """The meta-batch's mean query loss after each inner step of
    :func:`learned_rate_steps`, ``[n_inner_steps]`` (``per_task``: every task's,
    ``[n_tasks, n_inner_steps]``), with the tasks batched by ``vmap``;
    differentiable w.r.t. ``params`` (weights and learning rates)."""

    def one_task(xs, ys, xq, yq):
        every_step = learned_rate_steps(
            model, params, xs, ys, loss_fn, inner_lr, n_inner_steps, first_order
        )
        query = [task_loss(model, w, xq, yq, loss_fn) for w in every_step]
        return torch.stack(query)  # [n_inner_steps]

    losses = vmap(one_task)(
        tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query
    )  # [n_tasks, n_inner_steps]
    return losses if per_task else losses.mean(0)


def msl_meta_loss_vmap(
    model: nn.Module,
    params: Params,
    tasks: Any,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    step_weights: Sequence[float] | torch.Tensor | None = None,
    first_order: bool = False,
) -> torch.Tensor:
    """The MAML++ meta-objective with the tasks batched by ``vmap``: the value of
    :func:`mamllib.algorithms.metasgd.metasgd_meta_loss` (LSLR rates in ``params``)
    or :func:`~mamllib.algorithms.metasgd.multi_step_loss` (a fixed ``inner_lr``).

    Args:
        step_weights: MSL's weights, one per inner step (sum_j w_j L_query(theta_j));
            ``None``: the last step's query loss alone (MAML).
    """
    if step_weights is not None and len(step_weights) != n_inner_steps:
        raise ValueError(
            f"step_weights needs one weight per inner step ({n_inner_steps}), "
            f"got {len(step_weights)}"
        )
    per_step = query_losses_vmap(
        model, params, tasks, loss_fn, inner_lr, n_inner_steps, first_order
    )
    return weighted(per_step, step_weights)


def weighted(
    per_step: torch.Tensor, step_weights: Sequence[float] | torch.Tensor | None
) -> torch.Tensor:
    """sum_j w_j per_step[j], or the last entry when ``step_weights`` is None."""
    if step_weights is None:
        return per_step[-1]
    w = torch.as_tensor(step_weights, dtype=per_step.dtype, device=per_step.device)
    return (w * per_step).sum()


def cosine_lr(
    base_lr: float, min_lr: float, iteration: int, n_iterations: int
) -> float:
    """Cosine annealing: ``base_lr`` at iteration 0 down to ``min_lr`` at
    ``n_iterations`` (``torch.optim.lr_scheduler.CosineAnnealingLR`` with
    ``T_max=n_iterations``, as MAML++ uses it)."""
    fraction = min(iteration / n_iterations, 1.0)
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


class MAMLPlusPlusStep(OuterStep):
    """Adam on the MAML++ meta-objective, each trick switched on by its argument.

    Args:
        msl_iterations: MSL: anneal :func:`multi_step_weights` over this many
            iterations (then the last step keeps almost all the weight); ``None``:
            the last step's query loss only.
        first_order_iterations: DA: first-order meta-gradients for this many
            iterations, second order afterwards (0: second order throughout).
        cosine_iterations: CA: the outer learning rate follows :func:`cosine_lr`
            from ``outer_lr`` to ``min_outer_lr`` over this many iterations;
            ``None``: a constant ``outer_lr``.

    LSLR needs no argument: put learning rates in ``params``
    (:func:`~mamllib.algorithms.metasgd.lslr_lrs`) and Adam learns them.
    """

    stats = ("loss", "query_loss")

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float,
        n_inner_steps: int,
        outer_lr: float,
        msl_iterations: int | None = None,
        first_order_iterations: int = 0,
        cosine_iterations: int | None = None,
        min_outer_lr: float = 1e-5,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.inner_lr, self.n_inner_steps = inner_lr, n_inner_steps
        self.outer_lr, self.min_outer_lr = outer_lr, min_outer_lr
        self.msl_iterations = msl_iterations
        self.first_order_iterations = first_order_iterations
        self.cosine_iterations = cosine_iterations
        # Adam is built on the first call, on the dict that fit() passes (fit
        # copies the caller's parameters); a resumed state waits for it.
        self.optimizer: torch.optim.Adam | None = None
        self.pending: dict[str, Any] | None = None
        self.iteration = 0

    def schedule(self, iteration: int) -> dict[str, Any]:
        """The step weights, derivative order and outer learning rate at
        ``iteration``."""
        weights = None
        if self.msl_iterations is not None:
            progress = min(iteration / self.msl_iterations, 1.0)
            weights = multi_step_weights(self.n_inner_steps, progress)
        lr = self.outer_lr
        if self.cosine_iterations is not None:
            lr = cosine_lr(
                self.outer_lr, self.min_outer_lr, iteration, self.cosine_iterations
            )
        return {
            "step_weights": weights,
            "first_order": iteration < self.first_order_iterations,
            "outer_lr": lr,
        }

    def __call__(self, params, batch, fraction):
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params.values(), lr=self.outer_lr)
            if self.pending is not None:
                self.optimizer.load_state_dict(self.pending)
        s = self.schedule(self.iteration)
        per_step = query_losses_vmap(
            self.model,
            params,
            batch,
            self.loss_fn,
            self.inner_lr,
            self.n_inner_steps,
            s["first_order"],
        )
        loss = weighted(per_step, s["step_weights"])
        query = per_step[-1].item()  # what every variant is judged on
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if math.isfinite(value):  # a NaN is reported by fit before any step
            for group in self.optimizer.param_groups:
                group["lr"] = s["outer_lr"]
            self.optimizer.step()
        self.iteration += 1
        return params, {"loss": value, "query_loss": query}

    def state_dict(self):
        adam = self.optimizer.state_dict() if self.optimizer else self.pending
        return {"adam": adam, "iteration": self.iteration}

    def load_state_dict(self, state):
        if state:
            self.pending, self.iteration = state["adam"], state["iteration"]
            if self.optimizer is not None and self.pending is not None:
                self.optimizer.load_state_dict(self.pending)
