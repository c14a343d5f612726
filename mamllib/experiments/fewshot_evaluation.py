"""Scoring few-shot parameters: accuracy on fixed tasks after each inner step.

:func:`evaluate_maml` scores a run on its test tasks, and on validation tasks when
:func:`mamllib.experiments.fewshot.train_maml` selects a checkpoint; both build the
conv-4 a config asks for with :func:`model_for`.
"""

from __future__ import annotations

from typing import Any

import torch

from mamllib.conv4 import Conv4
from mamllib.evaluate import EVAL_SEED, adaptation_curve, summarize_curve
from mamllib.maml import accuracy, cross_entropy_loss, inner_update
from mamllib.models import Params, detach_params, forward


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
