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


def meta_trpo_problem_reference(
    model: MLP,
    params: Params,
    pre: PGData | None,
    post: PGData,
    inner_lr: float,
    first_order: bool = False,
):
    """The surrogate's value and gradient and the KL's Hessian-vector product at
    ``params``, through the inner step, with second derivatives only (the readable
    path that :func:`meta_trpo_problem` is held to).

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


# --------------------------------------------------------------------------------------
# The same problem with every product written out (what training uses)
# --------------------------------------------------------------------------------------


def _samples(t: torch.Tensor) -> torch.Tensor:
    """``[n_tasks, n_traj, T, ...]`` -> ``[n_tasks, n_traj * T, ...]``."""
    return t.reshape(t.shape[0], -1, *t.shape[3:])


class _InnerCurvature:
    """The inner losses L_i at theta (one network for every task): their gradients
    and Hessian-vector products H_i u, from one forward and one backward pass.

    With w_t = A_t m_t / N (N valid steps) and r = a - mu, L_i = -sum_t w_t log pi,
    whose derivatives in the mean and the log std s are

        dL/dmu_t = -w_t r_t / sigma^2,      dL/ds = sum_t w_t (1 - r_t^2 / sigma^2).
    """

    def __init__(self, layers, log_std, pre: PGData, keep_curvature: bool):
        from mamllib.fast import mlp_products as mlp

        self.mlp, self.layers = mlp, layers
        mask = _samples(pre.mask)
        self.w = _samples(pre.advantages) * mask / mask.sum(1, keepdim=True)
        self.trace = mlp.forward(layers, _samples(pre.obs))
        self.inv_var = torch.exp(-2 * log_std)  # 1 / sigma^2
        self.r = _samples(pre.actions) - self.trace.output
        self.wr = self.w.unsqueeze(-1) * self.r
        self.grads, self.deltas = mlp.vjp(
            self.trace, layers, -self.wr * self.inv_var, True, keep_curvature
        )
        self.wr2 = (self.wr * self.r).sum(1)  # sum_t w_t r_t^2, [n_tasks, act_dim]
        self.grad_log_std = self.w.sum(1, keepdim=True) - self.wr2 * self.inv_var
        if keep_curvature:
            self.w_inv_var = self.w.unsqueeze(-1) * self.inv_var
        else:  # nothing later needs the pass's activations
            self.trace = self.deltas = self.r = self.wr = None

    def hvp(self, tangent, d_log_std, per_task: bool):
        """H_i u for the direction ``(tangent, d_log_std)`` (one for every task, or one
        per task): per task, or summed over the tasks."""
        n, n_samples = self.w.shape
        chunks = self.mlp.task_chunks(n, n_samples)
        parts = [self._hvp(s, tangent, d_log_std, per_task) for s in chunks]
        return _gather(parts, per_task)

    def _hvp(self, s: slice, tangent, d_log_std, per_task: bool):
        """:meth:`hvp` for the tasks at ``s``."""
        mlp = self.mlp
        trace, tangent = self.trace.tasks(s), mlp.tasks(tangent, s)
        d_log_std = d_log_std[s] if d_log_std.dim() == 2 else d_log_std
        d_mean, d_inputs = mlp.jvp(trace, self.layers, tangent)
        ds = d_log_std.unsqueeze(-2)  # [..., 1, act_dim]: the same for every step
        # The tangent of dL/dmu along (d mu, ds): w (d mu + 2 r ds) / sigma^2.
        d_cotangent = self.w_inv_var[s] * (d_mean + 2 * self.r[s] * ds)
        deltas = [None if d is None else d[s] for d in self.deltas]
        h = mlp.vjp_tangent(
            trace, self.layers, deltas, tangent, d_inputs, d_cotangent, per_task
        )
        # ... and of dL/ds: 2 / sigma^2 (sum_t w r d mu + sum_t w r^2 ds).
        wr_d_mean = (self.wr[s] * d_mean).sum(1)
        h_log_std = 2 * self.inv_var * (wr_d_mean + self.wr2[s] * d_log_std)
        return h, h_log_std if per_task else h_log_std.sum(0)


class _OuterCurvature:
    """Task i's surrogate S_i and KL on D'_i at its adapted policy theta'_i (one per
    task, or theta for every task without an inner step): the surrogates, their
    gradients and the KLs' Fisher products, from one forward pass.

    With q_t = pi / pi_old A'_t m_t / N' and r = a - mu, S_i = -sum_t q_t, so

        dS/dmu_t = -q_t r_t / sigma^2,      dS/ds = sum_t q_t (1 - r_t^2 / sigma^2).
    """

    def __init__(self, layers, log_std, post: PGData):
        from mamllib.fast import mlp_products as mlp

        self.mlp, self.layers = mlp, layers
        mask = _samples(post.mask)
        c = mask / mask.sum(1, keepdim=True)  # the KL's weights m_t / N'
        self.trace = mlp.forward(layers, _samples(post.obs))
        mean, actions = self.trace.output, _samples(post.actions)
        log_std = log_std.unsqueeze(-2)  # [..., 1, act_dim]: the same for every step
        logp = gaussian_log_prob(actions, mean, log_std)
        logp_old = gaussian_log_prob(
            actions, _samples(post.old_mean), post.old_log_std.unsqueeze(-2)
        )
        q = torch.exp(logp - logp_old) * _samples(post.advantages) * c
        self.surrogates = -q.sum(1)
        inv_var = torch.exp(-2 * log_std)
        qr = q.unsqueeze(-1) * (actions - mean)
        self.grad_cotangent = -qr * inv_var
        self.grad_log_std = q.sum(1, keepdim=True) - (qr * (actions - mean)).sum(
            1
        ) * inv_var.squeeze(-2)
        self.c_inv_var = c.unsqueeze(-1) * inv_var

    def gradient(self, per_task: bool):
        """grad S_i w.r.t. theta'_i: per task, or summed over the tasks."""
        n, n_samples, _ = self.c_inv_var.shape
        parts = []
        for s in self.mlp.task_chunks(n, n_samples):
            grads, _ = self.mlp.vjp(
                self.trace.tasks(s),
                self.mlp.tasks(self.layers, s),
                self.grad_cotangent[s],
                per_task,
            )
            log_std = self.grad_log_std[s]
            parts.append((grads, log_std if per_task else log_std.sum(0)))
        return _gather(parts, per_task)

    def fisher(self, tangent, d_log_std, per_task: bool):
        """F_i u for the direction ``(tangent, d_log_std)`` (one for every task, or
        one per task): per task, or summed over the tasks.

        The KL's Hessian w.r.t. the mean is diag(1/sigma^2), exactly; w.r.t. the log
        std it is 2 (sigma_old^2 + (mu - mu_old)^2) / sigma^2 per dimension, 2 where
        old and new coincide, as are the cross terms (0 there) and the term with the
        network's second derivatives (the KL's gradient in mu, 0 there).
        """
        n, n_samples, _ = self.c_inv_var.shape
        parts = []
        for s in self.mlp.task_chunks(n, n_samples):
            trace, layers = self.trace.tasks(s), self.mlp.tasks(self.layers, s)
            d_mean, _ = self.mlp.jvp(trace, layers, self.mlp.tasks(tangent, s))
            f, _ = self.mlp.vjp(trace, layers, self.c_inv_var[s] * d_mean, per_task)
            parts.append((f, None))
        f, _ = _gather(parts, per_task)
        if per_task:
            return f, (2 * d_log_std).expand(n, -1)
        return f, 2 * (n * d_log_std if d_log_std.dim() == 1 else d_log_std.sum(0))


def _gather(parts, per_task: bool):
    """Chunks' ``(layers, log_std)`` results: concatenated along the task axis, or
    summed (results already summed over each chunk's tasks)."""
    join = (lambda xs: torch.cat(xs)) if per_task else (lambda xs: sum(xs[1:], xs[0]))
    layers = [
        tuple(join([p[0][i][j] for p in parts]) for j in range(2))
        for i in range(len(parts[0][0]))
    ]
    log_std = None if parts[0][1] is None else join([p[1] for p in parts])
    return layers, log_std


def _axpy(x, y, alpha: float):
    """``x + alpha y`` for two lists of ``(weight, bias)`` (broadcasting a shared
    one against a per-task one)."""
    return [(a + alpha * c, b + alpha * d) for (a, b), (c, d) in zip(x, y)]


def meta_trpo_problem(
    model: MLP,
    params: Params,
    pre: PGData | None,
    post: PGData,
    inner_lr: float,
    first_order: bool = False,
):
    """:func:`meta_trpo_problem_reference`'s ``(loss, gradient, hvp)`` without double
    backward: what training uses.

    The same identities, each product written out (:mod:`mamllib.fast.mlp_products`
    for the mean network, the Gaussian's derivatives by hand):

    * F_i u = J_mu^T diag(1/sigma^2) J_mu u / N' in the mean network's weights and
      2 u in the log std: the KL's Hessian where the old policy is the adapted one
      (the Fisher matrix; TRPO asks for it there), one forward-mode product and one
      backward pass instead of a double backward through the KL's gradient;
    * H_i u, the inner loss's Hessian-vector product, by the R-operator: a tangent
      pass and the backward pass's tangent on the activations and cotangents kept
      from the inner step, instead of a backward through its saved backward graph;
    * theta is one network for every task, so the first J_i v runs as one matrix
      product over all tasks' samples, and the last J_i with the mean over the tasks
      as sums over all samples: no per-task copies of theta.

    ``tests/test_trpo_speed_paths.py`` holds it to the reference (float64).
    """
    from mamllib.fast.mlp_products import linear_layer_names
    from mamllib.rl.trpo import flatten, unflatten

    n = len(post)
    base = {k: v.detach() for k, v in params.items()}
    names = linear_layer_names(model)
    second_order = pre is not None and not first_order

    def split(d: Params):
        return [(d[w], d[b]) for w, b in names], d["log_std"]

    def joined(layers, log_std) -> torch.Tensor:
        named = {"log_std": log_std}
        for (w, b), (weight, bias) in zip(names, layers):
            named[w], named[b] = weight, bias
        return flatten(named[k] for k in base)

    with torch.no_grad():
        layers, log_std = split(base)
        inner = (
            None if pre is None else _InnerCurvature(layers, log_std, pre, second_order)
        )
        if inner is None:
            adapted, adapted_log_std = layers, log_std
        else:
            adapted = _axpy(layers, inner.grads, -inner_lr)
            adapted_log_std = log_std - inner_lr * inner.grad_log_std
        outer = _OuterCurvature(adapted, adapted_log_std, post)
        loss = outer.surrogates.mean().item()
        g, g_log_std = outer.gradient(per_task=second_order)
        if second_order:  # (1/n) sum_i (g_i - alpha H_i g_i)
            h, h_log_std = inner.hvp(g, g_log_std, per_task=False)
            g = _axpy([(w.sum(0), b.sum(0)) for w, b in g], h, -inner_lr)
            g_log_std = g_log_std.sum(0) - inner_lr * h_log_std
        gradient = joined(g, g_log_std) / n

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            v, v_log_std = split(unflatten(vector, base))
            if not second_order:
                return joined(*outer.fisher(v, v_log_std, per_task=False)) / n
            h, h_log_std = inner.hvp(v, v_log_std, per_task=True)  # J_i v, per task
            u, u_log_std = _axpy(v, h, -inner_lr), v_log_std - inner_lr * h_log_std
            y, y_log_std = outer.fisher(u, u_log_std, per_task=True)
            h, h_log_std = inner.hvp(y, y_log_std, per_task=False)  # sum_i H_i y_i
            out = _axpy([(w.sum(0), b.sum(0)) for w, b in y], h, -inner_lr)
            return joined(out, y_log_std.sum(0) - inner_lr * h_log_std) / n

    return loss, gradient, hvp
