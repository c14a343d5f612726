"""The MLP's meta-gradient compiled by ``torch.compile`` (strategy ``"compiled"``).

Replaces :func:`mamllib.maml.meta_loss_vmap` for :class:`mamllib.models.MLP` (the
sinusoid experiment); ``tests/test_compiled.py`` holds it equal to the loop (float64),
to the vmap path (float32) and to finite differences.

Why it is faster: at the paper's sizes (25 tasks of 10 points, 1-40-40-1) a
meta-gradient is a few hundred tiny operations, and eager PyTorch spends most of its
time dispatching them through ``vmap`` and ``grad``; compiled, they become a few
fused C++ kernels (``benchmarks/sinusoid_speed.py`` measures the gain over ``"vmap"``
and ``higher``; its report is ``benchmarks/results/cpu-sinusoid.json``).

Why it is written this way: the whole meta-gradient, outer gradient included, is one
``torch.func`` function -- ``torch.func.grad`` of :func:`meta_loss_vmap`, whose inner
steps use ``torch.func.grad`` too -- so that ``torch.compile`` sees one graph. The
readable paths' ``torch.autograd.grad(create_graph=True)`` cannot be compiled that
way (AOTAutograd refuses double backward). The loss and gradients computed here are
handed to autograd as in :mod:`mamllib.fast.threads`: the returned loss can be
differentiated once, w.r.t. ``params`` only (what :func:`mamllib.maml.meta_gradient`
and training do); for anything else use ``"vmap"``.

Why only the MLP: compiling pays where eager overhead dominates. On the conv-4 the
convolutions dominate and the gain is small for a compile of minutes, so
:func:`meta_loss_compiled` refuses other models (use ``"batched"`` or ``"threads"``
there).

Compiling, and the cache kept between runs: each configuration (MLP sizes, loss,
``inner_lr``, ``n_inner_steps``, ``first_order``) is compiled once per process, on
its first call, with static shapes: a new meta-batch size, number of points, dtype or
device is compiled anew (torch.compile's guards), never answered with the wrong
graph. A first compile takes a minute or so on a CPU; torch keeps its results
on disk (the inductor FX graph and AOTAutograd caches) under
:func:`compile_cache_dir`, so a later process with the same configuration starts in
seconds. The folder is ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
``<mamllib cache>/torch-compile`` (``$MAMLLIB_CACHE/torch-compile``, else
``~/.cache/mamllib/torch-compile``); delete it to start cold.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import grad_and_value

from mamllib.batch import Batch
from mamllib.data.store import cache_dir
from mamllib.fast.threads import _PrecomputedMetaLoss
from mamllib.maml import LossFn, meta_loss_vmap
from mamllib.models import MLP, Params

COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

LossAndGrads = Callable[[Params, Batch], tuple[torch.Tensor, Params]]
_COMPILED: dict[tuple, LossAndGrads] = {}


def compile_cache_dir() -> Path:
    """Where torch.compile keeps compiled code between runs.

    Returns:
        ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``torch-compile`` in mamllib's
        cache folder (:func:`mamllib.data.store.cache_dir`).
    """
    if os.environ.get(COMPILE_CACHE_ENV):
        return Path(os.environ[COMPILE_CACHE_ENV]).expanduser()
    return cache_dir() / "torch-compile"


def _loss_and_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool,
) -> LossAndGrads:
    """``(params, tasks) -> (meta-loss, its gradient)``, all in ``torch.func``."""

    def loss_and_grads(params: Params, tasks: Batch) -> tuple[torch.Tensor, Params]:
        def meta_loss(p: Params) -> torch.Tensor:
            return meta_loss_vmap(
                model, p, tasks, loss_fn, inner_lr, n_inner_steps, first_order
            )

        grads, loss = grad_and_value(meta_loss)(params)
        return loss, grads

    # A code object of its own: dynamo keeps at most 8 compiled versions per code
    # object (recompile_limit), and would otherwise count every configuration
    # against one limit, falling back to eager after the eighth.
    return types.FunctionType(
        loss_and_grads.__code__.replace(),
        loss_and_grads.__globals__,
        loss_and_grads.__name__,
        None,
        loss_and_grads.__closure__,
    )


def compiled_loss_and_grads(
    model: MLP,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> LossAndGrads:
    """The compiled ``(params, tasks) -> (meta-loss, gradient)`` of a configuration.

    Made once per configuration and process, and compiled on its first call.

    Args:
        model: an :class:`~mamllib.models.MLP` (its structure only).
        loss_fn, inner_lr, n_inner_steps, first_order: as in
            :func:`mamllib.maml.meta_loss_vmap`.

    Returns:
        A function of the parameters (not requiring grad) and a meta-batch.
    """
    key = (
        type(model),
        model.sizes,
        loss_fn,
        float(inner_lr),
        int(n_inner_steps),
        bool(first_order),
    )
    if key not in _COMPILED:
        # Set before the first compile, which is when inductor reads it.
        os.environ.setdefault(COMPILE_CACHE_ENV, str(compile_cache_dir()))
        _COMPILED[key] = torch.compile(
            _loss_and_grads(model, loss_fn, inner_lr, n_inner_steps, first_order),
            fullgraph=True,  # one graph or an error, never a slow half-eager path
            dynamic=False,  # static shapes: each new shape is compiled anew
            options={
                # Inductor's own C++ GEMMs, timed against MKL's at compile time: the
                # meta-batch's small batched products are faster in them.
                "max_autotune": True,
                # The kernels called from C++, not Python: at these sizes the calls
                # cost as much as the kernels.
                "cpp_wrapper": True,
            },
        )
    return _COMPILED[key]


def meta_loss_compiled(
    model: nn.Module,
    params: Params,
    tasks: Batch,
    loss_fn: LossFn,
    inner_lr: float,
    n_inner_steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """:func:`meta_loss_vmap` and its gradient compiled by ``torch.compile``.

    Args:
        model: an :class:`~mamllib.models.MLP`; other models are refused.
        params, tasks, loss_fn, inner_lr, n_inner_steps, first_order: as in
            :func:`mamllib.maml.meta_loss_loop`.

    Returns:
        The meta-loss, whose gradient w.r.t. ``params`` (taken once, by
        ``backward`` or :func:`mamllib.maml.meta_gradient`) is the meta-gradient
        computed here.
    """
    if not isinstance(model, MLP):
        raise ValueError(
            f"strategy='compiled' is for the MLP only, got {type(model).__name__}: "
            "compiling pays little elsewhere (the conv-4 is dominated by its "
            "convolutions); use strategy='vmap', 'batched' or 'threads'"
        )
    loss_and_grads = compiled_loss_and_grads(
        model, loss_fn, inner_lr, n_inner_steps, first_order
    )
    values = {k: v.detach() for k, v in params.items()}
    loss, grads = loss_and_grads(values, tasks)
    return _PrecomputedMetaLoss.apply(loss, list(grads.values()), *params.values())
