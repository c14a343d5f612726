"""A Gaussian MLP policy as a plain dict of parameters (rllab ``GaussianMLPPolicy``).

The mean is an MLP (2 hidden layers of 100 ReLU units in the paper, App. A.2) run
through ``torch.func.functional_call``; the log standard deviation is one more entry
of the same dict, ``"log_std"``, a vector that does not depend on the state (rllab's
``learn_std=True, adaptive_std=False``, initial std 1). Adapting the policy is then
what it is for regression: ``adapted_params`` is just another dict, and a meta-batch of
per-task policies is a dict whose tensors carry a leading task axis (run with vmap).

Introduced in notebook 09.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, vmap

from mamllib.models import MLP, Params

LOG_2PI = math.log(2 * math.pi)


def policy_model(obs_dim: int, act_dim: int, hidden_sizes=(100, 100)) -> MLP:
    """The mean network's skeleton: obs_dim -> hidden... -> act_dim, ReLU."""
    return MLP((obs_dim, *hidden_sizes, act_dim))


def init_policy_params(
    model: MLP,
    generator: torch.Generator,
    init_std: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Params:
    """Fresh policy parameters: Xavier-uniform weights, zero biases, log std log(1).

    rllab's MLP layers use Glorot (Xavier) uniform weights and zero biases; its
    Gaussian policy starts at ``init_std=1``.
    """
    params: Params = {}
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            value = torch.zeros(p.shape, dtype=dtype)
        else:
            fan_out, fan_in = p.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            value = (
                torch.rand(p.shape, generator=generator, dtype=dtype) * 2 - 1
            ) * bound
        params[name] = value.requires_grad_(True)
    params["log_std"] = torch.full(
        (model.sizes[-1],), math.log(init_std), dtype=dtype
    ).requires_grad_(True)
    return params


def policy_mean(model: MLP, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """The mean action ``[..., act_dim]`` for observations ``[..., obs_dim]``."""
    weights = {k: v for k, v in params.items() if k != "log_std"}
    return functional_call(model, weights, (obs,))


def per_task_mean(model: MLP, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Means for a meta-batch: params with a task axis, obs ``[n_tasks, ...]``."""
    return vmap(lambda p, o: policy_mean(model, p, o))(params, obs)


def gaussian_log_prob(
    actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log N(actions; mean, diag(exp(log_std))^2), summed over the action axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(
    mean_old: torch.Tensor,
    log_std_old: torch.Tensor,
    mean_new: torch.Tensor,
    log_std_new: torch.Tensor,
) -> torch.Tensor:
    """KL(old || new) of diagonal Gaussians, summed over the action axis (rllab
    ``DiagonalGaussian.kl_sym``)."""
    var_old, var_new = torch.exp(2 * log_std_old), torch.exp(2 * log_std_new)
    kl = (
        log_std_new
        - log_std_old
        + (var_old + (mean_old - mean_new) ** 2) / (2 * var_new)
        - 0.5
    )
    return kl.sum(-1)


def log_prob(
    model: MLP, params: Params, obs: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """log pi_params(actions | obs), one value per step: ``[...]``."""
    return gaussian_log_prob(
        actions, policy_mean(model, params, obs), params["log_std"]
    )
