"""Sampling trajectories in batch, discounted returns, the linear feature baseline.

Everything here is data processing: nothing is differentiated through it. A meta-batch
of ``n_tasks`` tasks with ``n_traj`` trajectories each is sampled at once, padded to
the horizon ``T``; a mask marks the steps that happened (an episode that reaches the
goal stops, and its later steps are zeros with mask 0).

Introduced in notebook 09.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mamllib.batch import Batch
from mamllib.models import MLP, Params
from mamllib.rl.policy import per_task_mean, policy_mean
from mamllib.rl.share import TaskShare, randn_tasks


@dataclass
class Trajectories(Batch):
    """Padded trajectories of a meta-batch. Shapes (T = horizon):

    ``obs`` ``[n_tasks, n_traj, T, obs_dim]`` (observation before each action),
    ``actions`` ``[n_tasks, n_traj, T, act_dim]`` (raw, unclipped: what the policy
    drew), ``rewards`` and ``mask`` ``[n_tasks, n_traj, T]``, ``positions``
    ``[n_tasks, n_traj, T + 1, 2]`` (for plots).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def returns(self) -> torch.Tensor:
        """Undiscounted return of each trajectory, ``[n_tasks, n_traj]``: what the
        paper reports (averaged)."""
        return (self.rewards * self.mask).sum(-1)


@torch.no_grad()
def sample_trajectories(
    model: MLP,
    params: Params,
    env,
    horizon: int,
    generator: torch.Generator,
    share: TaskShare | None = None,
) -> Trajectories:
    """Roll out the Gaussian policy ``params`` in ``env`` for ``horizon`` steps.

    ``env`` is a :class:`~mamllib.rl.envs.Navigation2D` or a
    :class:`~mamllib.rl.locomotion.Locomotion`: anything with ``reset()``,
    ``step(actions)``, ``alive`` and ``position``.

    ``params`` is either one policy (shared by every task) or a meta-batch of policies
    with a leading task axis (``params["log_std"]`` is then ``[n_tasks, act_dim]``),
    e.g. the adapted policies, one per task. Noise comes from ``generator`` only.

    ``share``: the tasks of ``env`` are these of a larger meta-batch (one rank's); the
    noise is what a single process draws for them (:mod:`mamllib.rl.share`).
    """
    per_task = params["log_std"].dim() == 2
    obs = env.reset()
    n_tasks, n_traj = obs.shape[:2]
    act_dim = params["log_std"].shape[-1]
    std = torch.exp(params["log_std"])
    std = std[:, None, :] if per_task else std
    all_obs, all_actions, all_rewards, all_mask = [], [], [], []
    positions = [env.position.clone()]
    for _ in range(horizon):
        mean = (
            per_task_mean(model, params, obs)
            if per_task
            else policy_mean(model, params, obs)
        )
        noise = randn_tasks((n_tasks, n_traj, act_dim), generator, obs.dtype, share)
        action = mean + std * noise
        all_mask.append(env.alive.to(obs.dtype))
        all_obs.append(obs)
        all_actions.append(action)
        obs, reward, _ = env.step(action)
        all_rewards.append(reward)
        positions.append(env.position.clone())
    return Trajectories(
        obs=torch.stack(all_obs, dim=2),
        actions=torch.stack(all_actions, dim=2),
        rewards=torch.stack(all_rewards, dim=2),
        mask=torch.stack(all_mask, dim=2),
        positions=torch.stack(positions, dim=2),
    )


def discounted_returns(
    rewards: torch.Tensor, mask: torch.Tensor, discount: float
) -> torch.Tensor:
    """R_t = sum_{s >= t} discount^(s - t) r_s along the last axis (masked steps
    count as zero reward)."""
    T = rewards.shape[-1]
    t = torch.arange(T, dtype=torch.float64)
    # gamma[t, s] = discount^(s - t) for s >= t, else 0: one matmul, no Python loop.
    gamma = torch.where(
        t[None, :] >= t[:, None], discount ** (t[None, :] - t[:, None]), 0.0
    )
    return ((rewards * mask).double() @ gamma.T).to(rewards.dtype)


def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """rllab ``LinearFeatureBaseline`` features: obs, obs^2, t, t^2, t^3, 1 with
    t = step / 100 and obs clipped to [-10, 10]. ``[..., T, obs_dim]`` ->
    ``[..., T, 2 obs_dim + 4]``."""
    o = obs.clamp(-10, 10)
    T = obs.shape[-2]
    t = (torch.arange(T, dtype=obs.dtype) / 100.0).expand(*obs.shape[:-1])[..., None]
    return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg_coeff: float = 1e-5,
) -> torch.Tensor:
    """Fit the linear feature baseline to each task's returns; its values on the same
    steps.

    Ridge regression on the valid steps of one task's trajectories (all ``n_traj`` of
    them), ``(F^T F + reg I) w = F^T R`` as rllab, in float64; refitted per task at
    every iteration (App. A.2). Shapes: obs ``[n_tasks, n_traj, T, obs_dim]``,
    returns and mask ``[n_tasks, n_traj, T]``; returns ``[n_tasks, n_traj, T]``.
    """
    features = baseline_features(obs).double()
    n_tasks, k = features.shape[0], features.shape[-1]
    f = (features * mask[..., None].double()).reshape(n_tasks, -1, k)
    y = (returns * mask).double().reshape(n_tasks, -1, 1)
    ftf = f.transpose(1, 2) @ f
    eye = torch.eye(k, dtype=torch.float64)
    reg = reg_coeff
    for _ in range(5):  # rllab: raise the regulariser tenfold while the fit is NaN
        w = torch.linalg.solve(ftf + reg * eye, f.transpose(1, 2) @ y)
        if torch.isfinite(w).all():
            break
        reg *= 10
    values = (features.reshape(n_tasks, -1, k) @ w).reshape(returns.shape)
    return values.to(returns.dtype) * mask


def advantages(
    traj: Trajectories,
    discount: float,
    reg_coeff: float = 1e-5,
    normalize: bool = True,
) -> torch.Tensor:
    """A_t = R_t - b(s_t), per task, then centred and scaled per task (rllab's
    ``center_adv=True``) over the valid steps. ``[n_tasks, n_traj, T]``, zero where
    masked.

    With rllab's GAE at lambda = 1 (its default) the advantage is exactly the
    discounted return minus the baseline.
    """
    returns = discounted_returns(traj.rewards, traj.mask, discount)
    adv = returns - fit_linear_baseline(traj.obs, returns, traj.mask, reg_coeff)
    adv = adv * traj.mask
    if normalize:
        n = traj.mask.sum(dim=(1, 2), keepdim=True)
        mean = adv.sum(dim=(1, 2), keepdim=True) / n
        var = (((adv - mean) * traj.mask) ** 2).sum(dim=(1, 2), keepdim=True) / n
        adv = (adv - mean) / (var.sqrt() + 1e-8) * traj.mask
    return adv
