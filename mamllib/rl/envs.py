"""2D navigation (paper §5.3), vectorised: many tasks x trajectories stepped at once.

A point agent starts at the origin and must reach a goal; the task is the goal.
Where the paper and cbfinn/maml_rl (``maml_examples/point_env_randgoal.py``) differ we
follow whichever the paper's own numbers support, and say so:

* goals: the paper says "uniformly in the unit square"; the code draws them from
  ``U[-0.5, 0.5]^2``. That *is* a unit square, centred on the start, and it is the one
  the paper's returns fit (below), so we use it.
* reward: the paper writes the negative *squared* distance to the goal; the code uses
  the negative distance. App. C's return before adaptation, -40.41 over 100 steps, is
  what a policy that stays near the origin earns with the distance
  (E|g| = 0.383 for g ~ U[-0.5, 0.5]^2, so about -38), not with the squared distance
  (E|g|^2 = 1/6, about -17). We use the distance (``reward="distance"``; ``"squared"``
  is available).
* actions: the policy's raw action ``a`` is scaled by 0.1 and clipped to [-0.1, 0.1]
  per coordinate. This is rllab's ``normalize`` wrapper, which cbfinn/maml_rl puts
  around the environment (it maps [-1, 1] to the action box); the log-likelihood is
  taken of the raw, unclipped action, as in rllab.
* termination: the episode ends on the step that lands within 0.01 of the goal (the
  paper's words; Euclidean distance). The code tests ``|dx| < 0.01 and |dy| < 0.01``,
  a box. The terminal step's reward counts; later steps are masked out.
* horizon H = 100 (paper and code).

Only torch is imported here; nothing about policies or MAML.
"""

from __future__ import annotations

import torch

GOAL_RANGE = (-0.5, 0.5)  # cbfinn/maml_rl point_env_randgoal.py (see the module doc)
ACTION_BOUND = 0.1  # actions (velocities) clipped to [-0.1, 0.1] per coordinate
GOAL_RADIUS = 0.01  # the episode ends within this distance of the goal
HORIZON = 100


def sample_goals(
    n_tasks: int,
    generator: torch.Generator | None = None,
    goal_range: tuple[float, float] = GOAL_RANGE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n_tasks`` goals uniform in ``goal_range`` squared: ``[n_tasks, 2]``."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    low, high = goal_range
    if not high > low:
        raise ValueError(
            f"goal_range must be (low, high) with low < high, got {goal_range}"
        )
    return (
        torch.rand((n_tasks, 2), generator=generator, dtype=dtype) * (high - low) + low
    )


class Navigation2D:
    """A batch of point-mass episodes: ``[n_tasks, n_traj]`` agents, one goal per task.

    Args:
        goals: ``[n_tasks, 2]``.
        n_traj: trajectories (agents) per task, stepped together.
        reward: ``"distance"`` (-||s - g||, cbfinn/maml_rl; default) or ``"squared"``
            (-||s - g||^2, the paper's text).
        oracle: observe ``[position, goal]`` (4-D) instead of the position alone; the
            oracle baseline's environment (cbfinn/maml_rl's
            ``point_env_randgoal_oracle``).
        action_scale: raw actions are multiplied by this before clipping (rllab
            ``normalize`` maps [-1, 1] to [-0.1, 0.1]); 1.0 clips the raw action.
    """

    def __init__(
        self,
        goals: torch.Tensor,
        n_traj: int,
        reward: str = "distance",
        oracle: bool = False,
        action_scale: float = ACTION_BOUND,
    ):
        if goals.dim() != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must be [n_tasks, 2], got {tuple(goals.shape)}")
        if n_traj < 1:
            raise ValueError(f"n_traj must be >= 1, got {n_traj}")
        if reward not in ("distance", "squared"):
            raise ValueError(f"reward must be 'distance' or 'squared', got {reward!r}")
        self.goals, self.n_traj = goals, int(n_traj)
        self.reward_type, self.oracle, self.action_scale = reward, oracle, action_scale
        self.obs_dim = 4 if oracle else 2
        self.position = torch.zeros(goals.shape[0], self.n_traj, 2, dtype=goals.dtype)
        self.alive = torch.ones(goals.shape[0], self.n_traj, dtype=torch.bool)

    def observe(self) -> torch.Tensor:
        """The observation: position ``[n_tasks, n_traj, 2]`` (or 4 with the goal)."""
        if not self.oracle:
            return self.position.clone()
        goal = self.goals[:, None, :].expand_as(self.position)
        return torch.cat([self.position, goal], dim=-1)

    def reset(self) -> torch.Tensor:
        """Every agent back at the origin; returns the first observation."""
        self.position = torch.zeros_like(self.position)
        self.alive = torch.ones_like(self.alive)
        return self.observe()

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply raw actions ``[n_tasks, n_traj, 2]``.

        Returns:
            ``(observation, reward, done)``: reward ``[n_tasks, n_traj]`` is zero for
            agents whose episode had already ended (their position is frozen); done is
            True from the step that reaches the goal onwards.
        """
        velocity = (action * self.action_scale).clamp(-ACTION_BOUND, ACTION_BOUND)
        alive = self.alive
        self.position = torch.where(
            alive[..., None], self.position + velocity, self.position
        )
        distance = (self.position - self.goals[:, None, :]).norm(dim=-1)
        if self.reward_type == "distance":
            reward = -distance
        else:
            reward = -(distance**2)
        reward = torch.where(alive, reward, torch.zeros_like(reward))
        self.alive = alive & (distance >= GOAL_RADIUS)
        return self.observe(), reward, ~self.alive
