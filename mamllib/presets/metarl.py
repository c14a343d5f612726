"""Meta-RL presets: 2D navigation and MuJoCo locomotion (§5.3, App. A.2).

cbfinn/maml_rl (rllab-based) fills in where the paper is silent; where its example
scripts differ from the paper we follow the paper and say so. Values marked "ours"
are bookkeeping that neither source fixes. The code: ``mamllib/rl`` and
``mamllib/experiments/metarl.py``; notebooks 09 and 10.
"""

from __future__ import annotations

from typing import Any

# 2D navigation. cbfinn/maml_rl's maml_trpo_point.py uses fast_learning_rates=[0.5],
# meta_batch_size=40 and n_itr=100; we follow the paper (alpha 0.1, meta-batch 20,
# up to 500 iterations).
NAVIGATION_PAPER: dict[str, Any] = {
    "hidden_sizes": [100, 100],  # App. A.2: 2 hidden layers of 100 ReLU
    "n_traj": 20,  # §5.3: 20 trajectories per task for the inner step (and for D')
    "horizon": 100,  # §5.3: H = 100
    # §5.3 writes the negative squared distance; cbfinn/maml_rl (and App. C's
    # returns) use the negative distance, -||s - g||: see mamllib/rl/envs.py.
    "reward": "distance",
    "inner_lr": 0.1,  # App. A.2: alpha = 0.1; at evaluation alpha, then alpha / 2
    "first_order": False,  # differentiate through the inner policy-gradient step
    "meta_batch_size": 20,  # App. A.2: 20 tasks per meta-iteration (navigation)
    "discount": 0.99,  # rllab default, cbfinn/maml_rl
    "max_kl": 0.01,  # TRPO step size delta (maml_rl meta_step_size=0.01)
    "cg_iters": 10,  # rllab ConjugateGradientOptimizer
    "cg_damping": 1e-5,  # rllab reg_coeff
    "n_iterations": 500,  # App. A.2: "up to 500 meta-iterations"
    "pretrain_iterations": 500,  # ours: TRPO on all tasks jointly, no inner step
    "oracle_iterations": 500,  # ours: TRPO with the goal observed
    "strategy": "vmap",  # ours: the fast path; "loop" is the readable per-task version
    "n_eval_tasks": 100,  # ours: fresh test goals from a fixed evaluation seed
    "n_eval_traj": 40,  # Figure 4: updates of 40 samples each at evaluation
    "n_eval_steps": 3,  # Figure 4: returns after 0, 1, 2, 3 policy-gradient steps
    "checkpoint_every": 10,  # ours
    "seed": 0,  # ours
    "device": "cpu",  # ours
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "navigation": {
        "paper": NAVIGATION_PAPER,
        # A few minutes on a laptop CPU: MAML clearly adapts, not the paper's numbers.
        "book": {
            **NAVIGATION_PAPER,
            "meta_batch_size": 10,
            "n_iterations": 40,
            "pretrain_iterations": 40,
            "oracle_iterations": 40,
            "n_eval_tasks": 40,
        },
        # Seconds on one core: shows the machinery and that adaptation helps.
        "ci": {
            **NAVIGATION_PAPER,
            "meta_batch_size": 5,
            "n_traj": 10,
            "n_iterations": 6,
            "pretrain_iterations": 3,
            "oracle_iterations": 3,
            "n_eval_tasks": 10,
            "n_eval_traj": 10,
            "checkpoint_every": 3,
        },
    },
}

# Half-cheetah and ant (mamllib/rl/locomotion.py). cbfinn/maml_rl's
# cluster_maml_trpo_cheetah.py / _ant.py agree (fast_lr 0.1, meta_step_size 0.01,
# fast_batch_size 20, meta_batch_size 40, max_path_length 200) except n_itr 800; we
# follow the paper's "up to 500 meta-iterations". The rest is navigation's.
LOCOMOTION_PAPER: dict[str, Any] = {
    **NAVIGATION_PAPER,
    "n_traj": 20,  # Figure 5: 20 trajectories per task (40 for ant forward/backward)
    "horizon": 200,  # §5.3: H = 200
    "meta_batch_size": 40,  # App. A.2: 40 tasks per meta-iteration (locomotion)
    "n_eval_tasks": 40,  # ours: fresh test goals from a fixed evaluation seed
    "n_eval_traj": 20,  # Figure 5: 20 rollouts per adaptation step (40 for ant fwd/bwd)
    "sim_threads": 1,  # ours: MuJoCo threads for the batched step
}
del LOCOMOTION_PAPER["reward"]  # the task decides the reward

for _robot in ("half_cheetah", "ant"):
    for _task in ("velocity", "direction"):
        _paper = dict(LOCOMOTION_PAPER)
        if (_robot, _task) == ("ant", "direction"):
            _paper.update(n_traj=40, n_eval_traj=40)  # Figure 5: 40 for ant fwd/bwd
        PRESETS[f"{_robot}-{_task}"] = {
            "paper": _paper,
            # A few minutes on a laptop CPU: the machinery at work, not the paper's
            # numbers (locomotion needs hundreds of iterations to learn to run).
            "book": {
                **_paper,
                "meta_batch_size": 10,
                "n_traj": 20,
                "horizon": 100,
                "n_iterations": 20,
                "pretrain_iterations": 10,
                "oracle_iterations": 10,
                "n_eval_tasks": 20,
                "n_eval_traj": 20,
                "checkpoint_every": 5,
            },
            # Seconds on one core. Episodes of 100 steps and 20 test trajectories: with
            # fewer, one step's improvement drowns in the noise of the estimate.
            "ci": {
                **_paper,
                "meta_batch_size": 4,
                "n_traj": 10,
                "horizon": 100,
                "n_iterations": 2,
                "pretrain_iterations": 1,
                "oracle_iterations": 1,
                "n_eval_tasks": 10,
                "n_eval_traj": 20,
                "n_eval_steps": 1,
                "checkpoint_every": 1,
            },
        }
del _robot, _task, _paper
