"""Few-shot image classification with MAML (paper §5.2): the Omniglot experiments.

Glue on the top floor, like :mod:`mamllib.sinusoid`: a config from
``presets.make_config("omniglot-5way-1shot", ...)`` becomes a trained conv-4 with
checkpoints in a run folder, scored on fixed test tasks (accuracy mean and 95% CI).
The chapter on Omniglot walks through it; papermill runs it at scale.
"""

from __future__ import annotations

from typing import Any

import torch

from mamllib.evaluate import EVAL_SEED, adaptation_curve, summarize_curve
from mamllib.maml import accuracy, cross_entropy_loss
from mamllib.models import Conv4, Params, init_params
from mamllib.runs import RunFolder
from mamllib.tasks import make_generator
from mamllib.train import FitResult, fit, meta_objective

# Settings that do not change what training computes (see sinusoid._NOT_TRAINING).
_NOT_TRAINING = {
    "preset",
    "n_iterations",
    "checkpoint_every",
    "n_eval_tasks",
    "n_eval_steps",
    "n_test_inner_steps",
    "device",
    "path",
}


def model_for(config: dict[str, Any]) -> Conv4:
    """The conv-4 skeleton for Omniglot (28x28 grey, stride-2 convolutions)."""
    return Conv4(
        config["n_way"],
        in_channels=1,
        n_filters=config["n_filters"],
        image_size=28,
        max_pool=False,
    )


def train_maml(
    config: dict[str, Any],
    tasks,
    run: RunFolder | None = None,
    desc: str = "maml",
    time_limit_s: float | None = None,
) -> FitResult:
    """Meta-train the conv-4 with MAML on episodes from ``tasks`` (the train split).

    Resumes from ``run``'s ``checkpoint-maml.pt`` if it exists; ``time_limit_s`` stops
    (with a checkpoint) after that many seconds, to continue in a later call.
    """
    model = model_for(config)
    device = torch.device(config["device"])
    params = init_params(model, make_generator(config["seed"], "init"), device=device)
    objective = meta_objective(
        model,
        cross_entropy_loss,
        config["inner_lr"],
        config["n_inner_steps"],
        config["first_order"],
        config["path"],
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
    return fit(
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
    )


def evaluate_maml(
    params: Params, tasks, config: dict[str, Any], chunk_size: int = 50
) -> dict[str, Any]:
    """Accuracy on fixed test tasks after 0..``n_eval_steps`` inner steps.

    The test tasks come from a fixed evaluation seed, so every run and method meets
    the same ones. Batch norm uses the statistics of the batch it sees (the support
    set while adapting, the query set when scoring), as in cbfinn/maml.

    Returns:
        ``{"curve": [n_tasks, steps+1] tensor of accuracies, "steps": summaries,
        "at_test_steps": mean/ci95 after n_test_inner_steps}``, accuracies in [0, 1].
    """
    model, device = model_for(config), torch.device(config["device"])
    n_steps = max(config["n_eval_steps"], config["n_test_inner_steps"])
    generator = torch.Generator().manual_seed(EVAL_SEED)
    curves = []
    for start in range(0, config["n_eval_tasks"], chunk_size):
        n = min(chunk_size, config["n_eval_tasks"] - start)
        batch = tasks.sample(
            n, config["n_way"], config["k_shot"], config["n_query"], generator=generator
        ).to(device)
        curves.append(
            adaptation_curve(
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
