"""MAML's math: the inner loop, the meta-objective and the meta-gradient.

Ways to compute the same meta-objective over a meta-batch:

* :func:`meta_loss_loop` -- a readable per-task Python loop using
  ``torch.autograd.grad``. Second order keeps the inner gradient's graph
  (``create_graph=True``) so the outer gradient flows through it; first order does not.
* :func:`meta_loss_vmap` -- the fast path: one task written with ``torch.func.grad``
  and batched over the meta-batch with ``torch.func.vmap``.
* :func:`meta_loss_batched` -- for models that run a whole meta-batch at once
  (``forward_tasks``, e.g. the conv-4): ordinary autograd, no vmap;
  :func:`mamllib.fast.threads.meta_loss_threads` shares its tasks among CPU threads.

Tests hold the fast paths to the loop and all to finite differences
(``tests/test_maml.py``, ``tests/test_conv4.py``). Only torch is imported here: no
files, presets or printing.

One inner step (``inner_update``) first appears in notebook 01; the meta-gradient is
written out by hand in notebook 04 and checked against both paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, vmap

from mamllib.models import Params, forward
from mamllib.tasks import TaskBatch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the sinusoid loss (paper §5.1)."""
    return ((prediction - target) ** 2).mean()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy, the classification loss (paper §5.2).

    Written as ``log_softmax`` and ``gather`` so that it batches under vmap and
    differentiates twice. cbfinn/maml differs in two details: it smooths the one-hot
    labels (``0.9 * onehot + 0.01``) and divides the mean by K (the shots), which
    scales the inner step by 1/K in K-shot training.

    Args:
        logits: ``[..., n_way]``.
        labels: class indices ``[...]`` (integer).

    Returns:
        A scalar: the mean over all leading axes.
    """
    log_probs = logits.log_softmax(-1)
    return -log_probs.gather(-1, labels.unsqueeze(-1)).mean()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose largest logit is the label (a float scalar)."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


def task_loss(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """Loss of ``params`` on one set of points ``(x, y)``."""
    return loss_fn(forward(model, params, x), y)


# --------------------------------------------------------------------------------------
# The readable path: one task at a time, torch.autograd
# --------------------------------------------------------------------------------------


def sgd_step(params: Params, grads: Params, inner_lr: float) -> Params:
    """theta - alpha g for every parameter: eq. 1 given the gradient ``grads``.

    A missing gradient (``None``: the parameter does not reach the loss) leaves the
    parameter as it is.
    """
    return {
        k: p if grads.get(k) is None else p - inner_lr * grads[k]
        for k, p in params.items()
    }


def inner_step(
    loss_of_params: Callable[[Params], torch.Tensor],
    params: Params,
    inner_lr: float,
    first_order: bool = False,
) -> Params:
    """One inner SGD step on any loss of the parameters: theta' = theta - alpha grad
    L(theta) (eq. 1). Every domain (regression, images, policies) and the evaluation
    adapt through it.

    Second order keeps the inner gradient's graph, so that a meta-gradient taken
    later differentiates through the step (this is where the Hessian term comes
    from); first order treats the inner gradient as a constant. Under a
    ``torch.func`` transform (``vmap``) the gradient is ``torch.func.grad``, whose
    result ordinary autograd still differentiates; elsewhere it is
    ``torch.autograd.grad`` with ``create_graph=not first_order`` (``params`` must
    require grad).
    """
    if torch._C._are_functorch_transforms_active():
        grads = grad(loss_of_params)(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
    else:
        values = torch.autograd.grad(
            loss_of_params(params),
            tuple(params.values()),
            create_graph=not first_order,
            allow_unused=True,
        )
        grads = dict(zip(params, values))
    return sgd_step(params, grads, inner_lr)


def inner_update(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    first_order: bool = False,
) -> Params:
    """:func:`inner_step` on the support loss of ``model``: eq. 1 for one task."""
    return inner_step(
        lambda p: task_loss(model, p, x_support, y_support, loss_fn),
        params,
        inner_lr,
        first_order,
    )


def adapt(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> Params:
    """``n_inner_steps`` of SGD with step size ``inner_lr``; returns ``adapted_params``.

    Runs under ``vmap`` as well (see :func:`inner_step`). Outside it, ``params`` must
    require grad (the inner gradient is taken w.r.t. them).
    """
    adapted_params = params
    for _ in range(n_inner_steps):
        adapted_params = inner_update(
            model, adapted_params, x_support, y_support, loss_fn, inner_lr, first_order
        )
    return adapted_params


def meta_loss_loop(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """Mean query loss after adaptation over a meta-batch, one task at a time.

    Returns a scalar whose gradient w.r.t. ``params`` is the MAML meta-gradient
    (Algorithm 1, line 8; Algorithm 2, line 10; before the ``outer_lr`` step).
    """
    return mean_query_loss(
        model,
        tasks,
        loss_fn,
        lambda x_support, y_support: adapt(
            model,
            params,
            x_support,
            y_support,
            loss_fn,
            inner_lr,
            n_inner_steps,
            first_order,
        ),
    )


def mean_query_loss(
    model: nn.Module,
    tasks: TaskBatch,
    loss_fn: LossFn,
    adapt_task: Callable[[torch.Tensor, torch.Tensor], Params],
) -> torch.Tensor:
    """Mean over the meta-batch of each task's query loss at
    ``adapt_task(x_support, y_support)``, one task at a time: the loop of every
    per-task meta-objective (MAML's here; ANIL's and Proto-MAML's inner loops in
    :mod:`mamllib.algorithms`)."""
    losses = [
        task_loss(
            model,
            adapt_task(tasks.x_support[i], tasks.y_support[i]),
            tasks.x_query[i],
            tasks.y_query[i],
            loss_fn,
        )
        for i in range(len(tasks))
    ]
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------------------
# The fast path: torch.func.grad for one task, vmap over the meta-batch
# --------------------------------------------------------------------------------------


def query_loss_after_adaptation(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """One task's meta-objective term: L(theta'_i) on the query set D'_i."""
    adapted_params = adapt(
        model,
        params,
        x_support,
        y_support,
        loss_fn,
        inner_lr,
        n_inner_steps,
        first_order,
    )
    return task_loss(model, adapted_params, x_query, y_query, loss_fn)


def meta_loss_vmap(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """:func:`meta_loss_loop` with the tasks batched by ``torch.func.vmap``.

    ``params`` is shared by every task (``in_dims=None``); the four data tensors carry
    the task axis (``in_dims=0``). The result is differentiable w.r.t. ``params`` by
    ordinary autograd.
    """

    def one_task(xs, ys, xq, yq):
        return query_loss_after_adaptation(
            model, params, xs, ys, xq, yq, loss_fn, inner_lr, n_inner_steps, first_order
        )

    losses = vmap(one_task)(
        tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query
    )
    return losses.mean()


# --------------------------------------------------------------------------------------
# The batched path: all tasks in one forward, for models with ``forward_tasks``
# --------------------------------------------------------------------------------------


def meta_loss_batched(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """:func:`meta_loss_loop` with the whole meta-batch in each forward, no vmap.

    Needs ``model.forward_tasks(params, x)``: parameters with a leading task axis
    ``[T, ...]``, inputs ``[T, N, ...]``, outputs ``[T, N, ...]`` (e.g.
    :class:`mamllib.models.Conv4`). Each task starts from a copy of theta made by
    ``expand`` (a view): the gradient of the summed support losses w.r.t. those
    copies is each task's own gradient, and the meta-gradient flows back through
    ``expand`` as the sum over tasks. Plain ``torch.autograd`` throughout, so no
    vmap rule can be wrong. ``loss_fn`` must be a mean over examples (as
    :func:`mse_loss` and :func:`cross_entropy_loss`), so that T times the mean over
    all examples is the sum of the per-task means.
    """
    if not hasattr(model, "forward_tasks"):
        raise ValueError(
            f"{type(model).__name__} has no forward_tasks(params, x): use "
            "strategy='vmap' or strategy='loop'"
        )
    n_tasks = len(tasks)

    def mean_loss(p, x, y):
        output = model.forward_tasks(p, x)  # [T, N, ...]
        return loss_fn(output.flatten(0, 1), y.flatten(0, 1))

    adapted_params = {k: v.expand(n_tasks, *v.shape) for k, v in params.items()}
    for _ in range(n_inner_steps):
        support_loss = n_tasks * mean_loss(
            adapted_params, tasks.x_support, tasks.y_support
        )
        # create_graph for second order, as in inner_step.
        grads = torch.autograd.grad(
            support_loss,
            tuple(adapted_params.values()),
            create_graph=not first_order,
            allow_unused=True,
        )
        adapted_params = sgd_step(
            adapted_params, dict(zip(adapted_params, grads)), inner_lr
        )
    return mean_loss(adapted_params, tasks.x_query, tasks.y_query)


META_LOSSES = {
    "loop": meta_loss_loop,
    "vmap": meta_loss_vmap,
    "batched": meta_loss_batched,
}
STRATEGIES = (*META_LOSSES, "threads", "compiled")


def meta_loss_of(strategy: str) -> Callable[..., torch.Tensor]:
    """The meta-objective function of a compute ``strategy``; a clear error for others.

    ``"threads"`` and ``"compiled"`` live with the other speed-ups
    (:mod:`mamllib.fast.threads`, :mod:`mamllib.fast.compiled`).
    """
    if strategy == "threads":
        from mamllib.fast.threads import meta_loss_threads

        return meta_loss_threads
    if strategy == "compiled":
        from mamllib.fast.compiled import meta_loss_compiled

        return meta_loss_compiled
    if strategy not in META_LOSSES:
        raise ValueError(
            f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}"
        )
    return META_LOSSES[strategy]


def meta_gradient(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
    strategy: str = "vmap",
) -> tuple[torch.Tensor, Params]:
    """The meta-loss and its gradient w.r.t. ``params`` (a dict like ``params``).

    Args:
        strategy: how to compute it: ``"vmap"`` (fast), ``"loop"`` (readable),
            ``"batched"`` (fast without vmap, for models with ``forward_tasks``) or
            ``"threads"`` (the batched path with the tasks shared among CPU threads)
            or ``"compiled"`` (the vmap path under ``torch.compile``, MLP only);
            tests prove they agree.
    """
    loss = meta_loss_of(strategy)(
        model, params, tasks, loss_fn, inner_lr, n_inner_steps, first_order
    )
    grads = torch.autograd.grad(loss, tuple(params.values()), allow_unused=True)
    return loss.detach(), {
        k: torch.zeros_like(p) if g is None else g
        for (k, p), g in zip(params.items(), grads)
    }
