"""Half-cheetah and ant locomotion (paper §5.3), many episodes stepped in one call.

The robots are gymnasium's MuJoCo v5 models (``half_cheetah.xml``, ``ant.xml`` from the
``gymnasium[mujoco]`` package); a whole meta-batch of ``[n_tasks, n_traj]`` episodes is
advanced by one call to ``mujoco.rollout`` per control step (C++, no Python loop over
environments), and the policy is called once per step on all of them. The tasks are the
paper's:

* goal velocity: reward ``-|v - v_goal|``, v_goal ~ U[0, 2] (cheetah) or U[0, 3] (ant);
* goal direction: reward ``d * v``, d = +1 (forward) or -1 (backward) with probability
  1/2 each (the code draws U[0, 2] and thresholds at 1, the same thing).

``v`` is the forward (x) velocity. Every difference from the rllab environments that
cbfinn/maml_rl used (``half_cheetah_env_rand*.py``, ``ant_env_rand*.py``), and why:

===================  ===========================  =====================================
                     rllab (cbfinn/maml_rl)        here
===================  ===========================  =====================================
model                rllab's xml                   gymnasium v5's xml (same bodies,
                                                   joints, gears; ant: actuators in
                                                   [-1, 1] with gear 150, which is
                                                   rllab's [-150, 150] after its
                                                   ``normalize`` wrapper)
control step         cheetah 0.01 s, ant 0.02 s    the same: frame skip 1 (cheetah) and
                     (frame skip 1)                2 (ant: timestep 0.01); gymnasium's
                                                   default frame skip is 5
forward velocity     torso centre-of-mass          (x after - x before) / dt of the
                     velocity after the step       root, gymnasium's definition
observation          cheetah 20: qpos[1:], qvel,   gymnasium's default without contact
                     torso COM (x included);       forces: cheetah 17 (qpos[1:], qvel),
                     ant 125: qpos, qvel, clipped  ant 27 (qpos[2:], qvel); no absolute
                     contact forces, torso         position (``mujoco.rollout`` returns
                     rotation matrix and COM       states, not contact forces)
control cost         cheetah 0.05 |a|^2, ant       the same, on the clipped action
                     0.005 |a|^2 (clipped action)
ant extras           +0.05 survival, +1.0 in the   the same, except the contact cost
                     velocity task, contact cost   (omitted: at most 0.042 a step)
                     5e-4 |clip(cfrc_ext)|^2
ant termination      z outside [0.2, 1.0]          the same
initial state        qpos + N(0, 0.01^2),          the same noise around gymnasium's
                     qvel + N(0, 0.1^2)            ``qpos0`` (ant: standing at z 0.75,
                                                   legs straight; rllab: z 0.55, bent)
horizon              200                           200
===================  ===========================  =====================================

The oracle sees the task as well: the goal velocity, or the direction (+1 / -1),
appended to the observation. The noise of the initial states comes from a torch
generator, so a run is reproducible from its seed.

Introduced in notebook 10. Needs ``mujoco`` (installed with ``gymnasium[mujoco]``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mamllib.rl.share import TaskShare, randn_tasks


@dataclass(frozen=True)
class Robot:
    """What differs between the two robots."""

    xml: str  # gymnasium's asset file
    frame_skip: int  # physics steps per control step (rllab's control step)
    obs_skip: int  # leading qpos entries left out of the observation
    ctrl_cost: float  # times |clipped action|^2
    goal_velocity_range: tuple[float, float]
    alive_bonus: float  # per step while alive (ant: rllab's survive_reward)
    velocity_bonus: float  # added in the goal-velocity task (ant: "make it happy")
    z_range: tuple[float, float] | None  # alive while the torso's z is inside


ROBOTS = {
    "half_cheetah": Robot("half_cheetah.xml", 1, 1, 0.05, (0.0, 2.0), 0.0, 0.0, None),
    "ant": Robot("ant.xml", 2, 2, 0.005, (0.0, 3.0), 0.05, 1.0, (0.2, 1.0)),
}
TASKS = ("velocity", "direction")


@functools.cache
def load_model(robot: str):
    """gymnasium's MuJoCo model of ``robot``, compiled (without its deprecation
    warning: the cheetah's ``settotalmass`` is applied after compiling instead).

    Compiled once per process (the cheetah takes about 60 ms) and shared: nothing
    here writes to the model, the episodes' states live in arrays.
    """
    try:
        import gymnasium
        import mujoco
    except ImportError as error:  # pragma: no cover - installed by requirements.txt
        raise ImportError(
            "locomotion needs MuJoCo and gymnasium's models: "
            "pip install 'gymnasium[mujoco]' (make setup installs them)"
        ) from error
    if robot not in ROBOTS:
        raise ValueError(f"robot must be one of {sorted(ROBOTS)}, got {robot!r}")
    path = os.path.join(
        os.path.dirname(gymnasium.__file__),
        "envs",
        "mujoco",
        "assets",
        ROBOTS[robot].xml,
    )
    with open(path) as file:
        text = file.read()
    total_mass = re.search(r"settotalmass=['\"]([0-9.]+)['\"]", text)
    text = re.sub(r"\s*settotalmass=['\"][0-9.]+['\"]", "", text)
    model = mujoco.MjModel.from_xml_string(text)
    if total_mass:  # what the compiler does with the attribute, then the constants
        mujoco.mj_setTotalmass(model, float(total_mass.group(1)))
        mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


def dims(robot: str) -> tuple[int, int]:
    """(observation, action) sizes of ``robot`` without the oracle's goal: cheetah
    (17, 6), ant (27, 8)."""
    model = load_model(robot)
    return model.nq - ROBOTS[robot].obs_skip + model.nv, model.nu


@contextlib.contextmanager
def _without_total_mass_warning():
    """Drop MuJoCo's deprecation warning for ``settotalmass`` while gymnasium compiles
    its cheetah xml; any other MuJoCo warning becomes a Python warning.

    gymnasium's env is the reference for our model, so it must compile the xml as
    gymnasium ships it (``load_model`` takes the other route, ``mj_setTotalmass``
    after compiling, and the tests hold the two equal). MuJoCo's default handler
    prints every warning and appends it to ``MUJOCO_LOG.TXT`` in the working
    directory; a handler of our own replaces both, for this call only.
    """
    import mujoco

    def handle(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handle)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def gymnasium_env(robot: str):
    """gymnasium's own environment of ``robot`` at our control step (the ant without
    contact forces in its observation, as ours): the reference the batched step is
    checked against (tests, notebook 10)."""
    import gymnasium

    frame_skip = ROBOTS[robot].frame_skip
    with _without_total_mass_warning():
        if robot == "ant":
            env = gymnasium.make(
                "Ant-v5", frame_skip=frame_skip, include_cfrc_ext_in_observation=False
            )
        else:
            env = gymnasium.make("HalfCheetah-v5", frame_skip=frame_skip)
    return env.unwrapped


def sample_goals(
    robot: str, task: str, n_tasks: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n_tasks`` goals ``[n_tasks]``: velocities U[0, 2] / U[0, 3], or directions
    +1 / -1 with probability 1/2 each."""
    if robot not in ROBOTS:
        raise ValueError(f"robot must be one of {sorted(ROBOTS)}, got {robot!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    u = torch.rand(n_tasks, generator=generator, dtype=torch.float64)
    if task == "direction":
        return torch.where(u < 0.5, -1.0, 1.0).float()
    low, high = ROBOTS[robot].goal_velocity_range
    return (low + (high - low) * u).float()


class Locomotion:
    """A batch of ``[n_tasks, n_traj]`` MuJoCo episodes, one goal per task.

    The interface of :class:`mamllib.rl.envs.Navigation2D`: ``reset()``, ``step(raw
    actions)`` -> ``(obs, reward, done)``, ``alive``, ``position`` (the torso's x, y,
    for plots), ``obs_dim``, ``act_dim``.

    Args:
        robot: ``"half_cheetah"`` or ``"ant"``.
        task: ``"velocity"`` or ``"direction"``.
        goals: ``[n_tasks]`` from :func:`sample_goals`.
        n_traj: episodes per task.
        generator: the initial states' noise.
        oracle: append the goal to the observation.
        threads: MuJoCo threads for the batched step (1 = this thread only).
        share: ``goals`` are these tasks of a larger meta-batch (one rank's); the
            initial states are those a single process draws for them
            (:mod:`mamllib.rl.share`).
    """

    def __init__(
        self,
        robot: str,
        task: str,
        goals: torch.Tensor,
        n_traj: int,
        generator: torch.Generator | None = None,
        oracle: bool = False,
        threads: int = 1,
        share: TaskShare | None = None,
    ):
        import mujoco

        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if goals.dim() != 1:
            raise ValueError(f"goals must be [n_tasks], got {tuple(goals.shape)}")
        if n_traj < 1:
            raise ValueError(f"n_traj must be >= 1, got {n_traj}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.robot, self.task, self.spec = robot, task, ROBOTS[robot]
        self.model = load_model(robot)
        self.datas = [mujoco.MjData(self.model) for _ in range(threads)]
        self.goals, self.n_traj, self.oracle = goals.float(), int(n_traj), oracle
        self.generator, self.share = generator, share
        m = self.model
        self.nq, self.nv, self.act_dim = m.nq, m.nv, m.nu
        self.dt = m.opt.timestep * self.spec.frame_skip
        self.state_kind = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.state_size = mujoco.mj_stateSize(m, self.state_kind)
        self.qpos_at = mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_TIME)
        expected = self.qpos_at + self.nq + self.nv
        if self.state_size != expected:  # pragma: no cover - a MuJoCo layout change
            raise RuntimeError(
                f"unexpected MuJoCo state layout: {self.state_size} != {expected}"
            )
        self.obs_dim = dims(robot)[0] + (1 if oracle else 0)
        self.shape = (goals.shape[0], self.n_traj)
        self.n = goals.shape[0] * self.n_traj
        self.state = np.zeros((self.n, self.state_size))
        self.alive = torch.ones(self.shape, dtype=torch.bool)
        self._goal = self.goals[:, None].expand(self.shape)
        self._pool = threads > 1

    @property
    def qpos(self) -> np.ndarray:
        return self.state[:, self.qpos_at : self.qpos_at + self.nq]

    @property
    def qvel(self) -> np.ndarray:
        return self.state[:, self.qpos_at + self.nq :]

    @property
    def position(self) -> torch.Tensor:
        """The torso's (x, y) ``[n_tasks, n_traj, 2]`` (the cheetah's y is 0)."""
        xy = self.qpos[:, :2] if self.robot == "ant" else self.qpos[:, :1]
        xy = np.concatenate([xy, np.zeros((self.n, 2 - xy.shape[1]))], axis=1)
        return torch.from_numpy(xy).float().reshape(*self.shape, 2)

    def observe(self) -> torch.Tensor:
        obs = np.concatenate([self.qpos[:, self.spec.obs_skip :], self.qvel], axis=1)
        obs = torch.from_numpy(obs).float().reshape(*self.shape, -1)
        if self.oracle:
            obs = torch.cat([obs, self._goal[..., None]], dim=-1)
        return obs

    def reset(self) -> torch.Tensor:
        """Every episode at the initial pose plus rllab's noise; the first
        observation."""

        def noise(size: int) -> torch.Tensor:
            return randn_tasks(
                (self.n, size), self.generator, torch.float64, self.share, self.n_traj
            )

        qpos_noise = noise(self.nq)
        qvel_noise = noise(self.nv)
        self.state[:] = 0.0
        self.qpos[:] = self.model.qpos0 + 0.01 * qpos_noise.numpy()
        self.qvel[:] = 0.1 * qvel_noise.numpy()
        if self.robot == "ant":  # keep the free joint's quaternion a unit quaternion
            q = self.qpos[:, 3:7]
            q /= np.linalg.norm(q, axis=1, keepdims=True)
        self.alive = torch.ones(self.shape, dtype=torch.bool)
        return self.observe()

    def _simulate(self, state: np.ndarray, control: np.ndarray) -> np.ndarray:
        """The states after one control step (``frame_skip`` MuJoCo steps) from
        ``state`` ``[n, state_size]`` under ``control`` ``[n, 1, act_dim]``."""
        from mujoco import rollout

        states, _ = rollout.rollout(
            self.model,
            self.datas if self._pool else self.datas[0],
            state,
            np.repeat(control, self.spec.frame_skip, axis=1),
            persistent_pool=self._pool,
        )
        return states[:, -1]

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply raw actions ``[n_tasks, n_traj, act_dim]`` (clipped to [-1, 1]).

        Returns ``(observation, reward, done)`` as :class:`Navigation2D`: the reward of
        an episode that had already ended is 0 and its state stays frozen.
        """
        clipped = action.detach().clamp(-1.0, 1.0)
        control = clipped.reshape(self.n, 1, self.act_dim).double().numpy()
        x_before = self.qpos[:, 0].copy()
        # Only the episodes still running are simulated (an ant that fell costs
        # nothing more). Each episode's rollout depends on its own state alone, so
        # leaving the others out changes no number (tests/test_locomotion.py).
        alive = self.alive.reshape(-1).numpy()
        if alive.all():
            self.state[:] = self._simulate(self.state, control)
        elif alive.any():
            self.state[alive] = self._simulate(self.state[alive], control[alive])
        velocity = torch.from_numpy((self.qpos[:, 0] - x_before) / self.dt)
        velocity = velocity.float().reshape(self.shape)
        if self.task == "velocity":
            reward = -(velocity - self._goal).abs() + self.spec.velocity_bonus
        else:
            reward = self._goal * velocity
        reward = reward - self.spec.ctrl_cost * (clipped**2).sum(-1)
        reward = reward + self.spec.alive_bonus
        reward = torch.where(self.alive, reward, torch.zeros_like(reward))
        still = torch.from_numpy(np.isfinite(self.state).all(axis=1)).reshape(
            self.shape
        )
        if self.spec.z_range is not None:
            z = torch.from_numpy(self.qpos[:, 2]).reshape(self.shape)
            low, high = self.spec.z_range
            still = still & (z >= low) & (z <= high)
        self.alive = self.alive & still
        return self.observe(), reward, ~self.alive
