"""Meta-RL (mamllib.rl): environment, estimator, CG, TRPO, meta-gradient, paths."""

import math

import pytest
import torch
from gradcheck import flat

from mamllib.experiments.metarl import GoalBatch, train_policy
from mamllib.models import MLP
from mamllib.presets import make_config
from mamllib.rl.envs import Navigation2D, sample_goals
from mamllib.rl.metarl import (
    PGData,
    adapted_policies,
    inner_update,
    meta_objective_loop,
    meta_objective_vmap,
    meta_trpo_problem,
    pg_loss,
)
from mamllib.rl.policy import (
    gaussian_kl,
    init_policy_params,
    per_task_mean,
    policy_mean,
    policy_model,
)
from mamllib.rl.rollouts import (
    advantages,
    discounted_returns,
    fit_linear_baseline,
    sample_trajectories,
)
from mamllib.rl.share import TaskShare, randn_tasks
from mamllib.rl.trpo import conjugate_gradient, direct_problem, trpo_step

# --------------------------------------------------------------------------------------
# The environment against its specification
# --------------------------------------------------------------------------------------


def test_navigation_reward_clipping_and_termination():
    goals = torch.tensor([[0.3, -0.2], [0.05, 0.0]])
    env = Navigation2D(goals, n_traj=1)
    assert torch.equal(env.reset(), torch.zeros(2, 1, 2))
    # Raw action 0.5 -> velocity 0.05; raw 5 -> 0.5, clipped to 0.1.
    obs, reward, done = env.step(torch.tensor([[[0.5, 5.0]], [[0.5, 0.0]]]))
    torch.testing.assert_close(obs[0, 0], torch.tensor([0.05, 0.1]))
    torch.testing.assert_close(
        reward[0, 0], -torch.tensor([0.25, 0.3]).norm(), rtol=1e-6, atol=1e-7
    )
    # Task 1 lands exactly on its goal: done, and its reward is -0.
    assert done.tolist() == [[False], [True]]
    assert reward[1, 0].item() == pytest.approx(0.0, abs=1e-7)
    # After the end: frozen position, zero reward, still done.
    obs, reward, done = env.step(torch.ones(2, 1, 2))
    torch.testing.assert_close(obs[1, 0], torch.tensor([0.05, 0.0]))
    assert reward[1, 0].item() == 0.0 and done[1, 0]
    assert not done[0, 0]
    # Within 0.01 (Euclidean) ends the episode; 0.011 away does not.
    env = Navigation2D(torch.tensor([[0.0, 0.1 + 0.009], [0.0, 0.1 + 0.011]]), 1)
    env.reset()
    _, _, done = env.step(torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]]))
    assert done.flatten().tolist() == [True, False]


def test_navigation_squared_reward_oracle_observation_and_goals():
    goals = torch.tensor([[0.3, 0.4]])
    env = Navigation2D(goals, n_traj=2, reward="squared", oracle=True)
    obs = env.reset()
    assert obs.shape == (1, 2, 4)
    torch.testing.assert_close(obs[0, 1, 2:], goals[0])
    _, reward, _ = env.step(torch.zeros(1, 2, 2))
    torch.testing.assert_close(reward, torch.full((1, 2), -0.25))
    g = sample_goals(1000, torch.Generator().manual_seed(0))
    assert g.min() >= -0.5 and g.max() <= 0.5 and g.shape == (1000, 2)
    # The paper's step-0 return (-40.41) fits the distance reward on these goals.
    assert -100 * g.norm(dim=1).mean().item() == pytest.approx(-38.3, abs=1.0)
    with pytest.raises(ValueError, match="reward"):
        Navigation2D(goals, 1, reward="cubed")


def test_rollout_masks_stop_at_the_goal():
    model = policy_model(2, 2, (8,))
    params = init_policy_params(model, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a policy that always heads right at full speed
        for k in params:
            params[k].zero_()
        params["net.2.bias"].copy_(torch.tensor([10.0, 0.0]))
        params["log_std"].fill_(-20.0)
    env = Navigation2D(torch.tensor([[0.3, 0.0]]), n_traj=3)
    traj = sample_trajectories(model, params, env, 10, torch.Generator())
    # Steps 1, 2, 3 reach x = 0.1, 0.2, 0.3 (done on the third): 3 valid steps.
    assert traj.mask[0, 0].tolist() == [1.0] * 3 + [0.0] * 7
    torch.testing.assert_close(
        traj.returns()[0], torch.full((3,), -0.3), rtol=1e-5, atol=1e-6
    )
    assert traj.positions.shape == (1, 3, 11, 2)


def test_a_share_of_the_tasks_samples_what_one_process_samples_for_them():
    """A rank's tasks 2:4 of 5 get the trajectories of a single process, and its
    stream ends where a single process's does (the ranks stay in step)."""
    model = policy_model(2, 2, (8,))
    params = init_policy_params(model, torch.Generator().manual_seed(0))
    goals = sample_goals(5, torch.Generator().manual_seed(1))
    g_one, g_share = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    one = sample_trajectories(model, params, Navigation2D(goals, 3), 6, g_one)
    share = TaskShare(2, 4, 5)
    part = sample_trajectories(
        model, params, Navigation2D(goals[2:4], 3), 6, g_share, share
    )
    for k, v in vars(part).items():
        assert torch.equal(v, getattr(one, k)[2:4]), k
    assert torch.equal(g_share.get_state(), g_one.get_state())
    assert share.fraction == 0.4


def test_goal_batches_split_into_contiguous_shares():
    batch = GoalBatch(sample_goals(5, torch.Generator().manual_seed(0)))
    assert batch.share is None and len(batch) == 5
    second = batch.subset(torch.arange(5).tensor_split(2)[1])  # as shard takes it
    assert second.share == TaskShare(3, 5, 5) and torch.equal(
        second.goals, batch.goals[3:]
    )
    assert second.subset(slice(1, 2)).share == TaskShare(4, 5, 5)
    with pytest.raises(ValueError, match="contiguous"):
        batch.subset(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="start < stop"):
        TaskShare(3, 3, 5)
    with pytest.raises(ValueError, match="rows"):
        randn_tasks((3, 2), None, torch.float32, TaskShare(0, 2, 5))


def test_discounted_returns_and_linear_baseline():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones_like(rewards)
    mask[0, 1, 4:] = 0
    returns = discounted_returns(rewards, mask, 0.9)
    expected = torch.zeros_like(rewards)
    running = torch.zeros(2, 3, dtype=torch.float64)
    for t in reversed(range(6)):
        running = rewards[..., t] * mask[..., t] + 0.9 * running
        expected[..., t] = running
    torch.testing.assert_close(returns, expected)
    # The baseline is a least-squares fit of rllab's features (small ridge).
    obs = torch.randn(2, 3, 6, 2, generator=gen, dtype=torch.float64)
    values = fit_linear_baseline(obs, returns, mask, reg_coeff=0.0)
    from mamllib.rl.rollouts import baseline_features

    f = baseline_features(obs)[0][mask[0].bool()]
    w = torch.linalg.lstsq(f, returns[0][mask[0].bool()][:, None]).solution
    torch.testing.assert_close(values[0][mask[0].bool()], (f @ w).squeeze(1))
    assert (values[0, 1, 4:] == 0).all()


# --------------------------------------------------------------------------------------
# The policy-gradient estimator is unbiased (a one-step Gaussian bandit)
# --------------------------------------------------------------------------------------


def test_policy_gradient_estimator_is_unbiased_on_a_bandit():
    """r(a) = -||a - c||^2 with a ~ N(mu, sigma^2 I) in 2-D: E r = -||mu - c||^2 -
    2 sigma^2, so d/dmu = -2 (mu - c) and d/dlog sigma_d = -2 sigma_d^2. The estimate
    -grad pg_loss (REINFORCE, advantages = rewards, also with a constant baseline)
    must match within 4 standard errors, and the test must be able to fail: a gradient
    off by 30 % lies outside that margin."""
    model = MLP((1, 2))  # obs = 0: the mean is the output bias
    mu, log_std, c = torch.tensor([-0.5, 1.5]), torch.tensor([0.0, -0.5]), 0.5
    params = {
        "net.0.weight": torch.zeros(2, 1, requires_grad=True),
        "net.0.bias": mu.clone().requires_grad_(True),
        "log_std": log_std.clone().requires_grad_(True),
    }
    exact = torch.cat([-2 * (mu - c), -2 * torch.exp(2 * log_std)])
    gen = torch.Generator().manual_seed(0)
    n_batches, n = 400, 100
    actions = mu + torch.exp(log_std) * torch.randn(n_batches, n, 2, generator=gen)
    rewards = -((actions - c) ** 2).sum(-1)
    obs, mask = torch.zeros(n, 1), torch.ones(n)
    for baseline in (0.0, rewards.mean().item()):
        estimates = []
        for b in range(n_batches):  # one estimate per batch of n samples
            loss = pg_loss(model, params, obs, actions[b], rewards[b] - baseline, mask)
            g = torch.autograd.grad(loss, [params["net.0.bias"], params["log_std"]])
            estimates.append(-torch.cat(g))
        estimates = torch.stack(estimates)
        se = estimates.std(0) / math.sqrt(n_batches)
        error = (estimates.mean(0) - exact).abs()
        assert (error < 4 * se).all(), (estimates.mean(0), exact, se)
        assert (0.3 * exact.abs() > 4 * se).all()  # the margin can fail


# --------------------------------------------------------------------------------------
# Conjugate gradient and TRPO
# --------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_an_spd_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, n_iters=60, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    # A well-conditioned system is solved in few iterations (rllab uses 10).
    d = torch.diag(torch.linspace(1.0, 2.0, 30, dtype=torch.float64))
    x = conjugate_gradient(lambda v: d @ v, b, n_iters=10)
    torch.testing.assert_close(x, b / torch.diag(d), rtol=1e-6, atol=1e-6)


def nav_problem(
    dtype=torch.float32, n_tasks=3, n_traj=4, horizon=8, hidden=(16,), lr=0.1
):
    """Real sampled navigation data: pre-update D_i and post-update D'_i."""
    config = {"discount": 0.99}
    gen = torch.Generator().manual_seed(0)
    model = policy_model(2, 2, hidden)
    params = init_policy_params(model, gen, dtype=dtype)
    with torch.no_grad():  # biases start at 0 and the first observation is 0: move
        for k, v in params.items():  # off that ReLU kink so finite differences hold
            if k.endswith("bias"):
                v.add_(0.1 * torch.randn(v.shape, generator=gen, dtype=dtype))
    env = Navigation2D(sample_goals(n_tasks, gen, dtype=dtype), n_traj)
    traj = sample_trajectories(model, params, env, horizon, gen)
    pre = PGData(traj.obs, traj.actions, advantages(traj, 0.99), traj.mask)
    adapted = adapted_policies(model, params, pre, lr)
    traj2 = sample_trajectories(model, adapted, env, horizon, gen)
    post = PGData(
        traj2.obs,
        traj2.actions,
        advantages(traj2, config["discount"]),
        traj2.mask,
        per_task_mean(model, adapted, traj2.obs),
        adapted["log_std"],
    )
    return model, params, pre, post


@pytest.mark.parametrize("max_kl", [0.01, 1e-4])
def test_trpo_step_respects_the_kl_bound(max_kl):
    model, params, pre, post = nav_problem()
    loss, gradient, hvp = meta_trpo_problem(model, params, pre, post, 0.1)

    def evaluate(p):
        return meta_objective_loop(model, p, pre, post, 0.1, True)

    new, stats = trpo_step(params, loss, gradient, hvp, evaluate, max_kl=max_kl)
    assert stats.accepted and stats.loss_after < stats.loss_before
    # Recompute the KL independently (the loop path, second order).
    new_loss, kl = meta_objective_loop(model, new, pre, post, 0.1)
    assert 0 < kl.item() <= max_kl
    assert new_loss.item() == pytest.approx(stats.loss_after, rel=1e-4, abs=1e-6)
    # The full quadratic step aims at the bound: the KL reached is of its order.
    assert kl.item() > 0.1 * max_kl * stats.step_fraction**2


def test_trpo_step_keeps_params_when_nothing_improves():
    model, params, pre, post = nav_problem()
    loss, gradient, hvp = meta_trpo_problem(model, params, pre, post, 0.1)
    new, stats = trpo_step(
        params,
        loss,
        -gradient,
        hvp,
        lambda p: meta_objective_loop(model, p, pre, post, 0.1, True),
        max_backtracks=3,
    )  # an ascent direction: no step may pass the line search
    assert not stats.accepted
    for k in params:
        assert torch.equal(new[k], params[k])


# --------------------------------------------------------------------------------------
# The meta-gradient through the inner policy-gradient step
# --------------------------------------------------------------------------------------


def test_meta_gradient_matches_finite_differences_float64():
    """Fixed sampled actions, advantages and old policies: the surrogate S(theta)
    through the inner step is a smooth function whose autograd gradient (second
    order) must match central differences; first order must not."""
    model, params, pre, post = nav_problem(torch.float64, n_tasks=2, horizon=5, lr=0.5)

    def surrogate(p, first_order=False):
        return meta_objective_loop(model, p, pre, post, 0.5, first_order)[0]

    g = torch.autograd.grad(surrogate(params), list(params.values()))
    g1 = torch.autograd.grad(surrogate(params, True), list(params.values()))
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(3):
        v = {
            k: torch.randn(p.shape, generator=gen, dtype=p.dtype)
            for k, p in params.items()
        }
        with torch.enable_grad():
            plus = surrogate(
                {
                    k: (p + eps * v[k]).detach().requires_grad_()
                    for k, p in params.items()
                }
            )
            minus = surrogate(
                {
                    k: (p - eps * v[k]).detach().requires_grad_()
                    for k, p in params.items()
                }
            )
        numeric = (plus - minus).item() / (2 * eps)
        analytic = (flat(dict(zip(params, g))) * flat(v)).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-10)
    assert flat(dict(zip(params, g))).abs().max() > 1e-3
    assert not torch.allclose(flat(dict(zip(params, g))), flat(dict(zip(params, g1))))


def test_kl_hessian_vector_product_matches_finite_differences_and_third_order():
    """meta_trpo_problem's J^T F J v equals the third-order double backward of the
    loop's KL, and finite differences of the KL's gradient (float64)."""
    model, params, pre, post = nav_problem(torch.float64, n_tasks=2, horizon=5, lr=0.5)
    lr = 0.5
    loss, gradient, hvp = meta_trpo_problem(model, params, pre, post, lr)
    loss_d, gradient_d, hvp_d = direct_problem(
        params, lambda p: meta_objective_loop(model, p, pre, post, lr)
    )
    assert loss == pytest.approx(loss_d, abs=1e-12)
    torch.testing.assert_close(gradient, gradient_d)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(gradient.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hvp_d(v), rtol=1e-7, atol=1e-10)

    def kl_grad(shift):
        from mamllib.rl.trpo import flatten, unflatten

        p = {
            k: (params[k] + x).detach().requires_grad_()
            for k, x in unflatten(shift, params).items()
        }
        kl = meta_objective_loop(model, p, pre, post, lr)[1]
        return flatten(torch.autograd.grad(kl, list(p.values())))

    eps = 1e-5
    numeric = (kl_grad(eps * v) - kl_grad(-eps * v)) / (2 * eps)
    torch.testing.assert_close(hvp(v), numeric, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------
# The fast path is the loop
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_objective_equals_loop(first_order):
    model, params, pre, post = nav_problem(n_tasks=4, hidden=(32, 32))
    leaves = list(params.values())
    s_l, k_l = meta_objective_loop(model, params, pre, post, 0.1, first_order)
    s_v, k_v = meta_objective_vmap(model, params, pre, post, 0.1, first_order)
    torch.testing.assert_close(s_v, s_l, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k_v, k_l, rtol=1e-5, atol=1e-7)
    g_l = torch.autograd.grad(s_l, leaves)
    g_v = torch.autograd.grad(s_v, leaves)
    for a, b in zip(g_v, g_l):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # ... and the fast TRPO problem is the loop's by plain (third-order) autograd.
    _, gradient, hvp = meta_trpo_problem(model, params, pre, post, 0.1, first_order)
    _, gradient_d, hvp_d = direct_problem(
        params,
        lambda p: meta_objective_loop(model, p, pre, post, 0.1, first_order),
    )
    torch.testing.assert_close(gradient, gradient_d, rtol=1e-4, atol=1e-6)
    v = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hvp(v), hvp_d(v), rtol=1e-3, atol=1e-5)


def test_batched_adaptation_and_policies_equal_per_task():
    model, params, pre, _ = nav_problem(n_tasks=3)
    adapted = adapted_policies(model, params, pre, 0.1)
    for i in range(3):
        one = inner_update(model, params, pre.task(i), 0.1, first_order=True)
        for k in params:
            torch.testing.assert_close(adapted[k][i], one[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            per_task_mean(model, adapted, pre.obs)[i],
            policy_mean(model, {k: v[i] for k, v in adapted.items()}, pre.obs[i]),
        )
    # The KL of a policy to itself is zero.
    m = torch.randn(5, 2)
    assert gaussian_kl(m, torch.zeros(2), m, torch.zeros(2)).abs().max() == 0


# --------------------------------------------------------------------------------------
# Training: exact resume; presets validated
# --------------------------------------------------------------------------------------


def tiny_config(**overrides):
    return make_config(
        "navigation",
        "ci",
        hidden_sizes=[16],
        meta_batch_size=2,
        n_traj=3,
        horizon=10,
        checkpoint_every=1,
        **overrides,
    )


def test_resume_reaches_the_same_parameters(tmp_path):
    straight = train_policy("maml", tiny_config(n_iterations=3))
    ckpt = tmp_path / "checkpoint-maml.pt"
    first = train_policy("maml", tiny_config(n_iterations=1), ckpt)
    assert first.iterations == 1
    resumed = train_policy("maml", tiny_config(n_iterations=3), ckpt)
    assert resumed.resumed_from == 1 and resumed.iterations == 3
    for k in straight.params:
        assert torch.equal(resumed.params[k], straight.params[k])
    assert resumed.history == straight.history
    with pytest.raises(ValueError, match="different settings"):
        train_policy("maml", tiny_config(n_iterations=3, inner_lr=0.2), ckpt)


def test_progress_lines_report_the_returns_at_each_checkpoint(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MAMLLIB_PROGRESS", "lines")
    train_policy("maml", tiny_config(n_iterations=2), tmp_path / "checkpoint-maml.pt")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "maml: iteration 1/2",
        "maml: iteration 2/2",
    ]
    assert all(", return" in line and " s/it, about " in line for line in lines)


def test_navigation_presets_are_validated():
    paper = make_config("navigation", "paper")
    assert paper["meta_batch_size"] == 20 and paper["n_traj"] == 20
    assert paper["horizon"] == 100 and paper["inner_lr"] == 0.1
    assert paper["max_kl"] == 0.01 and paper["n_iterations"] == 500
    with pytest.raises(ValueError, match="max_kl"):
        make_config("navigation", "ci", max_kl=-1.0)
    with pytest.raises(ValueError, match="reward"):
        make_config("navigation", "ci", reward="squared-ish")
