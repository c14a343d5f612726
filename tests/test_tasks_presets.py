"""Task sampling, presets and validation of bad input."""

import math

import pytest
import torch

from mamllib.presets import PRESETS, make_config, resolve_preset, validate
from mamllib.tasks import SinusoidTasks, make_generator


def test_sinusoid_tasks_follow_the_paper_distribution():
    tasks = SinusoidTasks().sample(2000, 10, 7, generator=make_generator(0))
    assert tasks.x_support.shape == (2000, 10, 1) and tasks.x_query.shape == (
        2000,
        7,
        1,
    )
    assert 0.1 <= tasks.amplitude.min() and tasks.amplitude.max() <= 5.0
    assert 0.0 <= tasks.phase.min() and tasks.phase.max() <= math.pi
    assert -5 <= tasks.x_support.min() and tasks.x_query.max() <= 5
    assert tasks.amplitude.mean() == pytest.approx(2.55, abs=0.1)  # mean of U[0.1, 5]
    expected = tasks.amplitude[:, None, None] * torch.sin(
        tasks.x_query - tasks.phase[:, None, None]
    )
    torch.testing.assert_close(tasks.y_query, expected)


def test_task_sampling_is_reproducible_per_seed_and_streams_are_separate():
    dist = SinusoidTasks()
    a = dist.sample(5, 10, generator=make_generator(3))
    b = dist.sample(5, 10, generator=make_generator(3))
    c = dist.sample(5, 10, generator=make_generator(4))
    torch.testing.assert_close(a.x_support, b.x_support)
    torch.testing.assert_close(a.amplitude, b.amplitude)
    assert not torch.allclose(a.amplitude, c.amplitude)
    init = dist.sample(5, 10, generator=make_generator(3, "init"))
    assert not torch.allclose(a.amplitude, init.amplitude)


def test_support_range_restricts_only_the_support_points():
    tasks = SinusoidTasks().sample(
        50, 5, 20, generator=make_generator(0), support_range=(-5.0, 0.0)
    )
    assert tasks.x_support.max() <= 0.0
    assert tasks.x_query.max() > 0.0


def test_environment_variable_beats_the_cells_preset(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    assert resolve_preset("paper") == "paper"
    monkeypatch.setenv("MAMLLIB_PRESET", "ci")
    assert resolve_preset("paper") == "ci"
    assert make_config("sinusoid", "paper")["preset"] == "ci"


@pytest.mark.parametrize("experiment", sorted(PRESETS))
def test_presets_grow_from_ci_to_book_to_paper(monkeypatch, experiment):
    """The paper values themselves: tests/test_paper_presets.py."""
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    ci, book, paper = (make_config(experiment, p) for p in ("ci", "book", "paper"))
    assert ci["n_iterations"] < book["n_iterations"] < paper["n_iterations"]


def test_overrides_apply_and_none_means_use_the_preset(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    c = make_config("sinusoid", "book", inner_lr=0.02, n_iterations=None)
    assert c["inner_lr"] == 0.02
    assert c["n_iterations"] == make_config("sinusoid", "book")["n_iterations"]


@pytest.mark.parametrize(
    "key,value",
    [
        ("k_shot", 0),
        ("k_shot", 2.5),
        ("inner_lr", 0.0),
        ("inner_lr", -0.01),
        ("outer_lr", float("nan")),
        ("meta_batch_size", 0),
        ("n_inner_steps", 0),
        ("first_order", "yes"),
        ("strategy", "fast"),
        ("seed", -1),
        ("hidden_sizes", []),
    ],
)
def test_bad_values_are_refused_naming_parameter_value_and_range(
    monkeypatch, key, value
):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    with pytest.raises(ValueError) as err:
        make_config("sinusoid", "ci", **{key: value})
    message = str(err.value)
    assert key in message and repr(value) in message and "must be" in message


def test_unknown_preset_parameter_and_experiment_are_refused(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    with pytest.raises(ValueError, match="'huge' is not a preset; choose one of ci"):
        make_config("sinusoid", "huge")
    monkeypatch.setenv("MAMLLIB_PRESET", "bogus")
    with pytest.raises(ValueError, match="MAMLLIB_PRESET"):
        resolve_preset("book")
    monkeypatch.delenv("MAMLLIB_PRESET")
    with pytest.raises(ValueError, match="'learning_rate' is not a parameter"):
        make_config("sinusoid", "ci", learning_rate=0.1)
    with pytest.raises(ValueError, match="experiment"):
        make_config("omniglot-2", "ci")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    with pytest.raises(ValueError, match="device='cuda'.*when a CUDA GPU is available"):
        make_config("sinusoid", "ci", device="cuda")


def test_validate_reports_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        validate({"k_shot": 0, "meta_batch_size": -3})
    assert "k_shot=0" in str(err.value) and "meta_batch_size=-3" in str(err.value)
