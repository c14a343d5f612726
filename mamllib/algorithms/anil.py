"""ANIL and NIL (Raghu, Raghu, Bengio, Vinyals, ICLR 2020, "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML").

Raghu et al. find that MAML's inner loop hardly changes the body of the network: the
features are reused and only the head (the output layer) adapts. ANIL ("almost no
inner loop") therefore adapts the head alone. The meta-gradient still reaches
the body, through the query loss and, second order, through the head's inner steps,
whose gradients depend on the body's features. NIL ("no inner loop") drops the
head at test time and labels a query by the cosine similarity of its features to the
support features.

The head/body split: :func:`head_keys_of` names the head's parameters,
:func:`body_model` is the network without its head, :func:`body_features` runs it.
Prototypical networks (:mod:`mamllib.algorithms.protonet`) use the same features.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from mamllib.batch import Batch
from mamllib.maml import LossFn, inner_step, mean_query_loss, task_loss
from mamllib.models import MLP, Conv4, Params, forward
from mamllib.outer_steps import Objective


def head_keys_of(model: nn.Module) -> tuple[str, str]:
    """The names of the head's ``(weight, bias)`` in ``params``: the MLP's last linear
    layer (``net.4.*`` for 1-40-40-1) or the conv-4's output layer (``head.*``)."""
    if isinstance(model, Conv4):
        return "head.weight", "head.bias"
    if isinstance(model, MLP):
        last = len(model.net) - 1
        return f"net.{last}.weight", f"net.{last}.bias"
    raise TypeError(f"no head/body split known for {type(model).__name__}")


_BODIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def body_model(model: nn.Module) -> nn.Module:
    """A copy of the skeleton ``model`` with its head replaced by the identity, so
    that its output is the head's input (made once per model)."""
    if model not in _BODIES:
        body = copy.deepcopy(model)
        if isinstance(model, Conv4):
            body.head = nn.Identity()
        elif isinstance(model, MLP):
            body.net[-1] = nn.Identity()
        else:
            raise TypeError(f"no head/body split known for {type(model).__name__}")
        _BODIES[model] = body
    return _BODIES[model]


def body_features(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """The features the head sees, ``[N, n_features]``; head parameters are ignored."""
    head = head_keys_of(model)
    body_params = {k: v for k, v in params.items() if k not in head}
    return forward(body_model(model), body_params, x)


def adapt_head(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    head_keys: tuple[str, ...],
    first_order: bool = False,
) -> Params:
    """ANIL's inner loop: ``n_inner_steps`` of SGD on the parameters named in
    ``head_keys``; the others are returned as they came (the same tensors).

    With ``head_keys`` naming every parameter this is :func:`mamllib.maml.adapt`.
    """
    adapted_params = dict(params)

    def support_loss(head: Params) -> torch.Tensor:
        return task_loss(
            model, {**adapted_params, **head}, x_support, y_support, loss_fn
        )

    head = {k: params[k] for k in head_keys}
    for _ in range(n_inner_steps):
        head = inner_step(support_loss, head, inner_lr, first_order)
    adapted_params.update(head)
    return adapted_params


def anil_meta_loss(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    head_keys: tuple[str, ...],
    first_order: bool = False,
) -> torch.Tensor:
    """Mean query loss after :func:`adapt_head`, one task at a time; its gradient
    w.r.t. ``params`` (body included) is ANIL's meta-gradient."""
    return mean_query_loss(
        model,
        tasks,
        loss_fn,
        lambda x_support, y_support: adapt_head(
            model,
            params,
            x_support,
            y_support,
            loss_fn,
            inner_lr,
            n_inner_steps,
            head_keys,
            first_order,
        ),
    )


def anil_objective(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    head_keys: tuple[str, ...] | None = None,
    first_order: bool = False,
) -> Objective:
    """ANIL as ``objective(params, tasks)`` for :class:`mamllib.outer_steps.AdamStep`;
    ``head_keys`` defaults to :func:`head_keys_of` ``(model)``."""
    head_keys = head_keys_of(model) if head_keys is None else head_keys

    def objective(params: Params, tasks: Batch) -> torch.Tensor:
        return anil_meta_loss(
            model,
            params,
            tasks,
            loss_fn,
            inner_lr,
            n_inner_steps,
            head_keys,
            first_order,
        )

    return objective


def nil_probabilities(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    n_way: int,
) -> torch.Tensor:
    """NIL's class probabilities for each query, ``[n_query, n_way]``.

    No head and no inner loop: the softmax over support examples of the cosine
    similarity between the query's and their features weighs their one-hot labels.
    """
    support = F.normalize(body_features(model, params, x_support), dim=-1)
    query = F.normalize(body_features(model, params, x_query), dim=-1)
    weights = (query @ support.T).softmax(-1)  # [n_query, n_support]
    return weights @ F.one_hot(y_support, n_way).to(weights.dtype)
