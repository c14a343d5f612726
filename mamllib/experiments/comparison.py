"""Every algorithm of Part IV at one budget: the engine behind the comparison page.

One call trains one algorithm on one setting with one seed (resuming from its
checkpoint), scores it on the setting's fixed test tasks and writes a small JSON
record; :func:`run_comparison` loops over all of them and :func:`summarize` turns the
records into the rows the page shows (mean and spread across training seeds).

    python -m mamllib compare --preset book            # everything, resumable
    python -m mamllib compare --preset book --settings omniglot-5way-1shot \\
        --algorithms maml protonet --seeds 0

What "equal budget" means here: every algorithm gets the same number of outer steps
on the same number of tasks per step (drawn from the same task stream), from the same
initialisation, with the setting's MAML hyperparameters (paper §5, App. A.1)
wherever the algorithm has the same knob. Each algorithm keeps what defines it (the
number of inner steps of Reptile and MAML++, iMAML's proximal weight); those choices
are in :data:`ALGORITHM_SETTINGS`, each with its reason. The pretrained classifier
sees as many images per step as a meta-batch holds. Time and peak memory per
meta-iteration are measured separately (:func:`measure_cost`), one thread each, in a
fresh process.

Introduced by notebook 16 (the comparison); the algorithms themselves are taught in
notebooks 11-15 and live in :mod:`mamllib.algorithms`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import vmap
from tqdm import tqdm

from mamllib.algorithms.anil import adapt_head, head_keys_of
from mamllib.algorithms.imaml import (
    curvature_step_solver,
    descend,
    imaml_objective,
    proximal_loss_of,
)
from mamllib.algorithms.maml_plus_plus import (
    MAMLPlusPlusStep,
    learned_rate_steps,
    msl_meta_loss_vmap,
)
from mamllib.algorithms.metasgd import lslr_lrs, meta_sgd_lrs
from mamllib.algorithms.pretrained_classifier import (
    classifier_objective,
    few_shot_logits,
    sample_images,
    zero_head_params,
)
from mamllib.algorithms.protonet import (
    protomaml_adapt,
    protomaml_objective,
    protonet_logits,
    protonet_objective,
)
from mamllib.algorithms.reptile import reptile_objective
from mamllib.baselines import pretrain_objective, tune_finetune_lr
from mamllib.episodes import Episodes
from mamllib.evaluate import (
    EVAL_SEED,
    VAL_SEED,
    adaptation_curve,
    evaluation_tasks,
    mean_ci,
)
from mamllib.maml import accuracy, cross_entropy_loss, mse_loss, task_loss
from mamllib.models import MLP, Params, detach_params, forward, init_params
from mamllib.outer_steps import AdamStep, OuterStep, meta_objective
from mamllib.progress import progress_enabled
from mamllib.runs import RunFolder, read_json, write_json
from mamllib.tasks import SinusoidTasks, TaskBatch, make_generator
from mamllib.train import checkpoint_iteration, fit

SETTINGS = (
    "sinusoid-5shot",
    "sinusoid-10shot",
    "omniglot-5way-1shot",
    "omniglot-20way-1shot",
)
ALGORITHMS = (
    "maml",
    "fomaml",
    "reptile",
    "anil",
    "protonet",
    "protomaml",
    "mamlpp",
    "metasgd",
    "imaml",
    "pretrained",
)
LABELS = {
    "maml": "MAML",
    "fomaml": "first-order MAML",
    "reptile": "Reptile",
    "anil": "ANIL",
    "protonet": "ProtoNet",
    "protomaml": "Proto-MAML",
    "mamlpp": "MAML++",
    "metasgd": "Meta-SGD",
    "imaml": "iMAML",
    "pretrained": "pretrained + fine-tuned",
}
# Prototypes need classes: no sinusoid row for them.
CLASSIFICATION_ONLY = ("protonet", "protomaml")

# The setting's MAML hyperparameters (paper §5.1, App. A.1; cbfinn/maml where the
# paper is silent). Test-time steps: 10 on the sinusoid (Figure 2's right end), 3 at
# Omniglot 5-way and 5 at 20-way (App. A.1).
_SETTING_BASE: dict[str, dict[str, Any]] = {
    "sinusoid-5shot": {
        "domain": "sinusoid",
        "k_shot": 5,
        "n_query": 5,
        "inner_lr": 0.01,
        "n_inner_steps": 1,
        "n_test_steps": 10,
    },
    "sinusoid-10shot": {
        "domain": "sinusoid",
        "k_shot": 10,
        "n_query": 10,
        "inner_lr": 0.01,
        "n_inner_steps": 1,
        "n_test_steps": 10,
    },
    "omniglot-5way-1shot": {
        "domain": "omniglot",
        "n_way": 5,
        "k_shot": 1,
        "n_query": 1,
        "inner_lr": 0.4,
        "n_inner_steps": 1,
        "n_test_steps": 3,
    },
    "omniglot-20way-1shot": {
        "domain": "omniglot",
        "n_way": 20,
        "k_shot": 1,
        "n_query": 1,
        "inner_lr": 0.1,
        "n_inner_steps": 5,
        "n_test_steps": 5,
    },
}

# The budget: outer steps, tasks per step, test tasks, training seeds. ``book`` is
# the stated budget of the comparison page, sized for a laptop CPU (notebook 16
# states the measured training time); ``ci`` only tests the machinery; ``paper`` is
# MAML's own budget for every algorithm (70,000 sinusoid steps of 25 tasks; 60,000
# Omniglot steps of 32 tasks at 5-way and 16 at 20-way).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "sinusoid": {"n_iterations": 30, "meta_batch_size": 4, "n_eval_tasks": 100},
        "omniglot-5way": {"n_iterations": 6, "meta_batch_size": 2, "n_eval_tasks": 20},
        "omniglot-20way": {
            "n_iterations": 3,
            "meta_batch_size": 1,
            "n_eval_tasks": 10,
        },
    },
    "book": {
        "sinusoid": {"n_iterations": 3000, "meta_batch_size": 10, "n_eval_tasks": 600},
        "omniglot-5way": {
            "n_iterations": 300,
            "meta_batch_size": 8,
            "n_eval_tasks": 600,
        },
        "omniglot-20way": {
            "n_iterations": 100,
            "meta_batch_size": 4,
            "n_eval_tasks": 600,
        },
    },
    "paper": {
        "sinusoid": {
            "n_iterations": 70_000,
            "meta_batch_size": 25,
            "n_eval_tasks": 600,
        },
        "omniglot-5way": {
            "n_iterations": 60_000,
            "meta_batch_size": 32,
            "n_eval_tasks": 600,
        },
        "omniglot-20way": {
            "n_iterations": 60_000,
            "meta_batch_size": 16,
            "n_eval_tasks": 600,
        },
    },
}
SEEDS = {"ci": (0,), "book": (0, 1, 2), "paper": (0, 1, 2)}
OUTER_LR = 1e-3  # Adam, every algorithm (MAML's beta, cbfinn/maml meta_lr)

# What each algorithm keeps of its own, per domain, and why.
ALGORITHM_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # Reptile needs several inner steps (with one, its update is joint training);
    # 5 as Nichol et al.'s Omniglot setting, on support and query points together,
    # with the setting's inner learning rate (they use Adam inside; we keep SGD).
    "reptile": {
        "sinusoid": {"n_inner_steps": 5, "batch_size": 5},
        "omniglot": {"n_inner_steps": 5, "batch_size": None},
    },
    # MAML++'s multi-step loss needs steps to weigh: 5, as Antoniou et al. MSL
    # annealed and first-order derivatives over the first third of training, cosine
    # annealing over all of it (notebook 15's schedule).
    "mamlpp": {
        "sinusoid": {"n_inner_steps": 5},
        "omniglot": {"n_inner_steps": 5},
    },
    # Meta-SGD: one step with a learned rate per parameter element (Li et al.).
    "metasgd": {"sinusoid": {}, "omniglot": {}},
    # iMAML: lambda 2 and 5 CG iterations as Rajeswaran et al.'s Omniglot (Table 2),
    # with 5 inner steps of the setting's rate (they use 16 and 25). The sinusoid
    # needs notebook 12's curvature step: fixed steps diverge there.
    "imaml": {
        "sinusoid": {
            "lam": 20.0,
            "n_inner_steps": 10,
            "cg_iters": 5,
            "curvature_solver": True,
        },
        "omniglot": {
            "lam": 2.0,
            "n_inner_steps": 5,
            "cg_iters": 5,
            "curvature_solver": False,
        },
    },
    # The non-meta baselines: the sinusoid's pretrained net (notebook 3) fine-tuned
    # with a step size tuned on validation tasks; on Omniglot a classifier over all
    # training classes with a logistic head fitted per task (notebook 13).
    "pretrained": {
        "sinusoid": {"finetune_lrs": [0.001, 0.003, 0.01, 0.03, 0.1]},
        "omniglot": {},
    },
}


def check_request(
    settings: Iterable[str], algorithms: Iterable[str], preset: str
) -> None:
    """Refuse unknown names before anything is loaded or trained."""
    for name, given, known in (
        ("setting", settings, SETTINGS),
        ("algorithm", algorithms, ALGORITHMS),
        ("preset", [preset], tuple(BUDGETS)),
    ):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(
                f"unknown {name} {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(known)}"
            )


def applicable(setting: str, algorithm: str) -> bool:
    """Whether ``algorithm`` has a row on ``setting`` (prototypes need classes)."""
    return not (
        algorithm in CLASSIFICATION_ONLY
        and _SETTING_BASE[setting]["domain"] == "sinusoid"
    )


def setting_config(setting: str, preset: str) -> dict[str, Any]:
    """Everything that fixes a setting's training and test: hyperparameters, the
    budget of ``preset`` and the model's shape."""
    check_request([setting], [], preset)
    base = dict(_SETTING_BASE[setting])
    if base["domain"] == "sinusoid":
        budget = BUDGETS[preset]["sinusoid"]
        base["hidden_sizes"] = [40, 40]  # §5.1
    else:
        budget = BUDGETS[preset][f"omniglot-{base['n_way']}way"]
        base["n_filters"] = 64  # App. A.1
    return {
        "setting": setting,
        "preset": preset,
        "outer_lr": OUTER_LR,
        **base,
        **budget,
    }


def _own(config: dict[str, Any], algorithm: str) -> dict[str, Any]:
    return ALGORITHM_SETTINGS.get(algorithm, {}).get(config["domain"], {})


# Models and data ----------------------------------------------------------------


def model_of(config: dict[str, Any], n_outputs: int | None = None) -> nn.Module:
    """The setting's network: the 1-40-40-1 MLP or the conv-4 (``n_outputs``: the
    classifier's head over all training classes)."""
    if config["domain"] == "sinusoid":
        return MLP((1, *config["hidden_sizes"], 1))
    from mamllib.conv4 import Conv4

    return Conv4(n_outputs or config["n_way"], n_filters=config["n_filters"])


def _omniglot_splits() -> dict[str, Any]:
    from mamllib.data.omniglot import load_omniglot, tasks_for_split

    data = load_omniglot()
    return {
        split: tasks_for_split(data, split, scheme="paper", rotations=True)
        for split in ("train", "test")
    }


def load_data(settings: Iterable[str]) -> dict[str, Any]:
    """The samplers the settings need (Omniglot loaded once, before any training)."""
    if any(_SETTING_BASE[s]["domain"] == "omniglot" for s in settings):
        return {"omniglot": _omniglot_splits()}
    return {}


def _sampler(config: dict[str, Any], data: dict[str, Any]):
    if config["domain"] == "sinusoid":
        tasks = SinusoidTasks()

        def sample(generator):
            return tasks.sample(
                config["meta_batch_size"],
                config["k_shot"],
                config["n_query"],
                generator=generator,
            )

        return sample
    train = data["omniglot"]["train"]

    def sample_episodes(generator):
        return train.sample(
            config["meta_batch_size"],
            config["n_way"],
            config["k_shot"],
            config["n_query"],
            generator=generator,
        )

    return sample_episodes


def _images_per_step(config: dict[str, Any]) -> int:
    """The classifier's minibatch: as many images as one meta-batch holds."""
    per_task = config["n_way"] * (config["k_shot"] + config["n_query"])
    return config["meta_batch_size"] * per_task


# Training -----------------------------------------------------------------------


def initial_params(
    config: dict[str, Any], algorithm: str, seed: int, n_classes: int | None = None
) -> Params:
    """The starting point: the same for every algorithm of a setting and seed (the
    conv-4's head at zero, as notebooks 13 and 14), plus learned inner learning rates
    for Meta-SGD and MAML++ starting at the setting's ``inner_lr``."""
    g = make_generator(seed, "init")
    if config["domain"] == "sinusoid":
        params = init_params(model_of(config), g)
    else:
        n_outputs = n_classes if algorithm == "pretrained" else None
        params = zero_head_params(model_of(config, n_outputs), g)
    if algorithm == "metasgd":
        params = {**params, **meta_sgd_lrs(params, config["inner_lr"])}
    if algorithm == "mamlpp":
        steps = _own(config, algorithm)["n_inner_steps"]
        params = {**params, **lslr_lrs(params, config["inner_lr"], steps)}
    return params


def _loss(config: dict[str, Any]):
    return mse_loss if config["domain"] == "sinusoid" else cross_entropy_loss


def training_step(
    config: dict[str, Any], algorithm: str, n_classes: int | None = None
) -> OuterStep | Any:
    """``algorithm``'s outer step for :func:`mamllib.train.fit`: an objective (Adam is
    then built by ``fit``) or, for MAML++, its :class:`MAMLPlusPlusStep`."""
    model, loss_fn = model_of(config), _loss(config)
    alpha, steps = config["inner_lr"], config["n_inner_steps"]
    own = _own(config, algorithm)
    if algorithm in ("maml", "fomaml"):
        return meta_objective(
            model, loss_fn, alpha, steps, first_order=algorithm == "fomaml"
        )
    if algorithm == "reptile":
        return reptile_objective(
            model,
            loss_fn,
            alpha,
            own["n_inner_steps"],
            use_query=True,
            batch_size=own["batch_size"],
            strategy="vmap",
        )
    if algorithm == "anil":
        return _anil_objective(model, loss_fn, alpha, steps)
    if algorithm == "protonet":
        return protonet_objective(model, config["n_way"])
    if algorithm == "protomaml":
        return protomaml_objective(
            model, loss_fn, alpha, steps, config["n_way"], adapt_body=True
        )
    if algorithm == "metasgd":
        return lambda params, tasks: msl_meta_loss_vmap(
            model, params, tasks, loss_fn, alpha, steps
        )
    if algorithm == "mamlpp":
        third = config["n_iterations"] // 3
        return MAMLPlusPlusStep(
            model,
            loss_fn,
            alpha,
            own["n_inner_steps"],
            config["outer_lr"],
            msl_iterations=third,
            first_order_iterations=third,
            cosine_iterations=config["n_iterations"],
        )
    if algorithm == "imaml":
        solver = curvature_step_solver(own["n_inner_steps"])
        return imaml_objective(
            model,
            loss_fn,
            alpha,
            own["n_inner_steps"],
            own["lam"],
            own["cg_iters"],
            solver=solver if own["curvature_solver"] else None,
            strategy="vmap",
        )
    if algorithm == "pretrained":
        if config["domain"] == "sinusoid":
            return pretrain_objective(model, loss_fn)
        return classifier_objective(model_of(config, n_classes))
    raise ValueError(f"unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")


def _anil_objective(model, loss_fn, inner_lr, n_inner_steps):
    """ANIL's meta-loss with the tasks batched by ``vmap`` (the head adapted with the
    graph kept; equal to :func:`mamllib.algorithms.anil.anil_meta_loss`)."""
    head = head_keys_of(model)

    def objective(params: Params, tasks) -> torch.Tensor:
        def one_task(xs, ys, xq, yq):
            adapted = adapt_head(
                model, params, xs, ys, loss_fn, inner_lr, n_inner_steps, head
            )
            return task_loss(model, adapted, xq, yq, loss_fn)

        return vmap(one_task)(
            tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query
        ).mean()

    return objective


def _batch_sampler(config, algorithm, data):
    if algorithm == "pretrained" and config["domain"] == "omniglot":
        images, n = data["omniglot"]["train"].images, _images_per_step(config)
        return lambda g: sample_images(images, n, g)
    return _sampler(config, data)


def _n_classes(config, algorithm, data) -> int | None:
    if algorithm == "pretrained" and config["domain"] == "omniglot":
        return data["omniglot"]["train"].n_classes
    return None


def train_one(
    config: dict[str, Any],
    algorithm: str,
    seed: int,
    data: dict[str, Any],
    run: RunFolder | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Train ``algorithm`` on ``config``'s setting from ``seed`` (resuming from
    ``run``'s checkpoint). A run that diverges is recorded, not raised: the record
    says what diverged and the iteration of the last checkpoint, which is kept.

    Returns:
        ``{"params", "iterations", "wall_time_s", "diverged"}`` (``diverged``: the
        message, or None; a diverged run's ``params`` are None).
    """
    n_classes = _n_classes(config, algorithm, data)
    step = training_step(config, algorithm, n_classes)
    params = initial_params(config, algorithm, seed, n_classes)
    name = f"{config['setting']}-{algorithm}"
    checkpoint = run.checkpoint(name) if run else None
    fingerprint = {
        k: v for k, v in config.items() if k not in ("n_eval_tasks", "preset")
    }
    fingerprint.update(algorithm=algorithm, seed=seed, own=_own(config, algorithm))
    try:
        result = fit(
            step,
            params,
            _batch_sampler(config, algorithm, data),
            make_generator(seed, "tasks"),
            config["n_iterations"],
            config["outer_lr"],
            checkpoint=checkpoint,
            checkpoint_every=max(config["n_iterations"] // 4, 1),
            log_every=max(config["n_iterations"] // 20, 1),
            fingerprint=fingerprint,
            desc=f"{LABELS[algorithm]}, {config['setting']}, seed {seed}",
            time_limit_s=time_limit_s,
        )
    except FloatingPointError as exc:
        kept = checkpoint is not None and checkpoint.exists()
        return {
            "params": None,  # a diverged run has no row of its own: not scored
            "iterations": checkpoint_iteration(checkpoint) if kept else 0,
            "wall_time_s": None,
            # what diverged and when; not where the checkpoint lies on this machine
            "diverged": str(exc).split(";")[0],
        }
    return {
        "params": detach_params(result.params, requires_grad=False),
        "iterations": result.iterations,
        "wall_time_s": result.wall_time_s,
        "diverged": None,
    }


# Test-time adaptation -----------------------------------------------------------


def adapted_predictions(
    config: dict[str, Any],
    algorithm: str,
    params: Params,
    tasks: TaskBatch,
    n_classes: int | None = None,
) -> torch.Tensor:
    """``algorithm``'s predictions on the query sets of ``tasks`` after its test-time
    adaptation on their support sets, ``[n_tasks, n_query, outputs]``.

    MAML, first-order MAML and Reptile take ``n_test_steps`` SGD steps of the
    setting's ``inner_lr`` on all parameters, ANIL on the head, Proto-MAML from the
    prototype head; Meta-SGD and MAML++ take their trained number of steps with
    their learned rates; iMAML solves its proximal problem as in training; ProtoNet
    takes none. (The pretrained sinusoid net is scored by :func:`score` with its
    tuned step size.)
    """
    model, loss_fn = model_of(config), _loss(config)
    alpha, n_test = config["inner_lr"], config["n_test_steps"]
    own = _own(config, algorithm)
    if algorithm == "pretrained":
        return few_shot_logits(
            model_of(config, n_classes),
            params,
            tasks.x_support,
            tasks.y_support,
            tasks.x_query,
            config["n_way"],
        )
    if algorithm == "protonet":
        return vmap(
            lambda xs, ys, xq: protonet_logits(
                model, params, xs, ys, xq, config["n_way"]
            )
        )(tasks.x_support, tasks.y_support, tasks.x_query)

    def adapt(xs, ys) -> Params:
        if algorithm in ("maml", "fomaml", "reptile"):
            return descend(
                lambda p: task_loss(model, p, xs, ys, loss_fn), params, alpha, n_test
            )
        if algorithm == "anil":
            head = head_keys_of(model)
            return adapt_head(
                model, params, xs, ys, loss_fn, alpha, n_test, head, first_order=True
            )
        if algorithm == "protomaml":
            return protomaml_adapt(
                model,
                params,
                xs,
                ys,
                loss_fn,
                alpha,
                n_test,
                config["n_way"],
                adapt_body=True,
                first_order=True,
            )
        if algorithm in ("metasgd", "mamlpp"):  # their trained steps, learned rates
            steps = own.get("n_inner_steps", config["n_inner_steps"])
            return learned_rate_steps(model, params, xs, ys, loss_fn, alpha, steps)[-1]
        if algorithm == "imaml":
            proximal = proximal_loss_of(model, params, xs, ys, loss_fn, own["lam"])
            if own["curvature_solver"]:
                return curvature_step_solver(own["n_inner_steps"])(proximal, params)
            return descend(proximal, params, alpha, own["n_inner_steps"])
        raise ValueError(f"unknown algorithm {algorithm!r}")

    def one_task(xs, ys, xq):
        return forward(model, adapt(xs, ys), xq)

    return vmap(one_task)(tasks.x_support, tasks.y_support, tasks.x_query)


def fixed_test_tasks(config: dict[str, Any], data: dict[str, Any]) -> TaskBatch:
    """The setting's fixed test tasks (the evaluation seed: every algorithm and seed
    meets the same ones): 600 sinusoids with 100 query points each, or Omniglot
    episodes over the 423 test characters with one query image per class."""
    if config["domain"] == "sinusoid":
        return evaluation_tasks(config["k_shot"], config["n_eval_tasks"], 100)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return data["omniglot"]["test"].sample(
        config["n_eval_tasks"],
        config["n_way"],
        config["k_shot"],
        config["n_query"],
        generator=generator,
    )


def score(
    config: dict[str, Any],
    algorithm: str,
    params: Params,
    tasks: TaskBatch,
    n_classes: int | None = None,
    chunk: int = 50,
) -> dict[str, Any]:
    """Per-task test scores after adaptation: query MSE (sinusoid) or accuracy in %
    (Omniglot), ``{"per_task": [n_tasks] tensor, "finetune_lr": ...}``."""
    params = detach_params(params, requires_grad=False)
    if config["domain"] == "sinusoid" and algorithm == "pretrained":
        model = model_of(config)
        val = evaluation_tasks(config["k_shot"], 100, 100, seed=VAL_SEED)
        lr, _ = tune_finetune_lr(
            model,
            params,
            val,
            mse_loss,
            _own(config, algorithm)["finetune_lrs"],
            config["n_test_steps"],
        )
        curve = adaptation_curve(
            model, params, tasks, mse_loss, lr, config["n_test_steps"]
        )
        return {"per_task": curve[:, -1], "finetune_lr": lr}
    out = []
    for start in range(0, len(tasks), chunk):
        part = tasks.subset(slice(start, start + chunk))
        with torch.enable_grad():
            predictions = adapted_predictions(
                config, algorithm, params, part, n_classes
            ).detach()
        if config["domain"] == "sinusoid":
            out.append(((predictions - part.y_query) ** 2).mean((-1, -2)))
        else:
            out.append(vmap(accuracy)(predictions, part.y_query) * 100)
    return {"per_task": torch.cat(out), "finetune_lr": None}


# One cell of the table, and all of them ------------------------------------------


def record_path(run: RunFolder, setting: str, algorithm: str) -> Path:
    return run.file(f"score-{setting}-{algorithm}.json")


def run_one(
    setting: str,
    algorithm: str,
    seed: int,
    preset: str,
    data: dict[str, Any],
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Train (resuming) and score one algorithm on one setting with one seed; the
    record is written to ``results/comparison/<preset>/seed-<n>/`` and returned. A
    record of a finished training is reused, not recomputed."""
    config = setting_config(setting, preset)
    run = RunFolder("comparison", preset, seed)
    path = record_path(run, setting, algorithm)
    if path.exists():
        record = read_json(path)
        if record["iterations"] == config["n_iterations"] or record["diverged"]:
            return record
    trained = train_one(config, algorithm, seed, data, run, time_limit_s)
    record = {
        "setting": setting,
        "algorithm": algorithm,
        "seed": seed,
        "iterations": trained["iterations"],
        "n_iterations": config["n_iterations"],
        "meta_batch_size": config["meta_batch_size"],
        "train_wall_time_s": trained["wall_time_s"],
        "diverged": trained["diverged"],
        "metric": "mse" if config["domain"] == "sinusoid" else "accuracy",
        "n_test_tasks": config["n_eval_tasks"],
    }
    if trained["params"] is not None:
        scores = score(
            config,
            algorithm,
            trained["params"],
            fixed_test_tasks(config, data),
            _n_classes(config, algorithm, data),
        )
        record.update(mean_ci(scores["per_task"]), finetune_lr=scores["finetune_lr"])
        torch.save(scores["per_task"], run.file(f"per-task-{setting}-{algorithm}.pt"))
    write_json(path, record)
    return record


def run_comparison(
    preset: str,
    settings: Iterable[str] = SETTINGS,
    algorithms: Iterable[str] = ALGORITHMS,
    seeds: Iterable[int] | None = None,
    time_limit_s: float | None = None,
    measure: bool = True,
) -> dict[str, Any]:
    """Every (setting, algorithm, seed) of the request, then the cost measurements;
    everything resumes. Returns :func:`summarize`'s rows."""
    settings, algorithms = list(settings), list(algorithms)
    check_request(settings, algorithms, preset)
    seeds = list(SEEDS[preset] if seeds is None else seeds)
    data = load_data(settings)  # before any training: a missing data set fails now
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    cells = [
        (s, a, seed)
        for seed in seeds
        for s in settings
        for a in algorithms
        if applicable(s, a)
    ]
    for s, a, seed in tqdm(cells, desc="comparison", disable=not progress_enabled()):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        run_one(s, a, seed, preset, data, left)
    if measure:
        for s in settings:
            for a in algorithms:
                if applicable(s, a):
                    cost_of(s, a, preset)
    return summarize(preset)


# Cost ---------------------------------------------------------------------------


def _random_batch(config: dict[str, Any], algorithm: str, n_classes: int | None):
    """A batch of the right shapes (memory and time do not depend on pixel values)."""
    g = torch.Generator().manual_seed(0)
    if config["domain"] == "sinusoid":
        return _sampler(config, {})(g)
    if algorithm == "pretrained":
        n = _images_per_step(config)
        x = torch.rand(n, 1, 28, 28, generator=g)
        return x, torch.randint(n_classes, (n,), generator=g)
    t, n_way = config["meta_batch_size"], config["n_way"]
    ys = torch.arange(n_way).repeat_interleave(config["k_shot"])
    yq = torch.arange(n_way).repeat_interleave(config["n_query"])
    return Episodes(
        x_support=torch.rand(t, len(ys), 1, 28, 28, generator=g),
        y_support=ys.expand(t, -1).clone(),
        x_query=torch.rand(t, len(yq), 1, 28, 28, generator=g),
        y_query=yq.expand(t, -1).clone(),
        classes=torch.zeros(t, n_way, dtype=torch.long),
        examples=torch.zeros(t, n_way, 2, dtype=torch.long),
    )


def _resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMeter:
    """The highest resident memory seen while it runs, sampled every half
    millisecond by a thread (torch releases the GIL inside its operations)."""

    def __enter__(self):
        self.floor = self.peak = _resident_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _resident_bytes())


def measure_cost(
    setting: str, algorithm: str, preset: str, repeats: int = 5
) -> dict[str, float]:
    """Milliseconds per meta-iteration (outer step included; the median of
    ``repeats`` after one warm-up) and the peak resident memory they add above the
    memory held just before the first one, in MiB, on one thread. Run it in a fresh
    process (:func:`cost_of` does), so that no earlier work has left memory that the
    step could reuse unseen."""
    torch.set_num_threads(1)
    config = setting_config(setting, preset)
    n_classes = 4800 if algorithm == "pretrained" else None  # 1200 chars x 4 turns
    if config["domain"] == "sinusoid":
        n_classes = None
    batch = _random_batch(config, algorithm, n_classes)
    params = detach_params(initial_params(config, algorithm, 0, n_classes))
    step = training_step(config, algorithm, n_classes)
    if isinstance(step, MAMLPlusPlusStep):  # its costlier, second-order phase
        step.iteration = step.first_order_iterations
    if not isinstance(step, OuterStep):
        step = AdamStep(step, params, config["outer_lr"])
    times = []
    with _PeakMeter() as memory:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            step(params, batch, 1.0)
            times.append(1000 * (time.perf_counter() - t0))
    return {
        "ms_per_iteration": statistics.median(times[1:]),
        "peak_mib": (memory.peak - memory.floor) / 2**20,
        "repeats": repeats,
    }


def _preset_folder(preset: str) -> Path:
    """``results/comparison/<preset>/``: a folder per seed, and the cost records."""
    return RunFolder("comparison", preset, 0, create=False).path.parent


def cost_path(preset: str, setting: str, algorithm: str) -> Path:
    return _preset_folder(preset) / f"cost-{setting}-{algorithm}.json"


def cost_of(setting: str, algorithm: str, preset: str) -> dict[str, float]:
    """:func:`measure_cost` in a fresh process, kept in
    ``results/comparison/<preset>/cost-<setting>-<algorithm>.json``."""
    path = cost_path(preset, setting, algorithm)
    if path.exists():
        return read_json(path)
    code = (
        "import json, sys; from mamllib.experiments.comparison import measure_cost; "
        "print(json.dumps(measure_cost(*sys.argv[1:4])))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, setting, algorithm, preset],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    cost = json.loads(out.strip().splitlines()[-1])
    write_json(path, cost)
    return cost


# Rows ---------------------------------------------------------------------------


def summarize(preset: str) -> dict[str, Any]:
    """The comparison's rows from the records on disk: per setting and algorithm,
    the mean over training seeds of the test score, its spread (standard deviation
    across seeds, and each seed's own 95% interval over test tasks), how far each
    seed trained, and the cost."""
    rows: dict[str, dict[str, Any]] = {}
    base = _preset_folder(preset)
    for setting in SETTINGS:
        config = setting_config(setting, preset)
        for algorithm in ALGORITHMS:
            records = [
                read_json(p)
                for p in sorted(base.glob(f"seed-*/score-{setting}-{algorithm}.json"))
            ]
            if not records:
                continue
            scored = [r for r in records if "mean" in r and not r["diverged"]]
            means = [r["mean"] for r in scored]
            cost_file = cost_path(preset, setting, algorithm)
            rows.setdefault(setting, {})[algorithm] = {
                "label": LABELS[algorithm],
                "metric": records[0]["metric"],
                "seeds": [r["seed"] for r in records],
                "per_seed": [
                    {
                        k: r.get(k)
                        for k in (
                            "seed",
                            "mean",
                            "ci95",
                            "iterations",
                            "diverged",
                            "train_wall_time_s",
                            "finetune_lr",
                        )
                    }
                    for r in records
                ],
                "mean": statistics.fmean(means) if means else None,
                "seed_std": statistics.stdev(means) if len(means) > 1 else None,
                "n_diverged": sum(bool(r["diverged"]) for r in records),
                "complete": all(
                    r["iterations"] == config["n_iterations"] or r["diverged"]
                    for r in records
                ),
                "iterations": min(r["iterations"] for r in records),
                "cost": read_json(cost_file) if cost_file.exists() else None,
            }
    return {
        "preset": preset,
        "settings": {s: setting_config(s, preset) for s in SETTINGS},
        "algorithm_settings": ALGORITHM_SETTINGS,
        "rows": rows,
    }


def write_artifact(
    preset: str, name: str, command: str, root: Path | None = None
) -> Path:
    """``artifacts/<name>/``: the rows (``metrics.json``), the settings and budget
    (``config.json``) and a manifest (command, commit, device, training time, status:
    ``complete`` when every cell trained its full budget, else ``partial``)."""
    from mamllib.runs import device_description, git_commit, repo_root, write_manifest

    summary = summarize(preset)
    if not summary["rows"]:
        raise FileNotFoundError(
            f"no comparison records for preset {preset!r}: run python -m mamllib "
            f"compare --preset {preset} first"
        )
    root = root or repo_root()
    commit = git_commit(root)
    target = root / "artifacts" / name
    target.mkdir(parents=True, exist_ok=True)
    cells = [row for rows in summary["rows"].values() for row in rows.values()]
    complete = all(c["complete"] for c in cells) and len(cells) == sum(
        applicable(s, a) for s in SETTINGS for a in ALGORITHMS
    )
    training = sum(p["train_wall_time_s"] or 0 for c in cells for p in c["per_seed"])
    write_json(target / "metrics.json", {**summary, "status": _status(complete)})
    write_json(
        target / "config.json",
        {
            "preset": preset,
            "budgets": BUDGETS[preset],
            "seeds": list(SEEDS[preset]),
            "outer_lr": OUTER_LR,
            "settings": summary["settings"],
            "algorithm_settings": ALGORITHM_SETTINGS,
        },
    )
    write_manifest(
        target,
        command=command,
        commit=commit,
        device=device_description("cpu"),
        training_wall_time_s=round(training, 1),
        status=_status(complete),
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    return target


def _status(complete: bool) -> str:
    return "complete" if complete else "partial"
