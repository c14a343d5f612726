"""iMAML (Rajeswaran, Finn, Kakade, Levine, NeurIPS 2019, "Meta-Learning with
Implicit Gradients").

The inner problem is proximal: phi*(theta) = argmin_phi L_support(phi) +
(lam/2) ||phi - theta||^2. At its minimum the gradient vanishes,
grad L_support(phi*) + lam (phi* - theta) = 0, and differentiating that identity
gives the Jacobian d phi*/d theta = (I + H/lam)^-1, H the support loss's Hessian at
phi* (Lemma 1). So the meta-gradient of L_query(phi*(theta)) is

    g = (I + H/lam)^-1 grad L_query(phi*),

found by conjugate gradient with Hessian-vector products only (Algorithm 2). How phi*
was reached does not enter: the inner loop is run without a graph, any solver will
do, and memory does not grow with the number of inner steps. The price: phi* must be
(close to) the minimum, and only then is g exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, grad_and_value, jvp, vmap

from mamllib.algorithms.reptile import with_gradient
from mamllib.batch import Batch
from mamllib.maml import LossFn, inner_step, task_loss
from mamllib.models import Params, detach_params
from mamllib.outer_steps import Objective
from mamllib.rl.trpo import conjugate_gradient, flatten, unflatten

STRATEGIES = ("loop", "vmap")

# solver(loss_of_params, theta) -> phi approximately minimising loss_of_params
Solver = Callable[[Callable[[Params], torch.Tensor], Params], Params]


def proximal_loss_of(
    model: nn.Module,
    theta: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    lam: float,
) -> Callable[[Params], torch.Tensor]:
    """phi -> L_support(phi) + (lam/2) ||phi - theta||^2, the inner problem's loss."""

    def proximal_loss(phi: Params) -> torch.Tensor:
        distance = sum(((phi[k] - theta[k]) ** 2).sum() for k in theta)
        return task_loss(model, phi, x_support, y_support, loss_fn) + lam / 2 * distance

    return proximal_loss


def descend(
    loss_of_params: Callable[[Params], torch.Tensor],
    params: Params,
    step: float | torch.Tensor,
    n_steps: int,
) -> Params:
    """``n_steps`` of gradient descent with ``torch.func.grad`` (runs under vmap)."""
    for _ in range(n_steps):
        g = grad(loss_of_params)(params)
        params = {k: params[k] - step * g[k] for k in params}
    return params


def proximal_adapt(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    lam: float,
    solver: Solver | None = None,
) -> Params:
    """phi* of the proximal problem for one task, as detached leaves
    (``requires_grad`` for the Hessian-vector products that follow).

    By default ``n_inner_steps`` of gradient descent from theta with step
    ``inner_lr``; ``solver`` replaces them (e.g. a Newton step, or conjugate gradient
    on the proximal problem as Rajeswaran et al. do).
    """
    theta = {k: v.detach() for k, v in params.items()}
    proximal_loss = proximal_loss_of(model, theta, x_support, y_support, loss_fn, lam)
    if solver is not None:
        return detach_params(solver(proximal_loss, detach_params(theta)))
    adapted_params = detach_params(theta)
    for _ in range(n_inner_steps):
        adapted_params = detach_params(
            inner_step(proximal_loss, adapted_params, inner_lr, first_order=True)
        )
    return adapted_params


def implicit_task_gradient(
    model: nn.Module,
    adapted_params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    loss_fn: LossFn,
    lam: float,
    cg_iters: int = 5,
    cg_tol: float = 1e-10,
) -> tuple[torch.Tensor, Params]:
    """One task's query loss at phi* and its implicit meta-gradient
    ``(I + H/lam)^-1 grad L_query(phi*)`` (Lemma 1).

    ``cg_iters`` of :func:`mamllib.rl.trpo.conjugate_gradient` (stopping early once
    the squared residual is below ``cg_tol``); the matrix is symmetric positive
    definite where ``H > -lam I``, e.g. for any convex support loss. ``H v`` is the
    gradient of ``grad L_support . v`` (double backward at phi*).
    """
    leaves = tuple(adapted_params.values())
    query_loss = task_loss(model, adapted_params, x_query, y_query, loss_fn)
    query_grad = flatten(torch.autograd.grad(query_loss, leaves))
    support_grad = flatten(
        torch.autograd.grad(
            task_loss(model, adapted_params, x_support, y_support, loss_fn),
            leaves,
            create_graph=True,
        )
    )

    def matvec(v: torch.Tensor) -> torch.Tensor:
        hvp = torch.autograd.grad(support_grad @ v, leaves, retain_graph=True)
        return v + flatten(hvp) / lam

    gradient = conjugate_gradient(matvec, query_grad, cg_iters, cg_tol)
    return query_loss.detach(), unflatten(gradient.detach(), adapted_params)


def implicit_meta_gradient(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    lam: float,
    cg_iters: int = 5,
    cg_tol: float = 1e-10,
    solver: Solver | None = None,
) -> tuple[torch.Tensor, Params]:
    """The mean query loss at phi*_i and the mean implicit meta-gradient over the
    tasks, a dict like ``params`` (cf. :func:`mamllib.maml.meta_gradient`)."""
    losses, total = [], {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(len(tasks)):
        adapted_params = proximal_adapt(
            model,
            params,
            tasks.x_support[i],
            tasks.y_support[i],
            loss_fn,
            inner_lr,
            n_inner_steps,
            lam,
            solver,
        )
        loss, gradient = implicit_task_gradient(
            model,
            adapted_params,
            tasks.x_support[i],
            tasks.y_support[i],
            tasks.x_query[i],
            tasks.y_query[i],
            loss_fn,
            lam,
            cg_iters,
            cg_tol,
        )
        losses.append(loss)
        for k in total:
            total[k] += gradient[k] / len(tasks)
    return torch.stack(losses).mean(), total


def masked_conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    n_iters: int,
    residual_tol: float,
) -> torch.Tensor:
    """:func:`mamllib.rl.trpo.conjugate_gradient` without a data-dependent branch, so
    that it runs under vmap: once the squared residual is below ``residual_tol`` the
    iterate stops moving while the other tasks of the batch go on; until then the
    iterates are the loop's."""
    x, r, p = torch.zeros_like(b), b, b
    rr = r @ r
    for _ in range(n_iters):
        ap = matvec(p)
        active = (rr >= residual_tol) & (rr > 0)
        step = torch.where(active, rr / torch.where(active, p @ ap, 1.0), 0.0)
        x, r = x + step * p, r - step * ap
        rr_new = r @ r
        p = torch.where(active, r + rr_new / torch.where(active, rr, 1.0) * p, p)
        rr = torch.where(active, rr_new, rr)
    return x


def curvature_step_solver(n_steps: int, n_power_iters: int = 10) -> Solver:
    """A :data:`Solver`: ``n_steps`` of gradient descent on the proximal loss with the
    step 1/L, L its largest Hessian eigenvalue (h_max + lam) at theta, estimated by
    ``n_power_iters`` of power iteration on Hessian-vector products.

    A fixed step alpha is stable only while alpha < 2 / (h_max + lam), and the
    implicit meta-gradient never sees the solver, so meta-training can grow h_max
    until fixed-step descent diverges (chapter 12). A step from each task's own
    curvature stays stable. Written with torch.func only, so it runs per task in the
    loop and under vmap alike.
    """

    def solve(
        loss_of_params: Callable[[Params], torch.Tensor], theta: Params
    ) -> Params:
        v = flatten(grad(loss_of_params)(theta).values())
        top = torch.zeros((), dtype=v.dtype)
        for _ in range(n_power_iters):
            v = v / (v.norm() + 1e-30)
            tangent = (unflatten(v, theta),)
            hv = flatten(jvp(grad(loss_of_params), (theta,), tangent)[1].values())
            top, v = v @ hv, hv
        return descend(loss_of_params, theta, 1.0 / top.abs(), n_steps)

    return solve


def implicit_meta_gradient_vmap(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    lam: float,
    cg_iters: int = 5,
    cg_tol: float = 1e-10,
    solver: Solver | None = None,
) -> tuple[torch.Tensor, Params]:
    """:func:`implicit_meta_gradient` for all tasks at once under ``torch.func.vmap``.

    The same inner problem and solver (gradient descent, or a ``solver`` written with
    torch.func) and the same conjugate gradient, its early stop a mask
    (:func:`masked_conjugate_gradient`). ``H v`` is
    forward-over-reverse (``jvp`` of ``grad``), equal to the loop's double backward.
    The two paths agree to rounding (``tests/test_algorithms.py``).
    """
    theta = {k: v.detach() for k, v in params.items()}

    def one_task(xs, ys, xq, yq):
        def support_loss(phi):
            return task_loss(model, phi, xs, ys, loss_fn)

        proximal_loss = proximal_loss_of(model, theta, xs, ys, loss_fn, lam)
        if solver is not None:
            phi = solver(proximal_loss, theta)
        else:
            phi = descend(proximal_loss, theta, inner_lr, n_inner_steps)
        query_grad, query_loss = grad_and_value(
            lambda p: task_loss(model, p, xq, yq, loss_fn)
        )(phi)

        def matvec(v):
            hv = jvp(grad(support_loss), (phi,), (unflatten(v, theta),))[1]
            return v + flatten(hv.values()) / lam

        b = flatten(query_grad.values())
        return query_loss, masked_conjugate_gradient(matvec, b, cg_iters, cg_tol)

    losses, gradients = vmap(one_task)(
        tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query
    )
    return losses.mean(), unflatten(gradients.mean(0), theta)


def imaml_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    lam: float,
    cg_iters: int = 5,
    solver: Solver | None = None,
    strategy: str = "loop",
) -> Objective:
    """iMAML as ``objective(params, tasks)`` for :class:`mamllib.outer_steps.AdamStep`:
    the mean query loss at phi*, whose gradient is set to the implicit meta-gradient
    (:func:`mamllib.algorithms.reptile.with_gradient`); autograd never sees the inner
    loop. ``strategy="vmap"``: :func:`implicit_meta_gradient_vmap` (a ``solver`` must
    then be written with torch.func)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        if strategy == "vmap":
            loss, gradient = implicit_meta_gradient_vmap(
                model,
                params,
                tasks,
                loss_fn,
                inner_lr,
                n_inner_steps,
                lam,
                cg_iters,
                solver=solver,
            )
        else:
            loss, gradient = implicit_meta_gradient(
                model,
                params,
                tasks,
                loss_fn,
                inner_lr,
                n_inner_steps,
                lam,
                cg_iters,
                solver=solver,
            )
        return with_gradient(loss, params, gradient)

    return objective
