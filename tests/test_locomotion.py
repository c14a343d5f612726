"""Locomotion (mamllib.rl.locomotion): physics equal to gymnasium's, rewards and
terminations as specified, goals, reproducibility, and MAML-TRPO running on it."""

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from mamllib.experiments.metarl import (  # noqa: E402
    adaptation_returns,
    initial_params,
    models,
    process,
    sample_trajectories,
    train_policy,
    with_old_policy,
)
from mamllib.presets import make_config  # noqa: E402
from mamllib.rl.locomotion import (  # noqa: E402
    ROBOTS,
    Locomotion,
    gymnasium_env,
    sample_goals,
)
from mamllib.rl.metarl import meta_objective_loop, meta_objective_vmap  # noqa: E402
from mamllib.rl.share import TaskShare  # noqa: E402


@pytest.mark.parametrize("robot", ["half_cheetah", "ant"])
def test_batched_step_equals_gymnasium_step(robot):
    """Every episode of the batch follows gymnasium's own env.step from the same state:
    observation and forward velocity, 30 control steps."""
    g = torch.Generator().manual_seed(0)
    env = Locomotion(robot, "direction", torch.tensor([1.0, -1.0]), 3, g)
    env.reset()
    actions = torch.rand(30, 2, 3, env.act_dim, generator=g) * 2.4 - 1.2
    refs = {}
    for i in (0, 4):
        refs[i] = gymnasium_env(robot)
        refs[i].reset(seed=0)
        refs[i].set_state(env.qpos[i].copy(), env.qvel[i].copy())
    for t in range(30):
        x_before = env.qpos[:, 0].copy()
        obs, reward, done = env.step(actions[t])
        velocity = (env.qpos[:, 0] - x_before) / env.dt
        for i, ref in refs.items():
            a = actions[t].reshape(-1, env.act_dim)[i].clamp(-1, 1).numpy()
            ref_x = ref.data.qpos[0]
            ref_obs, _, _, _, info = ref.step(a)
            np.testing.assert_allclose(
                obs.reshape(-1, env.obs_dim)[i].numpy(), ref_obs, atol=1e-5
            )
            ref_velocity = (ref.data.qpos[0] - ref_x) / ref.dt
            assert velocity[i] == pytest.approx(ref_velocity, abs=1e-6)
            if robot == "half_cheetah":  # the ant's info uses xpos, a substep behind
                assert velocity[i] == pytest.approx(info["x_velocity"], abs=1e-6)
    assert env.obs_dim == {"half_cheetah": 17, "ant": 27}[robot]
    assert env.dt == pytest.approx({"half_cheetah": 0.01, "ant": 0.02}[robot])


@pytest.mark.parametrize("robot", ["half_cheetah", "ant"])
@pytest.mark.parametrize("task", ["velocity", "direction"])
def test_rewards_follow_the_specification(robot, task):
    """Reward from the forward velocity (x after - x before) / dt and the clipped
    action, as the rllab environments of cbfinn/maml_rl."""
    g = torch.Generator().manual_seed(1)
    goals = sample_goals(robot, task, 3, g)
    env = Locomotion(robot, task, goals, 2, g)
    env.reset()
    spec = ROBOTS[robot]
    for _ in range(5):
        action = torch.randn(3, 2, env.act_dim, generator=g) * 1.5
        x_before = torch.from_numpy(env.qpos[:, 0].copy()).float().reshape(3, 2)
        alive = env.alive.clone()
        _, reward, _ = env.step(action)
        x_after = torch.from_numpy(env.qpos[:, 0].copy()).float().reshape(3, 2)
        v = (x_after - x_before) / env.dt
        goal = goals[:, None]
        if task == "velocity":
            expected = -(v - goal).abs() + spec.velocity_bonus
        else:
            expected = goal * v
        ctrl = (action.clamp(-1, 1) ** 2).sum(-1)
        expected = expected - spec.ctrl_cost * ctrl + spec.alive_bonus
        expected = torch.where(alive, expected, torch.zeros_like(expected))
        torch.testing.assert_close(reward, expected, atol=1e-4, rtol=1e-4)
    assert spec.ctrl_cost == {"half_cheetah": 0.05, "ant": 0.005}[robot]


def test_ant_terminates_outside_the_height_range_and_freezes():
    env = Locomotion("ant", "direction", torch.tensor([1.0]), 2)
    env.reset()
    env.qpos[0, 2] = 0.1  # the first ant has fallen through: z < 0.2
    _, reward, done = env.step(torch.zeros(1, 2, env.act_dim))
    assert done.tolist() == [[True, False]]
    assert reward[0, 0] != 0  # the terminal step's reward counts
    frozen = env.state[0].copy()
    _, reward, done = env.step(torch.ones(1, 2, env.act_dim))
    assert reward[0, 0] == 0 and done[0, 0]
    np.testing.assert_array_equal(env.state[0], frozen)
    assert not done[0, 1]


def test_ended_episodes_are_not_simulated_and_the_others_step_as_in_one_batch():
    """The step simulates only the running episodes: each one's state is the one a
    rollout of the whole batch gives it, bit for bit, and ended ones stay frozen."""
    from mujoco import rollout

    g = torch.Generator().manual_seed(0)
    env = Locomotion("ant", "direction", torch.tensor([1.0, -1.0]), 4, g)
    env.reset()
    env.qpos[[1, 6], 2] = 0.1  # two ants below the height range: they end now
    for _ in range(4):
        action = torch.randn(2, 4, env.act_dim, generator=g)
        before, alive = env.state.copy(), env.alive.reshape(-1).numpy().copy()
        control = action.clamp(-1, 1).reshape(8, 1, -1).double().numpy()
        repeated = np.repeat(control, env.spec.frame_skip, axis=1)
        whole, _ = rollout.rollout(env.model, env.datas[0], before, repeated)
        env.step(action)
        np.testing.assert_array_equal(env.state[alive], whole[alive, -1])
        np.testing.assert_array_equal(env.state[~alive], before[~alive])
    assert env.alive.reshape(-1).tolist() == [True, False] + [True] * 4 + [False, True]


def test_goals_reset_noise_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    velocity = sample_goals("half_cheetah", "velocity", 5000, g)
    assert (
        0 <= velocity.min() and velocity.max() <= 2 and abs(velocity.mean() - 1) < 0.05
    )
    ant = sample_goals("ant", "velocity", 5000, g)
    assert ant.max() <= 3 and abs(ant.mean() - 1.5) < 0.07
    direction = sample_goals("ant", "direction", 5000, g)
    assert set(direction.tolist()) == {-1.0, 1.0} and abs(direction.mean()) < 0.05
    env = Locomotion("half_cheetah", "velocity", torch.ones(50), 20, g)
    env.reset()
    assert np.std(env.qpos - env.model.qpos0) == pytest.approx(0.01, rel=0.05)
    assert np.std(env.qvel) == pytest.approx(0.1, rel=0.05)

    def rollout(seed):
        gen = torch.Generator().manual_seed(seed)
        e = Locomotion("half_cheetah", "direction", torch.tensor([1.0, -1.0]), 3, gen)
        e.reset()
        for _ in range(10):
            obs, _, _ = e.step(torch.randn(2, 3, 6, generator=gen))
        return obs

    torch.testing.assert_close(rollout(3), rollout(3), rtol=0, atol=0)
    assert not torch.equal(rollout(3), rollout(4))


def test_a_share_of_the_tasks_starts_where_one_process_starts_them():
    """Tasks 1:3 of 4 drawn by one rank: the initial states and trajectories a single
    process draws for them, and the stream left where a single process leaves it."""
    config = make_config("half_cheetah-direction", "ci")
    model = models(config)["maml"]
    params = initial_params("maml", config)
    goals = torch.tensor([1.0, -1.0, -1.0, 1.0])
    g_one, g_share = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    env = Locomotion("half_cheetah", "direction", goals, 2, g_one)
    one = sample_trajectories(model, params, env, 5, g_one)
    env = Locomotion(
        "half_cheetah", "direction", goals[1:3], 2, g_share, share=TaskShare(1, 3, 4)
    )
    part = sample_trajectories(model, params, env, 5, g_share, TaskShare(1, 3, 4))
    for k, v in vars(part).items():
        assert torch.equal(v, getattr(one, k)[1:3]), k
    assert torch.equal(g_share.get_state(), g_one.get_state())


def test_threads_give_the_same_states():
    def run(threads):
        gen = torch.Generator().manual_seed(0)
        e = Locomotion(
            "half_cheetah", "direction", torch.tensor([1.0]), 8, gen, threads=threads
        )
        e.reset()
        for _ in range(5):
            obs, _, _ = e.step(torch.randn(1, 8, 6, generator=gen))
        return obs

    torch.testing.assert_close(run(1), run(2), rtol=0, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="robot"):
        sample_goals("hopper", "velocity", 3)
    with pytest.raises(ValueError, match="task"):
        sample_goals("ant", "jump", 3)
    with pytest.raises(ValueError, match="goals"):
        Locomotion("ant", "velocity", torch.ones(2, 2), 3)
    with pytest.raises(ValueError, match="n_traj"):
        Locomotion("ant", "velocity", torch.ones(2), 0)
    with pytest.raises(ValueError, match="sim_threads"):
        make_config("ant-velocity", "ci", sim_threads=0)


def test_oracle_sees_the_goal():
    goals = torch.tensor([0.5, 1.5])
    env = Locomotion("half_cheetah", "velocity", goals, 2, oracle=True)
    obs = env.reset()
    assert obs.shape == (2, 2, 18)
    torch.testing.assert_close(obs[..., -1], goals[:, None].expand(2, 2))


def test_meta_objective_fast_path_equals_loop_on_cheetah_data():
    config = make_config("half_cheetah-direction", "ci")
    model = models(config)["maml"]
    g = torch.Generator().manual_seed(0)
    params = initial_params("maml", config)
    env = Locomotion("half_cheetah", "direction", torch.tensor([1.0, -1.0]), 4, g)
    traj = sample_trajectories(model, params, env, 30, g)
    pre = process(traj, config)
    post = with_old_policy(
        model, params, sample_trajectories(model, params, env, 30, g), config
    )
    loop = meta_objective_loop(model, params, pre, post, 0.1)
    fast = meta_objective_vmap(model, params, pre, post, 0.1)
    for a, b in zip(loop, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    g_loop = torch.autograd.grad(loop[0], list(params.values()))
    g_fast = torch.autograd.grad(fast[0], list(params.values()))
    for a, b in zip(g_loop, g_fast):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("experiment", ["half_cheetah-direction", "ant-velocity"])
def test_ci_run_trains_resumes_and_evaluates(tmp_path, experiment):
    """The ci preset end to end: MAML-TRPO iterations, a checkpoint that resumes,
    returns after 0 and 1 adaptation steps."""
    config = make_config(experiment, "ci")
    checkpoint = tmp_path / "checkpoint-maml.pt"
    first = train_policy("maml", {**config, "n_iterations": 1}, checkpoint)
    assert first.iterations == 1
    resumed = train_policy("maml", config, checkpoint)
    straight = train_policy("maml", config, tmp_path / "other.pt")
    assert resumed.resumed_from == 1 and resumed.iterations == 2
    for k in straight.params:
        torch.testing.assert_close(resumed.params[k], straight.params[k])
    returns, paths = adaptation_returns("maml", straight.params, config, keep_paths=1)
    assert returns.shape == (config["n_eval_tasks"], config["n_eval_steps"] + 1)
    assert torch.isfinite(returns).all()
    assert paths[0].shape[-1] == 2
