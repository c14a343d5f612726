"""Experiments: a config in, trained parameters, evaluations and reproduction rows
out. One module per domain (sinusoid, fewshot, metarl), each with the same entry point
``train_and_evaluate(config, run, ...)`` that the command line (``python -m mamllib
train``) and the chapters call; a domain's other parts sit beside it under its name
(``fewshot_evaluation``, ``fewshot_results``). They share the training loop
(:mod:`mamllib.train`), the evaluation (:mod:`mamllib.evaluate`) and the writer
(:mod:`mamllib.report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def domain(experiment: str) -> str:
    """The module that runs ``experiment``: sinusoid, fewshot or metarl."""
    if experiment == "sinusoid":
        return "sinusoid"
    if experiment.split("-")[0] in ("omniglot", "miniimagenet"):
        return "fewshot"
    return "metarl"


def run_name(config: Mapping[str, Any]) -> str:
    """A run's folder under ``results/`` (before preset and seed): the experiment,
    with ``-first-order`` for first-order MAML (a run of its own). The command line
    and the chapters name runs through it, so a chapter resumes what ``python -m
    mamllib train`` started, and back."""
    return config["experiment"] + ("-first-order" if config.get("first_order") else "")
