"""The meta-RL estimators, piece by piece, against closed forms on hand-made data.

Reward-to-go, rllab's linear feature baseline (ridge regression on
``[obs, obs^2, t, t^2, t^3, 1]``, ``t = step / 100``, obs clipped to [-10, 10], fitted
per task on the valid steps of its trajectories), the advantages (returns minus
baseline, centred and scaled per task), and the policy-gradient inner loss, inner
step, TRPO surrogate and KL of a linear Gaussian policy. Every expected value is
computed here, in float64, from the formulas (numpy, Python loops over the valid
steps of each trajectory, the ridge fit as a least-squares problem on an augmented
matrix), never by calling the code under test.
"""

import math

import numpy as np
import pytest
import torch

from mamllib.experiments.metarl import process
from mamllib.rl.metarl import (
    PGData,
    inner_update,
    meta_objective_loop,
    meta_objective_vmap,
    pg_loss,
    surrogate_and_kl,
)
from mamllib.rl.policy import policy_model
from mamllib.rl.rollouts import (
    Trajectories,
    advantages,
    discounted_returns,
    fit_linear_baseline,
)

TIGHT = dict(rtol=1e-10, atol=1e-10)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------
# A small hand-made meta-batch: 2 tasks x 3 trajectories x 8 steps, 2-D observations
# ------------------------------------------------------------------------------------

N_TASKS, N_TRAJ, T, OBS_DIM, ACT_DIM = 2, 3, 8, 2, 2
# Valid steps of each trajectory: some end early (reached the goal); the rest is
# padding, filled below with large values that must not matter.
LENGTHS = [[8, 5, 8], [3, 8, 6]]


def hand_made_batch() -> Trajectories:
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(N_TASKS, N_TRAJ, T, OBS_DIM, generator=g, dtype=torch.float64)
    obs[0, 0, 3, 0] = 12.5  # clipped to 10 in the features
    obs[1, 1, 6, 1] = -30.0  # clipped to -10
    actions = torch.randn(N_TASKS, N_TRAJ, T, ACT_DIM, generator=g, dtype=torch.float64)
    rewards = -torch.rand(N_TASKS, N_TRAJ, T, generator=g, dtype=torch.float64)
    mask = torch.zeros(N_TASKS, N_TRAJ, T, dtype=torch.float64)
    for i in range(N_TASKS):
        for j in range(N_TRAJ):
            n = LENGTHS[i][j]
            mask[i, j, :n] = 1.0
            rewards[i, j, n:] = 100.0  # padding: ignored
            obs[i, j, n:] = 1e3
    positions = torch.zeros(N_TASKS, N_TRAJ, T + 1, 2, dtype=torch.float64)
    return Trajectories(obs, actions, rewards, mask, positions)


def reward_to_go(rewards: np.ndarray, discount: float) -> np.ndarray:
    """R_t = r_t + discount R_{t+1}, backwards over one trajectory's valid steps."""
    out = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + discount * running
        out[t] = running
    return out


def rllab_features(obs: np.ndarray) -> np.ndarray:
    """rllab ``LinearFeatureBaseline._features`` of one path's observations."""
    o = np.clip(obs, -10, 10)
    al = np.arange(len(obs)).reshape(-1, 1) / 100.0
    return np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(obs), 1))], axis=1)


def ridge(features: np.ndarray, targets: np.ndarray, reg: float) -> np.ndarray:
    """argmin_w |F w - y|^2 + reg |w|^2, as least squares on [F; sqrt(reg) I]."""
    k = features.shape[1]
    a = np.vstack([features, math.sqrt(reg) * np.eye(k)])
    b = np.concatenate([targets, np.zeros(k)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def expected_estimators(traj: Trajectories, discount: float, reg: float = 1e-5):
    """Per task and trajectory: returns, baseline, raw and normalised advantages, as
    ``[n_tasks, n_traj, T]`` arrays, zero on padding."""
    shape = traj.rewards.shape
    returns, baseline = np.zeros(shape), np.zeros(shape)
    raw, normalised = np.zeros(shape), np.zeros(shape)
    for i in range(N_TASKS):
        paths = []
        for j in range(N_TRAJ):
            n = LENGTHS[i][j]
            paths.append(
                (
                    j,
                    n,
                    traj.obs[i, j, :n].numpy(),
                    reward_to_go(traj.rewards[i, j, :n].numpy(), discount),
                )
            )
        w = ridge(
            np.vstack([rllab_features(o) for _, _, o, _ in paths]),
            np.concatenate([r for _, _, _, r in paths]),
            reg,
        )
        for j, n, o, r in paths:
            returns[i, j, :n] = r
            baseline[i, j, :n] = rllab_features(o) @ w
            raw[i, j, :n] = r - baseline[i, j, :n]
        valid = np.concatenate([raw[i, j, :n] for j, n, _, _ in paths])
        mean, std = valid.mean(), valid.std()  # rllab center_adv: np.std, ddof 0
        for j, n, _, _ in paths:
            normalised[i, j, :n] = (raw[i, j, :n] - mean) / (std + 1e-8)
    return returns, baseline, raw, normalised


# ------------------------------------------------------------------------------------
# Returns, baseline, advantages
# ------------------------------------------------------------------------------------


def test_discounted_returns_by_hand():
    rewards = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 9.0, 9.0]], dtype=torch.float64
    )
    mask = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64
    )
    got = discounted_returns(rewards, mask, 0.5)
    # R_3 = 4, R_2 = 3 + 4/2, R_1 = 2 + 5/2, R_0 = 1 + 4.5/2; the second trajectory
    # ended after two steps: R_1 = 2, R_0 = 1 + 2/2, nothing after.
    expected = torch.tensor(
        [[3.25, 4.5, 5.0, 4.0], [2.0, 2.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, **TIGHT)
    # discount 1: plain sums of the rewards to go
    torch.testing.assert_close(
        discounted_returns(rewards, mask, 1.0),
        torch.tensor(
            [[10.0, 9.0, 7.0, 4.0], [3.0, 2.0, 0.0, 0.0]], dtype=torch.float64
        ),
        **TIGHT,
    )


@pytest.mark.parametrize("discount", [0.99, 0.7, 1.0])
def test_discounted_returns_are_the_reward_to_go_of_each_trajectory(discount):
    traj = hand_made_batch()
    expected, _, _, _ = expected_estimators(traj, discount)
    got = discounted_returns(traj.rewards, traj.mask, discount)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_undiscounted_return_of_each_trajectory_sums_its_valid_rewards():
    traj = hand_made_batch()
    expected = np.array(
        [
            [traj.rewards[i, j, : LENGTHS[i][j]].sum().item() for j in range(N_TRAJ)]
            for i in range(N_TASKS)
        ]
    )
    np.testing.assert_allclose(traj.returns().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("reg", [1e-5, 1e-2])
def test_linear_baseline_is_rllabs_ridge_fit_per_task(reg):
    traj = hand_made_batch()
    returns, baseline, _, _ = expected_estimators(traj, 0.99, reg)
    got = fit_linear_baseline(
        traj.obs, torch.from_numpy(returns), traj.mask, reg_coeff=reg
    )
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), baseline, rtol=1e-8, atol=1e-9)
    # A real fit: not the returns themselves, and the two tasks get different weights.
    assert np.abs(got.numpy() - returns).max() > 1e-3


def test_linear_baseline_reproduces_returns_that_are_linear_in_time():
    """Constant rewards, undiscounted, no early end: R_t = r (T - t) is linear in the
    features t and 1, so an unregularised fit is exact and the advantages vanish."""
    traj = hand_made_batch()
    traj.mask = torch.ones_like(traj.mask)
    traj.obs = traj.obs.clamp(-3, 3)
    traj.rewards = torch.full_like(traj.rewards, -0.25)
    returns = discounted_returns(traj.rewards, traj.mask, 1.0)
    t = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(returns, (-0.25 * (T - t)).expand_as(returns), **TIGHT)
    values = fit_linear_baseline(traj.obs, returns, traj.mask, reg_coeff=0.0)
    torch.testing.assert_close(values, returns, rtol=1e-9, atol=1e-9)
    adv = advantages(traj, 1.0, reg_coeff=0.0, normalize=False)
    assert adv.abs().max().item() < 1e-9


def test_advantages_are_returns_minus_baseline_before_normalising():
    traj = hand_made_batch()
    _, _, raw, _ = expected_estimators(traj, 0.99)
    got = advantages(traj, 0.99, normalize=False)
    np.testing.assert_allclose(got.numpy(), raw, rtol=1e-8, atol=1e-9)


def test_advantages_are_centred_and_scaled_per_task_over_valid_steps():
    traj = hand_made_batch()
    _, _, _, normalised = expected_estimators(traj, 0.99)
    got = advantages(traj, 0.99)
    np.testing.assert_allclose(got.numpy(), normalised, rtol=1e-8, atol=1e-9)
    # The defining properties, on the valid steps of each task: mean 0, std 1.
    for i in range(N_TASKS):
        valid = got[i][traj.mask[i] > 0]
        assert abs(valid.mean().item()) < 1e-12
        assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-7)
    assert (got[traj.mask == 0] == 0).all()


def test_the_experiment_processes_trajectories_with_these_advantages():
    """``process`` (what training and evaluation feed the inner step) uses the
    config's discount, rllab's regulariser and the normalisation."""
    traj = hand_made_batch()
    _, _, _, normalised = expected_estimators(traj, 0.9)
    data = process(traj, {"discount": 0.9})
    np.testing.assert_allclose(
        data.advantages.numpy(), normalised, rtol=1e-8, atol=1e-9
    )
    assert data.obs is traj.obs and data.actions is traj.actions
    assert data.mask is traj.mask


# ------------------------------------------------------------------------------------
# Policy-gradient loss, inner step, surrogate and KL of a linear Gaussian policy
# ------------------------------------------------------------------------------------


def linear_policy(weight, bias, log_std):
    """policy_model with no hidden layer: mean = W s + b, as a params dict."""
    model = policy_model(OBS_DIM, ACT_DIM, hidden_sizes=())
    names = [name for name, _ in model.named_parameters()]
    assert names == ["net.0.weight", "net.0.bias"]
    params = {
        "net.0.weight": torch.tensor(weight, dtype=torch.float64),
        "net.0.bias": torch.tensor(bias, dtype=torch.float64),
        "log_std": torch.tensor(log_std, dtype=torch.float64),
    }
    return model, {k: v.requires_grad_(True) for k, v in params.items()}


def test_pg_loss_by_hand_on_three_steps():
    """1-D observation and action, zero mean, std 1: log pi(a) = -a^2/2 - log(2 pi)/2.
    Actions 0, 1, 2 with advantages 1, -1, 1/2 (a fourth, masked step ignored):
    sum log pi A = -c + (1/2 + c) - (2 + c)/2 = -1/2 - c/2 with c = log(2 pi)/2."""
    model = policy_model(1, 1, hidden_sizes=())
    params = {
        "net.0.weight": torch.zeros(1, 1, dtype=torch.float64),
        "net.0.bias": torch.zeros(1, dtype=torch.float64),
        "log_std": torch.zeros(1, dtype=torch.float64),
    }
    obs = torch.tensor([[0.3], [-1.0], [2.0], [5.0]], dtype=torch.float64)
    actions = torch.tensor([[0.0], [1.0], [2.0], [7.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, 9.0], dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    loss = pg_loss(model, params, obs, actions, adv, mask)
    assert loss.item() == pytest.approx((0.5 + 0.5 * HALF_LOG_2PI) / 3, rel=1e-14)
    # std e^0.5 instead: log pi(a) = -a^2 / (2 e) - 1/2 - c
    params["log_std"] = torch.full((1,), 0.5, dtype=torch.float64)
    loss = pg_loss(model, params, obs, actions, adv, mask)
    logp = [-(a**2) / (2 * math.e) - 0.5 - HALF_LOG_2PI for a in (0.0, 1.0, 2.0)]
    expected = -(logp[0] * 1.0 + logp[1] * -1.0 + logp[2] * 0.5) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-14)


def gaussian_terms(s, a, weight, bias, log_std):
    """mean, log pi(a|s) and its gradients for a linear Gaussian policy (numpy)."""
    mu = weight @ s + bias
    sigma = np.exp(log_std)
    z = (a - mu) / sigma
    logp = float(np.sum(-0.5 * z**2 - log_std - HALF_LOG_2PI))
    d_mu = (a - mu) / sigma**2  # d log pi / d mean
    return mu, logp, {"W": np.outer(d_mu, s), "b": d_mu, "log_std": z**2 - 1}


def task_data(traj: Trajectories, adv: torch.Tensor, i: int) -> PGData:
    return PGData(traj.obs[i], traj.actions[i], adv[i], traj.mask[i])


POLICY = dict(weight=[[0.3, -0.2], [0.1, 0.5]], bias=[0.05, -0.1], log_std=[-0.3, 0.2])


def expected_pg(traj, adv, i, weight, bias, log_std):
    """Task i's loss -(1/N) sum log pi A and its gradient, from the formulas."""
    weight, bias, log_std = map(np.asarray, (weight, bias, log_std))
    total, grads, n = 0.0, {"W": 0.0, "b": 0.0, "log_std": 0.0}, 0
    for j in range(N_TRAJ):
        for t in range(LENGTHS[i][j]):
            s, a = traj.obs[i, j, t].numpy(), traj.actions[i, j, t].numpy()
            _, logp, g = gaussian_terms(s, a, weight, bias, log_std)
            A = adv[i, j, t].item()
            total += logp * A
            for k in grads:
                grads[k] = grads[k] + g[k] * A
            n += 1
    return -total / n, {k: -v / n for k, v in grads.items()}


def test_pg_loss_and_its_gradient_are_the_reinforce_estimate():
    traj = hand_made_batch()
    adv = advantages(traj, 0.99)
    model, params = linear_policy(**POLICY)
    for i in range(N_TASKS):
        loss = pg_loss(
            model, params, traj.obs[i], traj.actions[i], adv[i], traj.mask[i]
        )
        expected_loss, expected_grad = expected_pg(traj, adv, i, **POLICY)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
        grads = torch.autograd.grad(loss, list(params.values()))
        np.testing.assert_allclose(grads[0].numpy(), expected_grad["W"], **TIGHT)
        np.testing.assert_allclose(grads[1].numpy(), expected_grad["b"], **TIGHT)
        np.testing.assert_allclose(grads[2].numpy(), expected_grad["log_std"], **TIGHT)


@pytest.mark.parametrize("first_order", [False, True])
def test_inner_update_is_one_policy_gradient_step(first_order):
    traj = hand_made_batch()
    adv = advantages(traj, 0.99)
    model, params = linear_policy(**POLICY)
    lr = 0.1
    for i in range(N_TASKS):
        adapted = inner_update(model, params, task_data(traj, adv, i), lr, first_order)
        _, g = expected_pg(traj, adv, i, **POLICY)
        np.testing.assert_allclose(
            adapted["net.0.weight"].detach().numpy(),
            np.asarray(POLICY["weight"]) - lr * g["W"],
            **TIGHT,
        )
        np.testing.assert_allclose(
            adapted["net.0.bias"].detach().numpy(),
            np.asarray(POLICY["bias"]) - lr * g["b"],
            **TIGHT,
        )
        np.testing.assert_allclose(
            adapted["log_std"].detach().numpy(),
            np.asarray(POLICY["log_std"]) - lr * g["log_std"],
            **TIGHT,
        )


def expected_surrogate_and_kl(traj, adv, i, old, new):
    """-(1/N) sum pi_new/pi_old A and (1/N) sum KL(old || new) over task i's valid
    steps; ``old`` and ``new`` are (weight, bias, log_std) numpy triples."""
    surrogate, kl, n = 0.0, 0.0, 0
    for j in range(N_TRAJ):
        for t in range(LENGTHS[i][j]):
            s, a = traj.obs[i, j, t].numpy(), traj.actions[i, j, t].numpy()
            mu_old, logp_old, _ = gaussian_terms(s, a, *old)
            mu_new, logp_new, _ = gaussian_terms(s, a, *new)
            surrogate += math.exp(logp_new - logp_old) * adv[i, j, t].item()
            var_old, var_new = np.exp(2 * old[2]), np.exp(2 * new[2])
            kl += float(
                np.sum(
                    new[2]
                    - old[2]
                    + (var_old + (mu_old - mu_new) ** 2) / (2 * var_new)
                    - 0.5
                )
            )
            n += 1
    return -surrogate / n, kl / n


def post_data(traj, adv, model, old_params) -> PGData:
    """D' with the sampling (old) policy's means and log std, per task."""
    with torch.no_grad():
        w, b = old_params["net.0.weight"], old_params["net.0.bias"]
        old_mean = traj.obs @ w.T + b
    return PGData(
        traj.obs,
        traj.actions,
        adv,
        traj.mask,
        old_mean,
        old_params["log_std"].detach().expand(N_TASKS, ACT_DIM),
    )


def test_surrogate_is_minus_mean_advantage_and_kl_zero_at_the_old_policy():
    traj = hand_made_batch()
    adv = advantages(traj, 0.99)
    model, params = linear_policy(**POLICY)
    post = post_data(traj, adv, model, params)
    for i in range(N_TASKS):
        surrogate, kl = surrogate_and_kl(model, params, post.task(i))
        valid = adv[i][traj.mask[i] > 0]
        assert surrogate.item() == pytest.approx(-valid.mean().item(), abs=1e-12)
        assert kl.item() == pytest.approx(0.0, abs=1e-14)
        # There the surrogate's gradient is the ordinary policy gradient.
        g_s = torch.autograd.grad(surrogate, list(params.values()))
        g_pg = torch.autograd.grad(
            pg_loss(model, params, traj.obs[i], traj.actions[i], adv[i], traj.mask[i]),
            list(params.values()),
        )
        for a, b in zip(g_s, g_pg):
            torch.testing.assert_close(a, b, **TIGHT)


def test_surrogate_and_kl_at_another_policy():
    traj = hand_made_batch()
    adv = advantages(traj, 0.99)
    model, old_params = linear_policy(**POLICY)
    new = dict(
        weight=[[0.25, -0.1], [0.2, 0.45]], bias=[0.0, -0.05], log_std=[-0.2, 0.1]
    )
    _, new_params = linear_policy(**new)
    post = post_data(traj, adv, model, old_params)
    old_np = tuple(np.asarray(POLICY[k]) for k in ("weight", "bias", "log_std"))
    new_np = tuple(np.asarray(new[k]) for k in ("weight", "bias", "log_std"))
    for i in range(N_TASKS):
        surrogate, kl = surrogate_and_kl(model, new_params, post.task(i))
        exp_s, exp_kl = expected_surrogate_and_kl(traj, adv, i, old_np, new_np)
        assert surrogate.item() == pytest.approx(exp_s, rel=1e-12)
        assert kl.item() == pytest.approx(exp_kl, rel=1e-12)
        assert exp_kl > 1e-3  # the policies really differ


@pytest.mark.parametrize("objective", [meta_objective_loop, meta_objective_vmap])
def test_meta_objective_is_the_mean_post_update_surrogate_and_kl(objective):
    """theta'_i = theta - alpha grad L_i(theta) on D_i (closed form), then the mean
    over tasks of the surrogate and KL of theta'_i on D'_i against the policies that
    sampled D' (here: the adapted ones, perturbed, so that the ratio is not 1)."""
    traj = hand_made_batch()
    adv = advantages(traj, 0.99)
    model, params = linear_policy(**POLICY)
    lr = 0.1
    pre = PGData(traj.obs, traj.actions, adv, traj.mask)
    # D': the same steps, other advantages, sampled by a fixed "old" policy.
    adv_post = advantages(traj, 0.9)
    old = dict(weight=[[0.2, -0.3], [0.0, 0.4]], bias=[0.1, 0.0], log_std=[-0.1, 0.0])
    _, old_params = linear_policy(**old)
    post = post_data(traj, adv_post, model, old_params)
    surrogate, kl = objective(model, params, pre, post, lr)
    old_np = tuple(np.asarray(old[k]) for k in ("weight", "bias", "log_std"))
    surrogates, kls = [], []
    for i in range(N_TASKS):
        _, g = expected_pg(traj, adv, i, **POLICY)
        adapted = (
            np.asarray(POLICY["weight"]) - lr * g["W"],
            np.asarray(POLICY["bias"]) - lr * g["b"],
            np.asarray(POLICY["log_std"]) - lr * g["log_std"],
        )
        s, k = expected_surrogate_and_kl(traj, adv_post, i, old_np, adapted)
        surrogates.append(s)
        kls.append(k)
    assert surrogate.item() == pytest.approx(np.mean(surrogates), rel=1e-11)
    assert kl.item() == pytest.approx(np.mean(kls), rel=1e-11)
