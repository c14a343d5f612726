"""The paper's and the original code's settings as data, beside which the book's
settings page shows the ``paper`` presets (:mod:`mamllib.report.settings`).

Every value carries its source: a section or appendix of the paper, a file or flag of
cbfinn/maml or cbfinn/maml_rl. Our own values live in :mod:`mamllib.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One hyperparameter as the paper and the original code give it.

    A value is a number, string or list, or ``{variant: value}`` where it depends on
    the experiment (:func:`variant_value`). ``None``: that source does not set it.
    ``note``: why our preset differs from the paper or the code, or what our value
    means, where that needs saying (``tests/test_paper_presets.py`` requires one
    wherever the preset differs from the value the paper states, or where the paper
    is silent from the code's, and wherever the paper and the code disagree).
    """

    paper: Any
    paper_source: str
    code: Any
    code_source: str
    note: str = ""


def variant_value(value: Any, experiment: str) -> Any:
    """``value`` for ``experiment``: itself, or the entry of a ``{variant: value}``
    whose variant is the experiment's name or one of its ``-``-separated parts
    (``"5way"``, ``"1shot"``), else the ``"other"`` entry."""
    if not isinstance(value, dict):
        return value
    parts = experiment.split("-")
    hits = [v for k, v in value.items() if k == experiment or k in parts]
    if len(hits) == 1:
        return hits[0]
    if not hits and "other" in value:
        return value["other"]
    raise ValueError(f"{value} has no single entry for {experiment!r}")


# Each family: its title, its experiments (names in mamllib.presets) and the
# repository of the original code the "code" values come from.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sinusoid": ("Sinusoid regression (§5.1)", ("sinusoid",), "cbfinn/maml"),
    "omniglot": (
        "Omniglot (§5.2)",
        tuple(f"omniglot-{n}way-{k}shot" for n in (5, 20) for k in (1, 5)),
        "cbfinn/maml",
    ),
    "miniimagenet": (
        "MiniImageNet (§5.2)",
        ("miniimagenet-5way-1shot", "miniimagenet-5way-5shot"),
        "cbfinn/maml",
    ),
    "navigation": ("2D navigation (§5.3)", ("navigation",), "cbfinn/maml_rl"),
    "locomotion": (
        "Locomotion (§5.3)",
        tuple(
            f"{r}-{t}"
            for r in ("half_cheetah", "ant")
            for t in ("velocity", "direction")
        ),
        "cbfinn/maml_rl",
    ),
}

# Preset keys that are neither the paper's nor the original code's: how a run is
# computed and recorded, not what it computes (the seed picks one run of many).
BOOKKEEPING = (
    "strategy",
    "device",
    "sim_threads",
    "checkpoint_every",
    "log_every",
    "seed",
)

_S = Setting
FOLLOW_PAPER = "We follow the paper."
_FEWSHOT_COMMON = {
    "outer_lr": _S(None, "", 1e-3, "main.py meta_lr default", "Adam, as the code."),
    "first_order": _S(False, "§5.2", False, "main.py stop_grad default"),
    "n_eval_tasks": _S(None, "", 600, "main.py NUM_TEST_POINTS"),
    "n_eval_steps": _S(
        None,
        "",
        10,
        "main.py test_num_updates",
        "The curve over 0-10 steps; the accuracy compared with Table 1 is taken "
        "after n_test_inner_steps.",
    ),
}


def _rl_common(script: str, iterations: int) -> dict[str, Setting]:
    # What navigation (maml_trpo_point.py) and locomotion (cluster_maml_trpo_*.py)
    # share; rllab's defaults where the scripts set nothing.
    return {
        "hidden_sizes": _S([100, 100], "§5.3", [100, 100], f"{script} hidden_sizes"),
        "first_order": _S(False, "§5.3", False, "MAMLTRPO"),
        "discount": _S(None, "", 0.99, "batch_maml_polopt.py default"),
        "max_kl": _S(None, "", 0.01, f"{script} meta_step_size"),
        "cg_iters": _S(None, "", 10, "ConjugateGradientOptimizer default"),
        "cg_damping": _S(None, "", 1e-5, "ConjugateGradientOptimizer reg_coeff"),
        "n_iterations": _S(
            500, "App. A.2, at most", iterations, f"{script} n_itr", FOLLOW_PAPER
        ),
        "pretrain_iterations": _S(None, "", None, "", "Ours: as many as MAML."),
        "oracle_iterations": _S(None, "", None, "", "Ours: as many as MAML."),
        "n_eval_tasks": _S(
            None, "", None, "", "Ours: test goals drawn from a fixed evaluation seed."
        ),
    }


SETTINGS: dict[str, dict[str, Setting]] = {
    "sinusoid": {
        "hidden_sizes": _S([40, 40], "§5.1", [40, 40], "maml.py dim_hidden"),
        "k_shot": _S(10, "§5.1", 10, "main.py usage line, update_batch_size"),
        "n_query": _S(None, "", 10, "main.py: 2K points per task, K support + K query"),
        "inner_lr": _S(
            0.01,
            "§5.1",
            1e-3,
            "main.py update_lr default; the usage line does not set it",
            FOLLOW_PAPER,
        ),
        "n_inner_steps": _S(1, "§5.1", 1, "main.py num_updates default"),
        "meta_batch_size": _S(None, "", 25, "main.py meta_batch_size default"),
        "outer_lr": _S(
            None,
            "",
            1e-3,
            "main.py meta_lr default",
            "Adam (§5.1) with the code's rate.",
        ),
        "n_iterations": _S(
            None, "", 70_000, "main.py usage line, metatrain_iterations"
        ),
        "first_order": _S(False, "§5", False, "main.py stop_grad default"),
        "pretrain_iterations": _S(
            None, "", 70_000, "main.py usage line, pretrain_iterations"
        ),
        "oracle_iterations": _S(
            None, "", 70_000, "main.py usage line, baseline=oracle"
        ),
        "finetune_lrs": _S(
            "tuned automatically",
            "§5.1",
            None,
            "",
            "Ours: a grid, the step picked on n_val_tasks validation tasks; Figure 3's "
            "legend names 0.01 and 0.02.",
        ),
        "n_val_tasks": _S(
            None, "", None, "", "Ours: the tasks that pick the fine-tuning step."
        ),
        "eval_k_shots": _S([5, 10, 20], "Figure 3", None, ""),
        "n_eval_tasks": _S(None, "", 600, "main.py NUM_TEST_POINTS"),
        "n_eval_query": _S(
            None,
            "",
            "K",
            "main.py: 2K points per test task",
            "Ours: 100 query points measure each task's error with less noise.",
        ),
        "n_eval_steps": _S(10, "App. C.1, Table 2", 10, "main.py test_num_updates"),
    },
    "omniglot": {
        "n_way": _S(
            {"5way": 5, "20way": 20},
            "Table 1",
            {"5way": 5, "20way": 20},
            "main.py usage lines, num_classes",
        ),
        "k_shot": _S(
            {"1shot": 1, "5shot": 5},
            "Table 1",
            {"1shot": 1, "5shot": 5},
            "main.py update_batch_size",
        ),
        "n_query": _S(
            None,
            "",
            {"1shot": 1, "5shot": 5},
            "main.py: 2K images per class, K support + K query",
        ),
        "n_filters": _S(64, "§5.2", 64, "main.py num_filters default"),
        "inner_lr": _S(
            {"5way": 0.4, "20way": 0.1},
            "App. A.1",
            {"5way": 0.4, "20way": 0.1},
            "main.py usage lines, update_lr",
        ),
        "n_inner_steps": _S(
            {"5way": 1, "20way": 5},
            "App. A.1",
            {"5way": 1, "20way": 5},
            "main.py usage lines, num_updates",
        ),
        "n_test_inner_steps": _S(
            {"5way": 3, "20way": 5},
            "App. A.1",
            10,
            "main.py test_num_updates",
            FOLLOW_PAPER,
        ),
        "meta_batch_size": _S(
            {"5way": 32, "20way": 16},
            "App. A.1",
            {"5way": 32, "20way": 16},
            "main.py usage lines, meta_batch_size",
        ),
        "n_iterations": _S(
            60_000, "App. A.1", 60_000, "main.py usage lines, metatrain_iterations"
        ),
        "scheme": _S(
            "1,200 train / 423 test characters",
            "§5.2",
            "1,100 train / 100 val / 423 test",
            "data_generator.py num_val",
            "Ours: 'paper' is the paper's split. " + FOLLOW_PAPER,
        ),
        "rotations": _S(True, "§5.2", True, "data_generator.py rotations"),
        **_FEWSHOT_COMMON,
    },
    "miniimagenet": {
        "n_way": _S(5, "Table 1", 5, "main.py usage lines, num_classes"),
        "k_shot": _S(
            {"1shot": 1, "5shot": 5},
            "Table 1",
            {"1shot": 1, "5shot": 5},
            "main.py usage lines, update_batch_size",
        ),
        "n_filters": _S(32, "§5.2", 32, "main.py usage lines, num_filters"),
        "max_pool": _S(True, "§5.2", True, "main.py usage lines, max_pool"),
        "in_channels": _S(None, "", 3, "data_generator.py, RGB"),
        "image_size": _S(None, "", 84, "data_generator.py img_size"),
        "inner_lr": _S(0.01, "App. A.1", 0.01, "main.py usage lines, update_lr"),
        "n_inner_steps": _S(5, "App. A.1", 5, "main.py usage lines, num_updates"),
        "n_test_inner_steps": _S(10, "App. A.1", 10, "main.py test_num_updates"),
        "n_query": _S(15, "App. A.1", 15, "main.py: K + 15 images per class"),
        "n_eval_query": _S(
            None, "", {"1shot": 1, "5shot": 5}, "main.py: 2K images per class at test"
        ),
        "meta_batch_size": _S(
            {"1shot": 4, "5shot": 2},
            "App. A.1",
            4,
            "main.py usage lines, both shots",
            FOLLOW_PAPER,
        ),
        "n_iterations": _S(
            60_000, "App. A.1", 60_000, "main.py usage lines, metatrain_iterations"
        ),
        "clip_grad": _S(
            None,
            "",
            10.0,
            "maml.py clips meta-gradients to [-10, 10], MiniImagenet only",
        ),
        "images_per_class": _S(
            None,
            "",
            None,
            "",
            "Ours: all 600 images of each class (None in the preset).",
        ),
        "n_val_tasks": _S(
            None,
            "",
            None,
            "",
            "Ours: the checkpoint is chosen on validation tasks; the code tests the "
            "latest.",
        ),
        **_FEWSHOT_COMMON,
    },
    "navigation": {
        **_rl_common("maml_trpo_point.py", 100),
        "n_traj": _S(20, "§5.3", 20, "maml_trpo_point.py fast_batch_size"),
        "horizon": _S(100, "§5.3", 100, "maml_trpo_point.py max_path_length"),
        "reward": _S(
            "negative squared distance",
            "§5.3",
            "negative distance",
            "point_env_randgoal.py",
            "App. C's returns fit the code's, which we follow (mamllib/rl/envs.py).",
        ),
        "inner_lr": _S(
            0.1,
            "App. A.2",
            0.5,
            "maml_trpo_point.py fast_learning_rates",
            FOLLOW_PAPER + " At evaluation α, then α/2 (App. A.2).",
        ),
        "meta_batch_size": _S(
            20, "App. A.2", 40, "maml_trpo_point.py meta_batch_size", FOLLOW_PAPER
        ),
        "n_eval_traj": _S(40, "Figure 4", None, ""),
        "n_eval_steps": _S(3, "Figure 4, App. C", None, ""),
    },
    "locomotion": {
        **_rl_common("cluster_maml_trpo_*.py", 800),
        "n_traj": _S(
            {"ant-direction": 40, "other": 20},
            "Figure 5",
            20,
            "cluster_maml_trpo_*.py fast_batch_size",
            FOLLOW_PAPER,
        ),
        "horizon": _S(200, "§5.3", 200, "cluster_maml_trpo_*.py max_path_length"),
        "inner_lr": _S(
            0.1,
            "App. A.2",
            0.1,
            "cluster_maml_trpo_*.py fast_lr",
            "At evaluation α, then α/2 (App. A.2).",
        ),
        "meta_batch_size": _S(
            40, "App. A.2", 40, "cluster_maml_trpo_*.py meta_batch_size"
        ),
        "n_eval_traj": _S({"ant-direction": 40, "other": 20}, "Figure 5", None, ""),
        "n_eval_steps": _S(3, "Figure 5", None, ""),
    },
}
