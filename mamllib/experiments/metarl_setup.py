"""Meta-RL's experiment from its config: environments, goals, policy networks,
initial parameters (part of :mod:`mamllib.experiments.metarl`).

The experiment (``config["experiment"]``) picks the environment: ``navigation``
(:class:`~mamllib.rl.envs.Navigation2D`) or ``<robot>-<task>`` such as
``half_cheetah-direction`` (:class:`~mamllib.rl.locomotion.Locomotion`).
"""

from __future__ import annotations

from typing import Any

import torch

from mamllib.models import MLP, Params
from mamllib.rl.envs import Navigation2D, sample_goals
from mamllib.rl.policy import init_policy_params, policy_model
from mamllib.rl.share import TaskShare
from mamllib.tasks import make_generator


def is_locomotion(config: dict[str, Any]) -> bool:
    return config.get("experiment", "navigation") != "navigation"


def _robot_task(config: dict[str, Any]) -> tuple[str, str]:
    """``"half_cheetah-direction"`` -> ``("half_cheetah", "direction")``."""
    robot, task = config["experiment"].split("-")
    return robot, task


def make_env(
    config: dict[str, Any],
    goals: torch.Tensor,
    n_traj: int,
    oracle: bool,
    generator: torch.Generator,
    share: TaskShare | None = None,
):
    """The experiment's batch of environments for ``goals`` (``generator`` draws the
    locomotion's initial states; ``share`` says which tasks of the meta-batch the
    goals are, see :mod:`mamllib.rl.share`)."""
    if not is_locomotion(config):
        return Navigation2D(goals, n_traj, config["reward"], oracle=oracle)
    from mamllib.rl.locomotion import Locomotion

    robot, task = _robot_task(config)
    return Locomotion(
        robot,
        task,
        goals,
        n_traj,
        generator,
        oracle=oracle,
        threads=config.get("sim_threads", 1),
        share=share,
    )


def sample_task_goals(
    config: dict[str, Any], n_tasks: int, generator: torch.Generator
) -> torch.Tensor:
    """Goals of ``n_tasks`` tasks of the experiment."""
    if not is_locomotion(config):
        return sample_goals(n_tasks, generator)
    from mamllib.rl import locomotion

    return locomotion.sample_goals(*_robot_task(config), n_tasks, generator)


def env_dims(config: dict[str, Any]) -> tuple[int, int]:
    """(observation, action) sizes without the oracle's goal."""
    if not is_locomotion(config):
        return 2, 2
    from mamllib.rl.locomotion import dims

    return dims(_robot_task(config)[0])


def models(config: dict[str, Any]) -> dict[str, MLP]:
    """Mean networks: obs -> 100 -> 100 -> actions (navigation 2 -> 2, cheetah
    17 -> 6, ant 27 -> 8); the oracle sees the goal too (navigation: 2 more inputs,
    locomotion: 1)."""
    hidden = tuple(config["hidden_sizes"])
    obs_dim, act_dim = env_dims(config)
    goal_dim = 1 if is_locomotion(config) else 2
    return {
        "maml": policy_model(obs_dim, act_dim, hidden),
        "pretrained": policy_model(obs_dim, act_dim, hidden),
        "random": policy_model(obs_dim, act_dim, hidden),
        "oracle": policy_model(obs_dim + goal_dim, act_dim, hidden),
    }


def initial_params(method: str, config: dict[str, Any]) -> Params:
    """The method's starting point, from the run's ``init`` stream."""
    return init_policy_params(
        models(config)[method], make_generator(config["seed"], "init")
    )
