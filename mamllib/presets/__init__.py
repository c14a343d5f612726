"""Presets (ci / book / paper), ``MAMLLIB_PRESET`` resolution and config validation.

A notebook's ``parameters`` cell names a ``preset``; :func:`resolve_preset` lets the
environment variable ``MAMLLIB_PRESET`` win over it (that is how CI runs every notebook
fast), and :func:`make_config` turns preset + overrides into a plain, validated dict.
Bad values are refused here, before any training, with the parameter, the value and
the allowed range in the message.

The values themselves live one module per domain, each beside its source in the paper
or the original code: :mod:`.sinusoid` (§5.1), :mod:`.fewshot` (Omniglot and
MiniImageNet, §5.2) and :mod:`.metarl` (navigation and locomotion, §5.3).
``tests/test_paper_presets.py`` holds every ``paper`` preset to the paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from mamllib.presets import fewshot, metarl, sinusoid

PRESET_NAMES = ("ci", "book", "paper")
ENV_VAR = "MAMLLIB_PRESET"

# experiment -> preset name -> config values
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    **sinusoid.PRESETS,
    **fewshot.PRESETS,
    **metarl.PRESETS,
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
    "strategy": (
        lambda v: v in ("loop", "vmap", "batched", "threads", "compiled"),
        "'loop', 'vmap', 'batched', 'threads' or 'compiled' (batched and threads: "
        "models with forward_tasks only; compiled: the MLP only)",
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
