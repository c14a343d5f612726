"""Reptile (Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task runs plain SGD from theta to theta'_i, and theta moves towards the adapted
parameters: theta <- theta + outer_lr * mean_i(theta'_i - theta) (Algorithm 2, the
batched version). No query loss is differentiated and no second derivative is taken,
yet for small ``inner_lr`` the expected direction is the joint-training gradient plus
a term that raises the inner product of gradients from different minibatches of a
task, the term MAML's second-order gradient also contains (§5.1).

The direction theta - mean_i(theta'_i) is not the gradient of any loss. Nichol et al.
hand it to Adam in place of a gradient; :func:`reptile_objective` does the same
through :func:`with_gradient`, so that :class:`mamllib.outer_steps.AdamStep` and
:func:`mamllib.train.fit` train Reptile unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from mamllib.batch import Batch
from mamllib.maml import LossFn, inner_update, task_loss
from mamllib.models import Params, detach_params
from mamllib.outer_steps import Objective


def with_gradient(
    value: torch.Tensor, params: Params, gradient: Params
) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params`` is ``gradient``.

    ``value.detach() + sum_k <gradient_k, params_k - params_k.detach()>``: the sum is
    zero, its gradient is ``gradient``. This is how an update that autograd cannot
    derive (Reptile's direction, iMAML's implicit gradient) plugs into an optimiser
    that calls ``backward`` on ``objective(params, batch)``; ``value`` is what the
    history reports as the loss.
    """
    surrogate = sum(
        (gradient[k].detach() * (p - p.detach())).sum() for k, p in params.items()
    )
    return value.detach() + surrogate


def task_sgd(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    batch_size: int | None = None,
) -> Params:
    """theta'_i: ``n_inner_steps`` of plain SGD on one task's points ``(x, y)``.

    With ``batch_size``, step j uses the j-th block of ``batch_size`` consecutive
    points, wrapping around (the minibatches of Algorithm 1 and of the analysis in
    §5); without it every step sees all points. Each step starts from detached
    leaves, so memory does not grow with ``n_inner_steps``.
    """
    adapted_params = detach_params(params)
    for step in range(n_inner_steps):
        xb, yb = x, y
        if batch_size is not None:
            index = (torch.arange(batch_size) + step * batch_size) % len(x)
            xb, yb = x[index], y[index]
        adapted_params = detach_params(
            inner_update(
                model, adapted_params, xb, yb, loss_fn, inner_lr, first_order=True
            )
        )
    return adapted_params


def reptile_direction(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    use_query: bool = False,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, Params]:
    """The mean query loss after adaptation and Reptile's direction
    ``mean_i(theta - theta'_i)``, a dict like ``params`` (cf.
    :func:`mamllib.maml.meta_gradient`).

    Args:
        use_query: run SGD on support and query points together (Reptile has no
            held-out set in training: Nichol et al. adapt on all of a task's data);
            the reported loss is then no longer held out.
        batch_size: SGD on minibatches (:func:`task_sgd`); None: full batch.

    With one full-batch step the direction is ``inner_lr`` times the mean support
    gradient, the gradient of joint training; with more steps, or minibatches, the
    higher-order terms of §5 appear.
    """
    theta = {k: v.detach() for k, v in params.items()}
    direction = {k: torch.zeros_like(v) for k, v in theta.items()}
    losses = []
    for i in range(len(tasks)):
        x, y = tasks.x_support[i], tasks.y_support[i]
        if use_query:
            x = torch.cat([x, tasks.x_query[i]])
            y = torch.cat([y, tasks.y_query[i]])
        adapted_params = task_sgd(
            model, theta, x, y, loss_fn, inner_lr, n_inner_steps, batch_size
        )
        for k in direction:
            direction[k] += (theta[k] - adapted_params[k].detach()) / len(tasks)
        with torch.no_grad():
            losses.append(
                task_loss(
                    model, adapted_params, tasks.x_query[i], tasks.y_query[i], loss_fn
                )
            )
    return torch.stack(losses).mean(), direction


def reptile_direction_vmap(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    use_query: bool = False,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, Params]:
    """:func:`reptile_direction` for all tasks at once under ``torch.func.vmap``: the
    same SGD steps on the same minibatches, each task's gradient by ``torch.func.grad``
    (tested equal to the loop in ``tests/test_algorithms.py``)."""
    theta = {k: v.detach() for k, v in params.items()}
    x, y = tasks.x_support, tasks.y_support
    if use_query:
        x = torch.cat([x, tasks.x_query], 1)
        y = torch.cat([y, tasks.y_query], 1)

    def one_task(x, y, x_query, y_query):
        adapted_params = theta
        for step in range(n_inner_steps):
            xb, yb = x, y
            if batch_size is not None:
                index = (torch.arange(batch_size) + step * batch_size) % x.shape[0]
                xb, yb = x[index], y[index]
            g = grad(task_loss, argnums=1)(model, adapted_params, xb, yb, loss_fn)
            adapted_params = {
                k: adapted_params[k] - inner_lr * g[k] for k in adapted_params
            }
        query = task_loss(model, adapted_params, x_query, y_query, loss_fn)
        return query, adapted_params

    losses, adapted = vmap(one_task)(x, y, tasks.x_query, tasks.y_query)
    direction = {k: theta[k] - adapted[k].mean(0) for k in theta}
    return losses.mean().detach(), direction


def reptile_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    use_query: bool = False,
    batch_size: int | None = None,
    strategy: str = "loop",
) -> Objective:
    """Reptile as ``objective(params, tasks)`` for :class:`AdamStep`: its value is the
    mean query loss after adaptation, its gradient the direction of
    :func:`reptile_direction` (Adam then steps theta along -direction, towards the
    adapted parameters). ``strategy="vmap"``: :func:`reptile_direction_vmap`."""
    if strategy not in ("loop", "vmap"):
        raise ValueError(f"strategy must be 'loop' or 'vmap', got {strategy!r}")
    direction_of = reptile_direction_vmap if strategy == "vmap" else reptile_direction

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        loss, direction = direction_of(
            model,
            params,
            tasks,
            loss_fn,
            inner_lr,
            n_inner_steps,
            use_query,
            batch_size,
        )
        return with_gradient(loss, params, direction)

    return objective
