"""Few-shot image classification with MAML (paper §5.2): Omniglot and MiniImageNet.

Glue on the top floor, like :mod:`mamllib.experiments.sinusoid`: a config from
``presets.make_config("omniglot-5way-1shot", ...)`` (or ``"miniimagenet-5way-1shot"``)
becomes a trained conv-4 with checkpoints in a run folder, scored on fixed test tasks
(accuracy mean and 95% CI). The chapters on Omniglot (07) and MiniImageNet (08) walk
through it; papermill and ``scripts/train_*.py`` run it at scale.

MiniImageNet adds three things, all read from the config so Omniglot is unchanged:
the model variant (``max_pool``, ``in_channels``, ``image_size``), clipping of the
meta-gradient (``clip_grad``), and checkpoint selection on validation tasks
(``train_maml(..., val_tasks=...)``).

Scoring lives in :mod:`mamllib.experiments.fewshot_evaluation` and the results a run
writes in :mod:`mamllib.experiments.fewshot_results`; the names of theirs that the
chapters use are importable from here too.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from mamllib.evaluate import VAL_SEED
from mamllib.experiments import run_name
from mamllib.experiments.fewshot_evaluation import (
    adaptation_curve_loop,
    evaluate_maml,
    model_for,
)
from mamllib.experiments.fewshot_results import already_evaluated, save_results
from mamllib.maml import cross_entropy_loss
from mamllib.models import Params, init_params
from mamllib.runs import RunFolder, read_json, save_torch
from mamllib.tasks import make_generator
from mamllib.train import FitResult, checkpoint_iteration, fit, meta_objective

__all__ = [
    "adaptation_curve_loop",
    "already_evaluated",
    "check_episodes",
    "episode_samplers",
    "evaluate_maml",
    "model_for",
    "save_results",
    "train_and_evaluate",
    "train_maml",
]

# Settings that do not change what training computes (see sinusoid._NOT_TRAINING).
_NOT_TRAINING = {
    "preset",
    "n_iterations",
    "checkpoint_every",
    "n_eval_tasks",
    "n_eval_steps",
    "n_test_inner_steps",
    "device",
    "strategy",
    "n_val_tasks",  # checkpoint selection reads the run, never changes it
    "n_eval_query",
}


def train_maml(
    config: dict[str, Any],
    tasks,
    run: RunFolder | None = None,
    desc: str = "maml",
    time_limit_s: float | None = None,
    val_tasks=None,
) -> FitResult:
    """Meta-train the conv-4 with MAML on episodes from ``tasks`` (the train split).

    Resumes from ``run``'s ``checkpoint-maml.pt`` if it exists; ``time_limit_s`` stops
    (with a checkpoint) after that many seconds, to continue in a later call. The
    meta-gradient is clipped elementwise to ``[-clip_grad, clip_grad]`` when the
    config has ``clip_grad`` (MiniImageNet, as cbfinn/maml).

    With ``val_tasks`` (episodes over the validation classes, never the test ones),
    every ``checkpoint_every`` iterations and at the end the parameters are scored on
    ``n_val_tasks`` fixed validation tasks (accuracy after ``n_test_inner_steps``);
    the result's ``params`` are then the best-scoring ones and ``selection`` says
    which (``{"iteration": [...], "val_accuracy": [...], "best_iteration": i,
    "best_val_accuracy": a}``). The record and the best parameters are kept in the
    run folder (``selection-maml.pt``), so a resumed run selects as an uninterrupted
    one would.
    """
    check_episodes(config)  # before any iteration is spent
    model = model_for(config)
    device = torch.device(config["device"])
    params = init_params(model, make_generator(config["seed"], "init"), device=device)
    objective = meta_objective(
        model,
        cross_entropy_loss,
        config["inner_lr"],
        config["n_inner_steps"],
        config["first_order"],
        config["strategy"],
    )

    def sample_batch(generator):
        return tasks.sample(
            config["meta_batch_size"],
            config["n_way"],
            config["k_shot"],
            config["n_query"],
            generator=generator,
        ).to(device)

    fingerprint = {k: v for k, v in config.items() if k not in _NOT_TRAINING}
    selector = None if val_tasks is None else _Selector(config, val_tasks, run)
    result = fit(
        objective,
        params,
        sample_batch,
        make_generator(config["seed"], "tasks"),
        config["n_iterations"],
        config["outer_lr"],
        checkpoint=run.checkpoint("maml") if run else None,
        checkpoint_every=config["checkpoint_every"],
        log_every=config["log_every"],
        fingerprint=fingerprint,
        desc=desc,
        time_limit_s=time_limit_s,
        clip_grad=config.get("clip_grad"),
        on_checkpoint=None if selector is None else selector,
    )
    if selector is None:
        return result
    if result.iterations == config["n_iterations"]:
        selector(result.iterations, result.params)  # no-op if already scored
    return selector.select(result)


class _Selector:
    """Checkpoint selection on validation tasks: a record, the best parameters."""

    def __init__(self, config: dict[str, Any], val_tasks, run: RunFolder | None):
        self.config, self.val_tasks = config, val_tasks
        self.path = run.file("selection-maml.pt") if run else None
        self.record: dict[int, float] = {}
        self.best: Params | None = None
        if self.path is not None and self.path.exists():
            state = torch.load(self.path, weights_only=True)
            self.record = dict(zip(state["iteration"], state["val_accuracy"]))
            self.best = state["best_params"]

    def __call__(self, iteration: int, params: Params) -> None:
        if iteration in self.record:  # scored before an interruption: same params
            return
        config = {
            **self.config,
            "n_eval_tasks": self.config["n_val_tasks"],
            "n_eval_steps": self.config["n_test_inner_steps"],
        }
        evaluation = evaluate_maml(params, self.val_tasks, config, seed=VAL_SEED)
        accuracy = evaluation["at_test_steps"]["mean"]
        if not self.record or accuracy > max(self.record.values()):
            self.best = {k: v.detach().cpu().clone() for k, v in params.items()}
        self.record[iteration] = accuracy
        if self.path is not None:
            save_torch(self.path, self._state())

    def _state(self) -> dict[str, Any]:
        iterations = sorted(self.record)
        return {
            "iteration": iterations,
            "val_accuracy": [self.record[i] for i in iterations],
            "best_params": self.best,
        }

    def select(self, result: FitResult) -> FitResult:
        if not self.record:  # stopped before the first checkpoint: nothing scored
            return result
        state = self._state()
        best = max(self.record, key=lambda i: (self.record[i], -i))
        device = next(iter(result.params.values())).device
        params = {k: v.to(device) for k, v in self.best.items()}
        selection = {
            "iteration": state["iteration"],
            "val_accuracy": state["val_accuracy"],
            "best_iteration": best,
            "best_val_accuracy": self.record[best],
            "n_val_tasks": self.config["n_val_tasks"],
        }
        return dataclasses.replace(result, params=params, selection=selection)


def check_episodes(config: dict[str, Any]) -> None:
    """Refuse an N-way K-shot setting that a split of the data set cannot supply
    (e.g. ``n_way=500`` on Omniglot), from the split sizes alone, before any data is
    read or any iteration is spent."""
    from mamllib.data import check_episode_sizes

    dataset = config["experiment"].split("-")[0]
    if dataset == "omniglot":
        splits = ("train", "test")
        options = {"scheme": config["scheme"], "rotations": config["rotations"]}
    else:
        splits = ("train", "val", "test")
        options = {"images_per_class": config["images_per_class"]}
    for split in splits:
        n_query = config["n_query"]
        if split != "train":
            n_query = config.get("n_eval_query") or n_query
        check_episode_sizes(
            dataset, split, config["n_way"], config["k_shot"], n_query, **options
        )


def episode_samplers(config: dict[str, Any]) -> dict[str, Any]:
    """The train, validation (MiniImageNet) and test samplers of a config, all
    loaded before training starts, so that a missing or too small split fails
    before any iteration is spent."""
    check_episodes(config)
    dataset = config["experiment"].split("-")[0]
    if dataset == "omniglot":
        from mamllib.data.omniglot import load_omniglot, tasks_for_split

        data = load_omniglot()
        return {
            split: tasks_for_split(
                data, split, scheme=config["scheme"], rotations=config["rotations"]
            )
            for split in ("train", "test")
        }
    from mamllib.data.miniimagenet import load_miniimagenet, tasks_for_split

    return {
        split: tasks_for_split(
            load_miniimagenet(split, images_per_class=config["images_per_class"])
        )
        for split in ("train", "val", "test")
    }


def train_and_evaluate(
    config: dict[str, Any],
    run: RunFolder,
    time_limit_s: float | None = None,
    reevaluate: bool = False,
    evaluate_only: bool = False,
    samplers: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Meta-train (resuming), evaluate on the test split and write the results.

    MiniImageNet selects the checkpoint on validation tasks, as cbfinn/maml. A call
    on a run whose ``metrics.json`` already scores its weights does not evaluate
    again unless ``reevaluate`` (:func:`already_evaluated`). Returns the metrics
    written, or None when nothing was evaluated.
    """
    samplers = samplers or episode_samplers(config)
    name = run_name(config)
    if evaluate_only and not run.checkpoint("maml").exists():
        raise FileNotFoundError(
            f"no checkpoint at {run.checkpoint('maml')}: train first"
        )
    if evaluate_only:
        config = {
            **config,
            "n_iterations": checkpoint_iteration(run.checkpoint("maml")),
        }
    result = train_maml(
        config,
        samplers["train"],
        run,
        desc=name,
        time_limit_s=time_limit_s,
        val_tasks=samplers.get("val"),
    )
    print(
        f"{name}: trained to {result.iterations:,} of {config['n_iterations']:,} "
        f"iterations, {result.wall_time_s:.0f} s in all",
        flush=True,
    )
    selection = result.selection or {}
    if not reevaluate and (note := already_evaluated(run, config, result)):
        print(note, flush=True)
        return None
    t0 = time.perf_counter()
    evaluation = evaluate_maml(result.params, samplers["test"], config)
    facts = {}
    if selection:
        facts = {
            "selected_iteration": selection["best_iteration"],
            "selection": selection,
        }
    save_results(run, config, result, evaluation, time.perf_counter() - t0, **facts)
    return read_json(run.file("metrics.json"))
