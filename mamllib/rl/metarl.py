"""MAML for policies: the policy-gradient inner step and the meta-surrogate (App. A.2).

For each task i, trajectories D_i sampled with theta give the inner step
(vanilla policy gradient, REINFORCE with a baseline)

    theta'_i = theta - alpha grad L_i(theta),
    L_i(theta) = -(1/N) sum_t log pi_theta(a_t | s_t) A_t        (N valid steps),

and trajectories D'_i sampled with theta'_i give the outer objective that TRPO
improves: the importance-weighted surrogate and the KL to the policies that sampled
D'_i, both as functions of theta *through* the inner step,

    S(theta)  = -(1/n) sum_i (1/N') sum_t pi_theta'_i(a|s) / pi_old(a|s) A'_t,
    KL(theta) =  (1/n) sum_i (1/N') sum_t KL(pi_old(.|s) || pi_theta'_i(.|s)).

Second order keeps the inner gradient's graph so grad S includes the Hessian term;
first order treats the inner gradient as a constant (the "first-order" option).

Two paths compute the same pair: :func:`meta_objective_loop` (one task at a time,
``torch.autograd``; the readable one) and :func:`meta_objective_vmap` (``torch.func``
grad inside ``vmap`` over the tasks; the fast one). ``tests/test_rl.py`` holds the fast
path to the loop and the loop's gradient to finite differences. Only torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import vmap

from mamllib.maml import inner_step, sgd_step
from mamllib.models import MLP, Params
from mamllib.rl.policy import gaussian_kl, gaussian_log_prob, policy_mean


@dataclass
class PGData:
    """One meta-batch's processed trajectories, task axis first (nothing here needs a
    gradient). ``obs`` ``[n_tasks, n_traj, T, obs_dim]``, ``actions``
    ``[..., T, act_dim]``, ``advantages`` and ``mask`` ``[n_tasks, n_traj, T]``.

    For the post-update data D' also the sampling policies' ``old_mean``
    ``[..., T, act_dim]`` and ``old_log_std`` ``[n_tasks, act_dim]`` (their log-prob
    is recomputed from these).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    old_mean: torch.Tensor | None = None
    old_log_std: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.obs.shape[0]

    def task(self, i: int) -> PGData:
        """Task ``i``'s tensors, without the task axis."""
        return PGData(**{k: None if v is None else v[i] for k, v in vars(self).items()})


def pg_loss(
    model: MLP,
    params: Params,
    obs: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The REINFORCE loss of one task: -mean over valid steps of log pi(a|s) A.

    Its gradient is the policy-gradient estimate; the advantages are data (fixed).
    """
    logp = gaussian_log_prob(
        actions, policy_mean(model, params, obs), params["log_std"]
    )
    return -(logp * advantages * mask).sum() / mask.sum()


def inner_update(
    model: MLP,
    params: Params,
    data: PGData,
    inner_lr: float,
    first_order: bool = False,
) -> Params:
    """One policy-gradient step on one task's D_i: theta - alpha grad L_i(theta),
    through :func:`mamllib.maml.inner_step` (second order keeps the inner gradient's
    graph, so the outer TRPO gradient flows through it, Hessian term included). Runs
    under ``vmap`` too; outside it ``params`` must require grad.
    """
    return inner_step(
        lambda p: pg_loss(model, p, data.obs, data.actions, data.advantages, data.mask),
        params,
        inner_lr,
        first_order,
    )


def surrogate_and_kl(
    model: MLP, params: Params, post: PGData
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRPO's surrogate loss (to minimise) and mean KL(old || params) on one task's D'.

    The importance ratio is exp(log pi - log pi_old); at params = old it is 1 and its
    gradient is the ordinary policy gradient.
    """
    mean = policy_mean(model, params, post.obs)
    logp = gaussian_log_prob(post.actions, mean, params["log_std"])
    logp_old = gaussian_log_prob(post.actions, post.old_mean, post.old_log_std)
    n = post.mask.sum()
    surrogate = -(torch.exp(logp - logp_old) * post.advantages * post.mask).sum() / n
    kl = gaussian_kl(post.old_mean, post.old_log_std, mean, params["log_std"])
    return surrogate, (kl * post.mask).sum() / n


# --------------------------------------------------------------------------------------
# The readable path: one task at a time
# --------------------------------------------------------------------------------------


def meta_objective_loop(
    model: MLP,
    params: Params,
    pre: PGData,
    post: PGData,
    inner_lr: float,
    first_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean surrogate and mean KL over the meta-batch, through the inner step.

    With ``inner_lr = 0`` (or ``pre=None``) this is plain TRPO's pair, used by the
    pretrained and oracle baselines.
    """
    surrogates, kls = [], []
    for i in range(len(post)):
        adapted_params = (
            params
            if pre is None
            else inner_update(model, params, pre.task(i), inner_lr, first_order)
        )
        surrogate, kl = surrogate_and_kl(model, adapted_params, post.task(i))
        surrogates.append(surrogate)
        kls.append(kl)
    return torch.stack(surrogates).mean(), torch.stack(kls).mean()


# --------------------------------------------------------------------------------------
# The fast path: torch.func.grad for one task, vmap over the meta-batch
# --------------------------------------------------------------------------------------


def meta_objective_vmap(
    model: MLP,
    params: Params,
    pre: PGData,
    post: PGData,
    inner_lr: float,
    first_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`meta_objective_loop` with the tasks batched by ``torch.func.vmap``."""

    def one_task(pre_fields, post_fields):
        adapted_params = (
            params
            if pre_fields is None
            else inner_update(model, params, PGData(*pre_fields), inner_lr, first_order)
        )
        return surrogate_and_kl(model, adapted_params, PGData(*post_fields))

    if pre is None:
        surrogates, kls = vmap(lambda post_f: one_task(None, post_f))(_fields(post, 6))
    else:
        surrogates, kls = vmap(one_task)(_fields(pre, 4), _fields(post, 6))
    return surrogates.mean(), kls.mean()


def _fields(data: PGData | None, n: int) -> tuple | None:
    """The first ``n`` tensors of ``data`` as a tuple (vmap takes tensors)."""
    return None if data is None else tuple(vars(data).values())[:n]


META_OBJECTIVES = {"loop": meta_objective_loop, "vmap": meta_objective_vmap}


def adapted_policies(
    model: MLP,
    params: Params,
    pre: PGData,
    inner_lr: float,
) -> Params:
    """Every task's adapted policy, detached, stacked on a leading task axis (for
    sampling D' and for evaluation).

    ``params`` is one policy for every task, or already one per task (a leading task
    axis, as after an earlier adaptation step).
    """
    params = {k: v.detach() for k, v in params.items()}
    per_task = params["log_std"].dim() == 2

    def one_task(p, pre_fields):
        return inner_update(model, p, PGData(*pre_fields), inner_lr, True)

    adapted = vmap(one_task, in_dims=(0 if per_task else None, 0))(
        params, _fields(pre, 4)
    )
    return {k: v.detach() for k, v in adapted.items()}


# --------------------------------------------------------------------------------------
# TRPO through the inner step without third derivatives
# --------------------------------------------------------------------------------------


def _per_task_pg_loss(model: MLP, params: Params, data: PGData) -> torch.Tensor:
    """Sum over tasks of each task's :func:`pg_loss` at its own ``params[i]``."""

    def one(p, obs, actions, adv, mask):
        return pg_loss(model, p, obs, actions, adv, mask)

    return vmap(one)(params, *_fields(data, 4)).sum()


def _per_task_surrogate_and_kl(
    model: MLP, params: Params, post: PGData
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over tasks of each task's surrogate and KL at its own ``params[i]``."""

    def one(p, *fields):
        return surrogate_and_kl(model, p, PGData(*fields))

    surrogates, kls = vmap(one)(params, *_fields(post, 6))
    return surrogates.sum(), kls.sum()


def meta_trpo_problem(
    model: MLP,
    params: Params,
    pre: PGData | None,
    post: PGData,
    inner_lr: float,
    first_order: bool = False,
):
    """The surrogate's value and gradient and the KL's Hessian-vector product at
    ``params``, through the inner step, with second derivatives only.

    With theta'_i = theta - alpha grad L_i(theta), the chain rule gives
    J_i = d theta'_i / d theta = I - alpha H_i (H_i the Hessian of the inner loss L_i;
    J_i = I at first order or without an inner step), and

        grad S  = (1/n) sum_i J_i^T grad S_i(theta'_i),
        Hess KL = (1/n) sum_i J_i^T F_i J_i       at the current theta,

    where F_i is the Hessian of task i's KL w.r.t. theta'_i. The second identity is
    exact here because the KL's gradient w.r.t. theta'_i is zero where the old and new
    policies coincide, so the term with the second derivative of theta'_i drops out.
    Each product H_i v is a double-backward; the per-task products are batched by
    giving every task its own copy of theta (a ``[n_tasks, ...]`` leaf) under vmap.

    Returns:
        ``(loss, gradient, hvp)``: the mean surrogate (a float), its gradient w.r.t.
        ``params`` as a flat vector, and ``hvp(v)`` for flat ``v``.
    """
    from mamllib.rl.trpo import flatten, unflatten

    n = len(post)
    names = list(params)
    base = {k: v.detach() for k, v in params.items()}
    copies = {
        k: v.expand(n, *v.shape).clone().requires_grad_(True) for k, v in base.items()
    }
    if pre is not None:
        inner_grads = torch.autograd.grad(
            _per_task_pg_loss(model, copies, pre),
            [copies[k] for k in names],
            create_graph=not first_order,
        )
        # The inner step with its gradient kept apart: jvp_inner reuses it.
        stepped = sgd_step(
            copies, {k: g.detach() for k, g in zip(names, inner_grads)}, inner_lr
        )
        adapted = {k: v.detach().requires_grad_(True) for k, v in stepped.items()}
    else:
        inner_grads, adapted = None, copies
    surrogate, kl = _per_task_surrogate_and_kl(model, adapted, post)
    grad_s = torch.autograd.grad(
        surrogate, [adapted[k] for k in names], retain_graph=True
    )
    grad_kl = torch.autograd.grad(kl, [adapted[k] for k in names], create_graph=True)
    second_order = pre is not None and not first_order

    def jvp_inner(vs):  # J_i v_i = v_i - alpha H_i v_i, per task
        if not second_order:
            return vs
        hv = torch.autograd.grad(
            sum((g * v).sum() for g, v in zip(inner_grads, vs)),
            [copies[k] for k in names],
            retain_graph=True,
        )
        return [v - inner_lr * h for v, h in zip(vs, hv)]

    def fisher(vs):  # F_i u_i, per task
        return torch.autograd.grad(
            sum((g * v).sum() for g, v in zip(grad_kl, vs)),
            [adapted[k] for k in names],
            retain_graph=True,
        )

    def per_task(vector):
        return [v.expand(n, *v.shape) for v in unflatten(vector, base).values()]

    def mean_over_tasks(vs):
        return flatten([v.sum(0) / n for v in vs])

    gradient = mean_over_tasks(jvp_inner(list(grad_s)))

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        return mean_over_tasks(jvp_inner(fisher(jvp_inner(per_task(vector)))))

    return surrogate.item() / n, gradient.detach(), hvp
