"""Prototypical networks (Snell, Swersky, Zemel 2017) and Proto-MAML (Triantafillou
et al., ICLR 2020, "Meta-Dataset").

A prototypical network classifies a query by the squared Euclidean distance of its
features to each class's prototype, the mean of that class's support features
(Snell et al. eqs. 1-2); there is no inner loop and no head. Since
``-||f - c_k||^2 = 2 c_k . f - ||c_k||^2 - ||f||^2`` and the last term is the same
for every class, this is a linear head with ``W_k = 2 c_k``, ``b_k = -||c_k||^2``
(Snell et al. read it so). Proto-MAML starts MAML's inner loop from that head
instead of a meta-learned one; the meta-gradient flows back through the prototypes to
the body.

Features are the body's (:func:`mamllib.algorithms.anil.body_features`), so the MLP
and the conv-4 serve as embeddings; their own head parameters go unused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mamllib.algorithms.anil import adapt_head, body_features, head_keys_of
from mamllib.batch import Batch
from mamllib.maml import LossFn, cross_entropy_loss, mean_query_loss
from mamllib.models import Params
from mamllib.outer_steps import Objective


def prototypes(
    features: torch.Tensor, labels: torch.Tensor, n_way: int
) -> torch.Tensor:
    """Each class's mean feature vector, ``[n_way, n_features]`` (eq. 1)."""
    onehot = F.one_hot(labels, n_way).to(features.dtype)  # [N, n_way]
    return (onehot.T @ features) / onehot.sum(0)[:, None]


def protonet_logits(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    n_way: int,
) -> torch.Tensor:
    """Minus the squared distance of each query to each prototype, ``[n_query,
    n_way]``: their softmax is eq. 2's class probabilities."""
    centres = prototypes(body_features(model, params, x_support), y_support, n_way)
    query = body_features(model, params, x_query)
    return -((query[:, None, :] - centres[None, :, :]) ** 2).sum(-1)


def protonet_meta_loss(
    model: nn.Module, params: Params, tasks: Batch, loss_fn: LossFn, n_way: int
) -> torch.Tensor:
    """Mean over tasks of ``loss_fn`` on the query logits (Snell et al. Algorithm 1)."""
    losses = [
        loss_fn(
            protonet_logits(
                model,
                params,
                tasks.x_support[i],
                tasks.y_support[i],
                tasks.x_query[i],
                n_way,
            ),
            tasks.y_query[i],
        )
        for i in range(len(tasks))
    ]
    return torch.stack(losses).mean()


def protonet_objective(
    model: nn.Module, n_way: int, loss_fn: LossFn = cross_entropy_loss
) -> Objective:
    """Prototypical networks as ``objective(params, tasks)`` for
    :class:`mamllib.outer_steps.AdamStep`."""

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        return protonet_meta_loss(model, params, tasks, loss_fn, n_way)

    return objective


def prototype_head(centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head equivalent to a prototypical network: ``W_k = 2 c_k``,
    ``b_k = -||c_k||^2``. Its logits are :func:`protonet_logits` plus ``||f||^2``,
    the same for every class, so the softmax is the same."""
    return 2 * centres, -(centres**2).sum(-1)


def protomaml_adapt(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    n_way: int,
    adapt_body: bool = False,
    first_order: bool = False,
) -> Params:
    """Proto-MAML's inner loop: the head set to :func:`prototype_head` of the support
    prototypes (computed with ``params``, graph kept), then ``n_inner_steps`` of SGD on
    the head, or on every parameter with ``adapt_body``.

    The head's starting point depends on the body, so the meta-gradient reaches the
    body through the prototypes even with ``first_order`` (Triantafillou et al. train
    first order). The incoming head parameters are replaced, and get no gradient.
    """
    weight_key, bias_key = head_keys_of(model)
    centres = prototypes(body_features(model, params, x_support), y_support, n_way)
    weight, bias = prototype_head(centres)
    # Fresh nodes for the body: ``torch.autograd.grad`` with respect to a tensor counts
    # every use of it, so with the body's own tensors the first inner gradient would
    # also flow through the prototypes that made the head. The inner step is SGD on
    # the task's parameters, head and body independent (as ``torch.func.grad`` under
    # ``vmap`` computes it); the meta-gradient still reaches ``params`` through both.
    body = {k: v.clone() for k, v in params.items() if k not in (weight_key, bias_key)}
    start = {**body, weight_key: weight, bias_key: bias}
    keys = tuple(start) if adapt_body else (weight_key, bias_key)
    return adapt_head(
        model,
        start,
        x_support,
        y_support,
        loss_fn,
        inner_lr,
        n_inner_steps,
        keys,
        first_order,
    )


def protomaml_meta_loss(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    n_way: int,
    adapt_body: bool = False,
    first_order: bool = False,
) -> torch.Tensor:
    """Mean query loss after :func:`protomaml_adapt`, one task at a time."""
    return mean_query_loss(
        model,
        tasks,
        loss_fn,
        lambda x_support, y_support: protomaml_adapt(
            model,
            params,
            x_support,
            y_support,
            loss_fn,
            inner_lr,
            n_inner_steps,
            n_way,
            adapt_body,
            first_order,
        ),
    )


def protomaml_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    n_way: int,
    adapt_body: bool = False,
    first_order: bool = False,
) -> Objective:
    """Proto-MAML as ``objective(params, tasks)`` for
    :class:`mamllib.outer_steps.AdamStep`."""

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        return protomaml_meta_loss(
            model,
            params,
            tasks,
            loss_fn,
            inner_lr,
            n_inner_steps,
            n_way,
            adapt_body,
            first_order,
        )

    return objective
