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
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from mamllib import paper, report
from mamllib.evaluate import EVAL_SEED, VAL_SEED, adaptation_curve, summarize_curve
from mamllib.experiments import run_name
from mamllib.maml import accuracy, cross_entropy_loss, inner_update
from mamllib.models import Conv4, Params, detach_params, forward, init_params
from mamllib.presets import PRESETS
from mamllib.runs import RunFolder, device_description, read_json, save_torch
from mamllib.tasks import make_generator
from mamllib.train import FitResult, checkpoint_iteration, fit, meta_objective

DATASETS = {"omniglot": "Omniglot", "miniimagenet": "MiniImageNet"}


def setting_name(experiment: str, first_order: bool = False) -> str:
    """The row of Table 1 (:data:`mamllib.paper.TABLE1`) a run reproduces: the
    experiment, with ``-first-order`` for the first-order approximation. Unknown
    names are refused."""
    name = experiment + ("-first-order" if first_order else "")
    if experiment not in paper.TABLE1:
        known = sorted(k for k in paper.TABLE1 if not k.endswith("-first-order"))
        raise ValueError(f"unknown few-shot experiment {experiment!r}; known: {known}")
    if name not in paper.TABLE1:
        rows = sorted(k for k in paper.TABLE1 if k.endswith("-first-order"))
        raise ValueError(f"Table 1 has no first-order row for {experiment!r}: {rows}")
    return name


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


def model_for(config: dict[str, Any]) -> Conv4:
    """The conv-4 skeleton a config asks for.

    Omniglot (the default): 28x28 grey, stride-2 convolutions. MiniImageNet's presets
    set ``max_pool=True, in_channels=3, image_size=84`` (and 32 filters).
    """
    return Conv4(
        config["n_way"],
        in_channels=config.get("in_channels", 1),
        n_filters=config["n_filters"],
        image_size=config.get("image_size", 28),
        max_pool=config.get("max_pool", False),
    )


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


def evaluate_maml(
    params: Params,
    tasks,
    config: dict[str, Any],
    chunk_size: int | None = None,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Accuracy on fixed test tasks after 0..``n_eval_steps`` inner steps.

    The test tasks come from a fixed evaluation seed, so every run and method meets
    the same ones. Batch norm uses the statistics of the batch it sees (the support
    set while adapting, the query set when scoring), as in cbfinn/maml. The query set
    has ``n_eval_query`` images per class when the config has one (MiniImageNet: K,
    as cbfinn/maml's test), else ``n_query``.

    Args:
        chunk_size: tasks per vmap call (memory); default 50 for 28x28 images, 10
            for larger ones.
        seed: the task stream; :data:`~mamllib.evaluate.VAL_SEED` for validation.

    Returns:
        ``{"curve": [n_tasks, steps+1] tensor of accuracies, "steps": summaries,
        "at_test_steps": mean/ci95 after n_test_inner_steps}``, accuracies in [0, 1].
    """
    model, device = model_for(config), torch.device(config["device"])
    n_steps = max(config["n_eval_steps"], config["n_test_inner_steps"])
    generator = torch.Generator().manual_seed(seed)
    n_query = config.get("n_eval_query") or config["n_query"]
    if chunk_size is None:
        chunk_size = 50 if config.get("image_size", 28) <= 28 else 10
    # 84x84 images: one task at a time is about 2x faster than vmap on a CPU (vmap
    # turns each convolution into a grouped one); same numbers (tests).
    large = config.get("image_size", 28) > 28
    curve_fn = adaptation_curve_loop if large else adaptation_curve
    curves = []
    for start in range(0, config["n_eval_tasks"], chunk_size):
        n = min(chunk_size, config["n_eval_tasks"] - start)
        batch = tasks.sample(
            n, config["n_way"], config["k_shot"], n_query, generator=generator
        ).to(device)
        curves.append(
            curve_fn(
                model,
                params,
                batch,
                cross_entropy_loss,
                config["inner_lr"],
                n_steps,
                metric_fn=accuracy,
            ).cpu()
        )
    curve = torch.cat(curves)
    steps = summarize_curve(curve)
    return {
        "curve": curve,
        "steps": steps,
        "at_test_steps": steps[config["n_test_inner_steps"]],
    }


def adaptation_curve_loop(
    model, params: Params, tasks, loss_fn, inner_lr: float, n_steps: int, metric_fn
) -> torch.Tensor:
    """:func:`~mamllib.evaluate.adaptation_curve`, one task at a time with autograd.

    Faster than vmap on a CPU for 84x84 images (:func:`evaluate_maml` uses it for
    them); used in notebook 08 to check that adaptation fits the support set.
    """
    curves = []
    for i in range(len(tasks)):
        xs, ys = tasks.x_support[i], tasks.y_support[i]
        xq, yq = tasks.x_query[i], tasks.y_query[i]
        adapted = {k: v.detach().requires_grad_() for k, v in params.items()}
        values = []
        for step in range(n_steps + 1):
            with torch.no_grad():
                values.append(metric_fn(forward(model, adapted, xq), yq))
            if step == n_steps:
                break
            # Detached after each step: evaluation needs no graph across steps.
            adapted = inner_update(model, adapted, xs, ys, loss_fn, inner_lr, True)
            adapted = detach_params(adapted)
        curves.append(torch.stack(values))
    return torch.stack(curves)


def already_evaluated(
    run: RunFolder, config: dict[str, Any], result: FitResult
) -> str | None:
    """Why this call need not evaluate: the run's ``metrics.json`` scores its weights.

    Returns a one-line note, or None when the call must evaluate. A note only when
    this call *resumed* and trained nothing (``result.resumed_from ==
    result.iterations``), and ``metrics.json`` holds those iterations, the config's
    number of test tasks and test inner steps, and (with selection on validation
    tasks) the same selected iteration. The parameters scored then cannot differ from
    the ones this call ends with, so evaluating again would repeat the same numbers:
    ``scripts/train_*.py`` skip it unless asked (``--reevaluate``).

    Two cases that look finished but are not: a run retrained from scratch after its
    checkpoint was deleted reaches the same iterations with new weights, but did not
    resume at them; and a run stopped by a time limit between validation checkpoints,
    then called with ``--iterations`` set to where it stopped, is validated at that
    iteration now and may select it. Both are evaluated.
    """
    path = run.file("metrics.json")
    if result.resumed_from != result.iterations or not path.exists():
        return None
    old = read_json(path)
    at = old.get("test_accuracy", {})
    same = (old.get("iterations"), at.get("n"), at.get("step")) == (
        result.iterations,
        config["n_eval_tasks"],
        config["n_test_inner_steps"],
    )
    selection = result.selection or {}
    if not same or old.get("selected_iteration") != selection.get("best_iteration"):
        return None
    return (
        f"{path} already holds the evaluation at {result.iterations:,} iterations "
        f"({old['status']}); not evaluated again (--reevaluate does)"
    )


def save_results(
    run: RunFolder,
    config: dict[str, Any],
    result: FitResult,
    evaluation: dict[str, Any],
    evaluation_wall_time_s: float | None = None,
    **facts: Any,
) -> str:
    """Write a run's ``metrics.json``, ``history.json``, final weights and its row of
    Table 1 (``reproduction.json``) through :mod:`mamllib.report`.

    The status follows :func:`mamllib.paper.run_status` against the paper preset's
    iterations. ``facts`` go into ``metrics.json`` after the status. Prints a
    one-line summary and returns the status.
    """
    experiment = config["experiment"]
    target = PRESETS[experiment]["paper"]["n_iterations"]
    status = paper.run_status(
        config["preset"], {"maml": result.iterations}, {"maml": target}
    )
    at = evaluation["at_test_steps"]
    # The row of Table 1 this run reproduces, if the paper has one (it has no
    # first-order Omniglot rows).
    setting = experiment + ("-first-order" if config["first_order"] else "")
    value, ci95 = paper.TABLE1.get(setting, (None, None))
    report.write_results(
        run,
        status,
        {
            "experiment": experiment,
            "first_order": config["first_order"],
            **facts,
            "iterations": result.iterations,
            "training_wall_time_s": round(result.wall_time_s, 1),
            "evaluation_wall_time_s": None
            if evaluation_wall_time_s is None
            else round(evaluation_wall_time_s, 1),
            "device": device_description(config["device"]),
            "test_accuracy": at,
            "steps": evaluation["steps"],
        },
        history=result.history,
        params={"maml": result.params},
        rows=[]
        if value is None
        else [
            report.row(
                f"{DATASETS[experiment.split('-')[0]]} {config['n_way']}-way "
                f"{config['k_shot']}-shot",
                ("first-order " if config["first_order"] else "")
                + f"MAML test accuracy (%), {config['n_test_inner_steps']} steps",
                value,
                paper.TABLE1_SOURCE,
                100 * at["mean"],
                100 * at["ci95"],
                status,
                paper_ci95=ci95,
            )
        ],
    )
    print(
        f"{setting}: accuracy after {config['n_test_inner_steps']} steps "
        f"{100 * at['mean']:.2f} +- {100 * at['ci95']:.2f} % over {at['n']} tasks "
        f"({status}) -> {run.path}"
    )
    return status


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
