"""Presets (ci / book / paper), ``MAMLLIB_PRESET`` resolution and config validation.

A notebook's ``parameters`` cell names a ``preset``; :func:`resolve_preset` lets the
environment variable ``MAMLLIB_PRESET`` win over it (that is how CI runs every notebook
fast), and :func:`make_config` turns preset + overrides into a plain, validated dict.
Bad values are refused here, before any training, with the parameter, the value and
the allowed range in the message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

PRESET_NAMES = ("ci", "book", "paper")
ENV_VAR = "MAMLLIB_PRESET"

# Sinusoid regression, paper §5.1 and App. B. ``paper`` is the paper's setting; where
# the original code (cbfinn/maml) differs we follow the paper and say so.
_SINUSOID_PAPER: dict[str, Any] = {
    "hidden_sizes": [40, 40],  # paper: 2 hidden layers of 40, ReLU
    "k_shot": 10,  # paper: K = 10 in meta-training
    "n_query": 10,  # cbfinn/maml draws 2K points per task: K support + K query
    "inner_lr": 0.01,  # paper alpha = 0.01; cbfinn/maml's default update_lr is 1e-3
    "n_inner_steps": 1,  # paper: one gradient step in meta-training
    "meta_batch_size": 25,  # paper: 25 tasks per meta-batch
    "outer_lr": 1e-3,  # Adam; paper does not state beta, cbfinn/maml meta_lr=1e-3
    "n_iterations": 70_000,  # cbfinn/maml usage line: --metatrain_iterations=70000
    "first_order": False,  # MAML proper: differentiate through the inner update
    "path": "vmap",  # fast path; "loop" is the readable per-task version
    "pretrain_iterations": 70_000,  # cbfinn/maml: --pretrain_iterations=70000
    "oracle_iterations": 70_000,
    "finetune_lrs": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],  # tuned on val tasks
    "n_val_tasks": 100,  # tasks (own seed) used to tune the fine-tuning step size
    "eval_k_shots": [5, 10, 20],  # paper Figure 3 panels
    "n_eval_tasks": 600,  # cbfinn/maml test: 600 tasks, 95% CI = 1.96 sigma / sqrt(600)
    "n_eval_query": 100,  # query points per evaluation task (see evaluate.py)
    "n_eval_steps": 10,  # cbfinn/maml test_num_updates = 10
    "checkpoint_every": 5_000,
    "log_every": 100,
    "seed": 0,
    "device": "cpu",
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sinusoid": {
        "paper": _SINUSOID_PAPER,
        # A few minutes on a laptop CPU for the whole chapter.
        "book": {
            **_SINUSOID_PAPER,
            "n_iterations": 15_000,
            "pretrain_iterations": 15_000,
            "oracle_iterations": 15_000,
            "checkpoint_every": 5_000,
        },
        # Seconds on one core: enough to show MAML learning, not to match the paper.
        "ci": {
            **_SINUSOID_PAPER,
            "n_iterations": 1_500,
            "pretrain_iterations": 1_500,
            "oracle_iterations": 1_500,
            "n_eval_tasks": 100,
            "n_val_tasks": 50,
            "n_eval_query": 50,
            "checkpoint_every": 500,
            "log_every": 50,
        },
    },
}


# Omniglot, paper §5.2 and App. A.1; cbfinn/maml where the paper is silent.
_OMNIGLOT_COMMON: dict[str, Any] = {
    "n_filters": 64,  # conv-4 with 64 filters, stride-2 convolutions (App. A.1)
    "outer_lr": 1e-3,  # Adam; cbfinn/maml meta_lr=1e-3
    "n_iterations": 60_000,  # App. A.1
    "first_order": False,
    "path": "vmap",  # "loop" is the readable per-task version
    "scheme": "paper",  # 1200 training / 423 test characters (§5.2)
    "rotations": True,  # rotations by multiples of 90 degrees as new classes (§5.2)
    "n_eval_tasks": 600,  # cbfinn/maml test: 600 tasks, 95% CI
    "n_eval_steps": 10,  # the curve over 0..10 steps (also reported)
    "checkpoint_every": 1_000,
    "log_every": 50,
    "seed": 0,
    "device": "cpu",
}
# 5-way: alpha 0.4, 1 step in training and 3 at test, meta-batch 32 (App. A.1).
_OMNIGLOT_5WAY = {
    **_OMNIGLOT_COMMON,
    "n_way": 5,
    "inner_lr": 0.4,
    "n_inner_steps": 1,
    "n_test_inner_steps": 3,
    "meta_batch_size": 32,
}
# 20-way: alpha 0.1, 5 steps in training and at test, meta-batch 16 (App. A.1).
_OMNIGLOT_20WAY = {
    **_OMNIGLOT_COMMON,
    "n_way": 20,
    "inner_lr": 0.1,
    "n_inner_steps": 5,
    "n_test_inner_steps": 5,
    "meta_batch_size": 16,
    # The fastest path at 20-way on a 2-core CPU (benchmarks/omniglot_speed.py); on
    # a GPU it is the batched path.
    "path": "threads",
}


def _omniglot_presets(paper: dict[str, Any], k_shot: int) -> dict[str, dict[str, Any]]:
    # The query set has K examples per class, as cbfinn/maml's Omniglot generator.
    paper = {**paper, "k_shot": k_shot, "n_query": k_shot}
    return {
        "paper": paper,
        # Minutes on a laptop CPU: enough to be far above chance, not the paper's.
        # 5-way 1-shot: about 0.4 s per meta-iteration on a 2-core CPU, so 500 take
        # about 3.5 minutes; 20-way iterations cost more (5 inner steps, 20 classes).
        "book": {
            **paper,
            "n_iterations": 500 if paper["n_way"] == 5 else 200,
            "n_eval_tasks": 200,
            "checkpoint_every": 250,
        },
        # Seconds: shows learning, nothing more.
        "ci": {
            **paper,
            "n_iterations": 60,
            "meta_batch_size": 4,
            "n_eval_tasks": 20,
            "n_eval_steps": 3,
            "checkpoint_every": 30,
            "log_every": 10,
        },
    }


PRESETS["omniglot-5way-1shot"] = _omniglot_presets(_OMNIGLOT_5WAY, 1)
PRESETS["omniglot-5way-5shot"] = _omniglot_presets(_OMNIGLOT_5WAY, 5)
PRESETS["omniglot-20way-1shot"] = _omniglot_presets(_OMNIGLOT_20WAY, 1)
PRESETS["omniglot-20way-5shot"] = _omniglot_presets(_OMNIGLOT_20WAY, 5)


# MiniImageNet, paper §5.2 and App. A.1; cbfinn/maml (main.py usage lines, maml.py,
# data_generator.py) where the paper is silent. Every difference is said here.
_MINIIMAGENET_COMMON: dict[str, Any] = {
    "n_way": 5,
    "n_filters": 32,  # App. A.1: 32 filters "to reduce overfitting" (Omniglot: 64)
    "max_pool": True,  # 2x2 max-pooling after each block (--max_pool=True)
    "in_channels": 3,  # 84x84 RGB (data_generator.py img_size=(84, 84))
    "image_size": 84,
    "inner_lr": 0.01,  # App. A.1: alpha = 0.01 (--update_lr=0.01)
    "n_inner_steps": 5,  # App. A.1: 5 steps in meta-training (--num_updates=5)
    "n_test_inner_steps": 10,  # App. A.1: 10 at test (main.py test_num_updates = 10)
    "n_query": 15,  # §5.2: 15 examples per class for the meta-update (main.py: K+15)
    # Test tasks: cbfinn/maml's test generator draws 2K images per class, i.e. K query
    # images (main.py: DataGenerator(update_batch_size*2) when --train=False; its TODO
    # asks "use 15 val examples?"). The paper's intervals fit that: 1.96 sigma/sqrt(600)
    # = 1.84 % needs sigma = 0.23, the spread of the accuracy on 5 query images. We
    # follow the original code here (the paper is silent), for val and test alike.
    "n_eval_query": None,  # None: K per class, set per shot below
    "outer_lr": 1e-3,  # Adam, meta_lr 1e-3
    "n_iterations": 60_000,  # App. A.1 (--metatrain_iterations=60000)
    "clip_grad": 10.0,  # maml.py clips meta-gradients to [-10, 10], MiniImagenet only
    "first_order": False,  # MAML proper; True is the paper's first-order row
    # The batched path: on a CPU about 1.4x faster than vmap here (see the benchmark).
    "path": "batched",
    "images_per_class": None,  # all 600 images of every class
    "n_eval_tasks": 600,  # main.py NUM_TEST_POINTS = 600, 95% CI
    "n_eval_steps": 10,  # the curve over 0..10 steps
    # Checkpoint selection on the validation classes (16): every checkpoint_every
    # iterations, accuracy on n_val_tasks fixed val tasks; the best is kept. cbfinn/maml
    # prints a validation accuracy but tests the latest (or --test_iter) model; the
    # paper says nothing. Never selected on test classes.
    "n_val_tasks": 200,
    "checkpoint_every": 1_000,  # = main.py SAVE_INTERVAL
    "log_every": 50,
    "seed": 0,
    "device": "cpu",
}


def _miniimagenet_presets(k_shot: int, meta_batch_size: int) -> dict[str, dict]:
    paper = {
        **_MINIIMAGENET_COMMON,
        "k_shot": k_shot,
        "n_eval_query": k_shot,
        "meta_batch_size": meta_batch_size,
    }
    return {
        "paper": paper,
        # Minutes on a laptop CPU. One paper-sized meta-iteration takes about 6 s on
        # one core of a 2-core CPU (80 images of 84x84 per task, 5 inner steps) and
        # scoring one test task (10 steps) about 0.8 s, so the book trains only 20
        # of the 60,000 meta-iterations, at the paper's shapes, on the first 100
        # images of each class, and scores 100 test tasks: the machinery and the
        # cost, not the paper's accuracy.
        "book": {
            **paper,
            "images_per_class": 100,
            "n_iterations": 20,
            "n_eval_tasks": 100,
            "n_val_tasks": 10,
            "checkpoint_every": 10,
            "log_every": 2,
        },
        # Under a minute: the machinery runs end to end (training, selection on val
        # tasks, evaluation) at smaller shapes (meta-batch 2, 5 query images per
        # class, 2 inner steps in training and 3 at test) on 20 images per class;
        # far too short to show meta-learning on MiniImageNet.
        "ci": {
            **paper,
            "images_per_class": 20,
            "meta_batch_size": 2,
            "n_query": 5,
            "n_inner_steps": 2,
            "n_test_inner_steps": 3,
            "n_eval_steps": 3,
            "n_iterations": 4,
            "n_eval_tasks": 10,
            "n_val_tasks": 4,
            "checkpoint_every": 2,
            "log_every": 1,
        },
    }


# 1-shot: meta-batch 4 (App. A.1 and main.py). 5-shot: meta-batch 2 in the paper
# (App. A.1); cbfinn/maml's usage line for 5-shot says --meta_batch_size=4. We follow
# the paper.
PRESETS["miniimagenet-5way-1shot"] = _miniimagenet_presets(1, 4)
PRESETS["miniimagenet-5way-5shot"] = _miniimagenet_presets(5, 2)


# 2D navigation, paper §5.3 and App. A.2 (mamllib/rl; notebook 09). Where cbfinn/maml_rl
# differs: maml_trpo_point.py uses fast_learning_rates=[0.5], meta_batch_size=40 and
# n_itr=100; we follow the paper (alpha 0.1, meta-batch 20, up to 500 iterations).
_NAVIGATION_PAPER: dict[str, Any] = {
    "hidden_sizes": [100, 100],  # App. A.2: 2 hidden layers of 100 ReLU
    "n_traj": 20,  # trajectories per task for the inner step (and for D')
    "horizon": 100,  # H = 100
    "reward": "distance",  # -||s - g|| as cbfinn/maml_rl; see mamllib/rl/envs.py
    "inner_lr": 0.1,  # alpha; at evaluation alpha, then alpha / 2 (§5.3)
    "first_order": False,  # differentiate through the inner policy-gradient step
    "meta_batch_size": 20,  # tasks per meta-iteration (navigation)
    "discount": 0.99,  # rllab default, cbfinn/maml_rl
    "max_kl": 0.01,  # TRPO step size delta (meta_step_size=0.01)
    "cg_iters": 10,  # rllab ConjugateGradientOptimizer
    "cg_damping": 1e-5,  # rllab reg_coeff
    "n_iterations": 500,  # "up to 500 meta-iterations" (§5.3)
    "pretrain_iterations": 500,  # TRPO on all tasks jointly, no inner step
    "oracle_iterations": 500,  # TRPO with the goal observed
    "path": "vmap",  # fast path; "loop" is the readable per-task version
    "n_eval_tasks": 100,  # fresh test goals from a fixed evaluation seed
    "n_eval_traj": 40,  # Figure 4: updates of 40 samples each at evaluation
    "n_eval_steps": 3,  # returns after 0, 1, 2, 3 policy-gradient steps
    "checkpoint_every": 10,
    "seed": 0,
    "device": "cpu",
}
PRESETS["navigation"] = {
    "paper": _NAVIGATION_PAPER,
    # A few minutes on a laptop CPU: MAML clearly adapts, not the paper's numbers.
    "book": {
        **_NAVIGATION_PAPER,
        "meta_batch_size": 10,
        "n_iterations": 40,
        "pretrain_iterations": 40,
        "oracle_iterations": 40,
        "n_eval_tasks": 40,
    },
    # Seconds on one core: shows the machinery and that adaptation helps.
    "ci": {
        **_NAVIGATION_PAPER,
        "meta_batch_size": 5,
        "n_traj": 10,
        "n_iterations": 6,
        "pretrain_iterations": 3,
        "oracle_iterations": 3,
        "n_eval_tasks": 10,
        "n_eval_traj": 10,
        "checkpoint_every": 3,
    },
}


# Half-cheetah and ant, paper §5.3 and App. A.2 (mamllib/rl/locomotion.py; notebook 10).
# cbfinn/maml_rl's cluster_maml_trpo_cheetah.py / _ant.py agree (fast_lr 0.1,
# meta_step_size 0.01, fast_batch_size 20, meta_batch_size 40, max_path_length 200)
# except n_itr 800; we follow the paper's "up to 500 meta-iterations".
_LOCOMOTION_PAPER: dict[str, Any] = {
    **_NAVIGATION_PAPER,
    "n_traj": 20,  # trajectories per task (Figure 5: 20; 40 for ant forward/backward)
    "horizon": 200,  # H = 200
    "meta_batch_size": 40,  # tasks per meta-iteration (locomotion)
    "n_eval_tasks": 40,  # fresh test goals from a fixed evaluation seed
    "n_eval_traj": 20,  # Figure 5: 20 rollouts per adaptation step (40 for ant fwd/bwd)
    "sim_threads": 1,  # MuJoCo threads for the batched step
}
del _LOCOMOTION_PAPER["reward"]  # the task decides the reward
for _robot in ("half_cheetah", "ant"):
    for _task in ("velocity", "direction"):
        _paper = dict(_LOCOMOTION_PAPER)
        if (_robot, _task) == ("ant", "direction"):
            _paper.update(n_traj=40, n_eval_traj=40)
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


def resolve_preset(value: str) -> str:
    """The preset to use: ``MAMLLIB_PRESET`` if set, else ``value``; validated."""
    name = os.environ.get(ENV_VAR) or value
    if name not in PRESET_NAMES:
        source = (
            f"environment variable {ENV_VAR}" if os.environ.get(ENV_VAR) else "preset"
        )
        raise ValueError(
            f"{source}={name!r} is not a preset; "
            f"choose one of {', '.join(PRESET_NAMES)}"
        )
    return name


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    return ok, f"an integer >= {low}"


def _positive_float() -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        return (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v > 0
        )

    return ok, "a finite number > 0"


def _cuda_ok(v: Any) -> bool:
    if v == "cpu":
        return True
    if isinstance(v, str) and v.split(":")[0] == "cuda":
        import torch  # local: presets stay importable without touching devices

        return torch.cuda.is_available()
    return False


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "k_shot": _int_at_least(1),
    "n_query": _int_at_least(1),
    "n_inner_steps": _int_at_least(1),
    "n_test_inner_steps": _int_at_least(0),
    "n_way": _int_at_least(2),
    "n_filters": _int_at_least(1),
    "in_channels": _int_at_least(1),
    "image_size": _int_at_least(1),
    "max_pool": (lambda v: isinstance(v, bool), "True or False"),
    "images_per_class": (
        lambda v: v is None or (_int_at_least(1)[0](v) and v <= 600),
        "None (all 600) or an integer in 1..600",
    ),
    "clip_grad": (
        lambda v: v is None or _positive_float()[0](v),
        "None or a number > 0",
    ),
    "scheme": (lambda v: v in ("paper", "original"), "'paper' or 'original'"),
    "rotations": (lambda v: isinstance(v, bool), "True or False"),
    "meta_batch_size": _int_at_least(1),
    "sim_threads": _int_at_least(1),
    "n_iterations": _int_at_least(0),
    "pretrain_iterations": _int_at_least(0),
    "oracle_iterations": _int_at_least(0),
    "n_val_tasks": _int_at_least(1),
    "n_eval_tasks": _int_at_least(2),
    "n_eval_query": _int_at_least(1),
    "n_eval_steps": _int_at_least(0),
    "checkpoint_every": _int_at_least(1),
    "log_every": _int_at_least(1),
    "seed": _int_at_least(0),
    "inner_lr": _positive_float(),
    "outer_lr": _positive_float(),
    "first_order": (lambda v: isinstance(v, bool), "True or False"),
    "path": (
        lambda v: v in ("loop", "vmap", "batched", "threads"),
        "'loop', 'vmap', 'batched' or 'threads' (batched and threads: models with "
        "forward_tasks only)",
    ),
    "device": (_cuda_ok, "'cpu', or 'cuda' when a CUDA GPU is available"),
    "n_traj": _int_at_least(1),
    "horizon": _int_at_least(1),
    "n_eval_traj": _int_at_least(1),
    "cg_iters": _int_at_least(1),
    "max_kl": _positive_float(),
    "cg_damping": _positive_float(),
    "discount": (
        lambda v: _positive_float()[0](v) and v <= 1,
        "a number in (0, 1]",
    ),
    "reward": (lambda v: v in ("distance", "squared"), "'distance' or 'squared'"),
    "hidden_sizes": (
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) > 0
            and all(isinstance(h, int) and h >= 1 for h in v)
        ),
        "a non-empty list of integers >= 1",
    ),
    "eval_k_shots": (
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) > 0
            and all(isinstance(k, int) and k >= 1 for k in v)
        ),
        "a non-empty list of integers >= 1",
    ),
    "finetune_lrs": (
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) > 0
            and all(_positive_float()[0](x) for x in v)
        ),
        "a non-empty list of numbers > 0",
    ),
}


def validate(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming each bad parameter, its value and allowed range."""
    problems = []
    for key, value in config.items():
        if key in RULES:
            ok, allowed = RULES[key]
            if not ok(value):
                problems.append(f"{key}={value!r} is not allowed: must be {allowed}")
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


def make_config(experiment: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """The validated config for ``experiment`` at ``preset``, with ``overrides``.

    Overrides whose value is ``None`` are ignored, so a notebook can pass every
    parameter and leave the unset ones to the preset. Unknown keys are refused.
    """
    if experiment not in PRESETS:
        raise ValueError(
            f"experiment={experiment!r} is unknown; choose one of {sorted(PRESETS)}"
        )
    preset = resolve_preset(preset)
    config = {"experiment": experiment, "preset": preset, **PRESETS[experiment][preset]}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in config:
            raise ValueError(
                f"{key!r} is not a parameter of the {experiment} experiment; "
                f"known: {', '.join(sorted(config))}"
            )
        config[key] = value
    validate(config)
    return config


def summary(config: Mapping[str, Any]) -> str:
    """A one-line description of a config, for the top of a notebook's output."""
    main = (
        "preset",
        "seed",
        "k_shot",
        "inner_lr",
        "n_inner_steps",
        "meta_batch_size",
        "outer_lr",
        "n_iterations",
        "first_order",
        "device",
    )
    if config.get("experiment") is None:  # a teaching notebook's few settings: all
        main = tuple(k for k in config if not isinstance(config[k], (list, dict)))
    return " | ".join(f"{k}={config[k]}" for k in main if k in config)


def simple_config(
    preset: str, values: Mapping[str, Mapping[str, Any]], **fixed: Any
) -> dict[str, Any]:
    """A config for a teaching notebook whose few settings depend on the preset.

    ``values`` maps each setting to ``{"ci": ..., "book": ..., "paper": ...}``;
    ``fixed`` settings (seed, learning rates...) are the same at every preset. The
    result is validated like any other config.

    Example: ``simple_config(preset, {"n_steps": {"ci": 50, "book": 500, "paper": 500}},
    seed=0)``.
    """
    preset = resolve_preset(preset)
    config = {"preset": preset, **fixed}
    for key, by_preset in values.items():
        missing = set(PRESET_NAMES) - set(by_preset)
        if missing:
            raise ValueError(f"{key!r} has no value for preset(s) {sorted(missing)}")
        config[key] = by_preset[preset]
    validate(config)
    return config
