"""A non-meta baseline: train an ordinary classifier, reuse its body for few-shot tasks.

Chen et al. (ICLR 2019, "A Closer Look at Few-shot Classification") and Tian et al.
(ECCV 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
Need?") find that a network trained with plain cross-entropy on all the training
classes at once, with no episodes and no inner loop, gives features on which a linear
classifier fitted to a new task's support set competes with meta-learning. If MAML
mostly reuses features (Raghu et al. 2020, :mod:`mamllib.algorithms.anil`), this is
the natural baseline: learn the features directly.

* Training: :func:`sample_images` draws minibatches of images across all classes of a
  split (their labels are the split's class indices, not an episode's), and
  :func:`classifier_objective` is their cross-entropy under a conv-4 with one output
  per class, for :func:`mamllib.train.fit`, from :func:`zero_head_params`.
* Test: :func:`few_shot_logits` fits a new linear head on a task's support features
  (:func:`fit_logistic_head`: logistic regression by gradient descent on
  L2-normalised features, as Tian et al. normalise them) and scores the query set
  with it; the classifier's own head is dropped.

Introduced in notebook 13 (ANIL and feature reuse). Tests:
``tests/test_similarity_and_classifier.py``. Imports torch (and numpy, for image
arrays kept as memory maps).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import vmap
from torch.nn import functional as F

from mamllib.algorithms.anil import body_features, head_keys_of
from mamllib.maml import cross_entropy_loss
from mamllib.models import Params, forward, init_params
from mamllib.outer_steps import Objective


def sample_images(
    images: torch.Tensor | np.ndarray, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A minibatch across all classes: ``batch_size`` (class, image) pairs drawn
    uniformly with replacement.

    Args:
        images: uint8 ``[n_classes, n_images, C, H, W]``, e.g. an
            :class:`~mamllib.episodes.EpisodeSampler`'s ``images``.
        generator: the minibatch stream (its state is checkpointed by ``fit``).

    Returns:
        ``x`` float32 ``[batch_size, C, H, W]`` in [0, 1] and ``y`` int64
        ``[batch_size]``, the class indices.
    """
    if len(images.shape) != 5:
        raise ValueError(
            f"images must be [n_classes, n_images, C, H, W], got {list(images.shape)}"
        )
    n_classes, n_images = images.shape[:2]
    y = torch.randint(n_classes, (batch_size,), generator=generator)
    which = torch.randint(n_images, (batch_size,), generator=generator)
    if isinstance(images, np.ndarray):
        pixels = torch.from_numpy(images[y.numpy(), which.numpy()])
    else:
        pixels = images[y, which]
    return pixels.float().div_(255), y


def zero_head_params(model: nn.Module, generator: torch.Generator) -> Params:
    """Fresh parameters: the model's usual initialisation
    (:func:`mamllib.models.init_params`), with the head's weight at zero.

    The Omniglot conv-4's head starts as a standard normal (cbfinn/maml's), so the
    untrained network's logits for one image differ by several units. For the
    classifier over thousands of classes that puts the first loss well above
    log(n_classes), and Adam at 1e-3 spends much of a short budget shrinking the
    head. In episodes, whose labels are permuted in every task, it prefers some
    labels for no reason, and an inner loop on the head alone (ANIL) must first
    undo it. From zero, every label starts alike: the first loss is exactly
    log(n_classes), and one inner step on the head gives each class the centred
    mean of its support features (notebook 13).
    """
    params = init_params(model, generator)
    weight, _ = head_keys_of(model)  # a TypeError names a model with no known head
    with torch.no_grad():
        params[weight].zero_()
    return params


def classifier_objective(model: nn.Module) -> Objective:
    """Cross-entropy of ``model``'s logits on a minibatch ``(x, y)`` from
    :func:`sample_images`, as ``objective(params, batch)`` for ``fit``.

    ``model`` needs one output per training class (a conv-4 with ``n_way`` = the
    number of classes).
    """

    def objective(params: Params, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        return cross_entropy_loss(forward(model, params, x), y)

    return objective


def fit_logistic_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    n_steps: int = 300,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head fitted by full-batch gradient descent on the mean cross-entropy
    of ``features`` plus ``weight_decay / 2 * ||W||^2``, from zero.

    The gradient is written out (``(softmax - onehot)`` times the features), so the
    fit needs no autograd and runs for any leading axes at once, e.g. one head per
    task of a meta-batch.

    Args:
        features: ``[..., n, d]``.
        labels: ``[..., n]`` integers in ``0..n_way-1``.
        n_way: the number of classes (outputs of the head).
        n_steps, lr: gradient-descent steps and step size. The loss's curvature is
            at most ``(max ||f||^2 + 1) / 2`` (the 1 is the bias; plus
            ``weight_decay``): 1 for unit-norm features, where any ``lr`` below 2
            is stable.

    Returns:
        ``(weight [..., n_way, d], bias [..., n_way])``; the logits are
        ``f @ weight.T + bias``.
    """
    if features.shape[:-1] != labels.shape:
        raise ValueError(
            f"features [..., n, d] and labels [..., n] disagree: got "
            f"{list(features.shape)} and {list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_way):
        raise ValueError(
            f"labels must lie in 0..{n_way - 1} for n_way={n_way}, got "
            f"{labels.min().item()}..{labels.max().item()}"
        )
    onehot = F.one_hot(labels, n_way).to(features.dtype)  # [..., n, n_way]
    n = features.shape[-2]
    weight = features.new_zeros(*features.shape[:-2], n_way, features.shape[-1])
    bias = features.new_zeros(*features.shape[:-2], n_way)
    for _ in range(n_steps):
        logits = features @ weight.transpose(-1, -2) + bias[..., None, :]
        error = (logits.softmax(-1) - onehot) / n  # d(mean loss) / d(logits)
        weight = weight - lr * (
            error.transpose(-1, -2) @ features + weight_decay * weight
        )
        bias = bias - lr * error.sum(-2)
    return weight, bias


def few_shot_logits(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    n_way: int,
    **fit_options: float,
) -> torch.Tensor:
    """Query logits from a linear head fitted on the support set's L2-normalised body
    features (the classifier's own head is unused).

    One task (``x_support`` ``[n, C, H, W]``) or a meta-batch (``[T, n, C, H, W]``,
    one head per task, fitted together). The support and query sets go through the
    body separately, so batch norm uses each set's own statistics, as in every
    evaluation of this book. ``fit_options`` go to :func:`fit_logistic_head`.

    Returns:
        ``[n_query, n_way]``, or ``[T, n_query, n_way]`` for a meta-batch.
    """

    def features(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(body_features(model, params, x), dim=-1)

    if x_support.dim() == 5:  # a task axis: the body runs on each task's batch
        features = vmap(features)
    support, query = features(x_support), features(x_query)
    weight, bias = fit_logistic_head(support, y_support, n_way, **fit_options)
    return query @ weight.transpose(-1, -2) + bias[..., None, :]
