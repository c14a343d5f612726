"""TRPO's machinery: conjugate gradient, KL Hessian-vector products, the line search.

As rllab's ``ConjugateGradientOptimizer`` (which cbfinn/maml_rl's MAML-TRPO uses): the
search direction solves ``(H + damping I) x = g`` by 10 conjugate-gradient iterations,
where H is the Hessian of the mean KL; the step is scaled so that the quadratic model
of the KL equals the bound delta (``max_kl``, 0.01), then shrunk by 0.8 up to 15 times
until the surrogate loss decreases and the KL is within the bound; if no step passes,
the parameters stay as they were. The step's scale needs ``x^T (H + damping I) x``,
which rllab computes with one more Hessian-vector product; :func:`trpo_step` reads it
off conjugate gradient's residual instead (``product_from_cg=False``: rllab's way).

:func:`trpo_step` takes the surrogate's gradient and a Hessian-vector product of the
KL from its caller. :func:`direct_problem` makes them by plain double backward, which
through MAML's inner step means third derivatives of the inner loss (the paper used
finite differences of gradients to avoid those, App. A.2);
``mamllib.rl.metarl.meta_trpo_problem`` computes the same product exactly with second
derivatives only. Only torch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mamllib.models import Params

Closure = Callable[[Params], tuple[torch.Tensor, torch.Tensor]]


def flatten(tensors) -> torch.Tensor:
    """Concatenate tensors into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """Split ``vector`` into a dict shaped like ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    n_iters: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive definite A given only
    ``matvec(v) = A v`` (rllab ``krylov.cg``: start from 0, stop early when the squared
    residual falls below ``residual_tol``)."""
    return conjugate_gradient_and_product(matvec, b, n_iters, residual_tol)[0]


def conjugate_gradient_and_product(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    n_iters: int = 10,
    residual_tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conjugate_gradient`'s ``x`` and also ``A x``, without another product.

    The residual is updated as ``r = b - sum_k step_k A p_k`` and ``x = sum_k step_k
    p_k``, so ``A x = b - r`` (up to rounding): TRPO's step length needs ``x^T A x``,
    which would otherwise cost one more Hessian-vector product.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(n_iters):
        ap = matvec(p)
        step = rr / (p @ ap)
        x = x + step * p
        r = r - step * ap
        rr_new = r @ r
        if rr_new < residual_tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, b - r


@dataclass
class TRPOStats:
    """What one TRPO step did."""

    loss_before: float
    loss_after: float
    kl_after: float
    step_fraction: float  # 0.8^k of the full step that was taken; 0 if none was
    accepted: bool


def trpo_step(
    params: Params,
    loss: float,
    gradient: torch.Tensor,
    hvp: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Closure,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    product_from_cg: bool = True,
) -> tuple[Params, TRPOStats]:
    """One TRPO update of ``params``; returns new leaves (or copies of the old ones).

    Args:
        loss, gradient: the surrogate loss (to minimise) at ``params`` and its
            gradient, flat.
        hvp: ``hvp(v)``: the mean KL's Hessian times a flat vector, at ``params``.
        evaluate: ``evaluate(params) -> (surrogate loss, mean KL)`` for the line
            search (no graph needed).
        max_kl: the trust region delta (rllab ``step_size``).
        damping: added to the KL Hessian, ``H + damping I`` (rllab ``reg_coeff``).
        product_from_cg: take the direction's ``(H + damping I) s`` for the step
            length from conjugate gradient's residual
            (:func:`conjugate_gradient_and_product`); False asks ``hvp`` once more,
            as rllab does (the same step up to rounding).
    """

    def damped(v: torch.Tensor) -> torch.Tensor:
        return hvp(v) + damping * v

    direction, product = conjugate_gradient_and_product(damped, gradient, cg_iters)
    if not product_from_cg:
        product = damped(direction)
    shs = direction @ product
    scale = torch.sqrt(2 * max_kl / (shs + 1e-8))
    full_step = (scale * direction).detach()
    old = flatten(params.values()).detach()
    fraction = 1.0
    for _ in range(max_backtracks):
        candidate = {
            k: v.detach().clone().requires_grad_(True)
            for k, v in unflatten(old - fraction * full_step, params).items()
        }
        new_loss, new_kl = (x.item() for x in evaluate(candidate))
        if new_loss < loss and new_kl <= max_kl:
            return candidate, TRPOStats(loss, new_loss, new_kl, fraction, True)
        fraction *= backtrack_ratio
    kept = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    return kept, TRPOStats(loss, loss, 0.0, 0.0, False)


def direct_problem(params: Params, objective: Closure):
    """``(loss, gradient, hvp)`` for :func:`trpo_step` by plain autograd: the KL's
    Hessian-vector product by double backward of ``objective(params)[1]``.

    Through MAML's inner step these are third derivatives; the readable reference
    that ``mamllib.rl.metarl.meta_trpo_problem`` is tested against.
    """
    leaves = list(params.values())
    loss, kl = objective(params)
    gradient = flatten(torch.autograd.grad(loss, leaves, retain_graph=True))
    grad_kl = flatten(torch.autograd.grad(kl, leaves, create_graph=True))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return flatten(torch.autograd.grad(grad_kl @ v, leaves, retain_graph=True))

    return loss.item(), gradient.detach(), hvp
