"""The comparison engine (mamllib.experiments.comparison): test-time adaptation equal
to the library's loops in float64, every algorithm's outer step finite on both
domains, resumable records, divergence recorded, bad requests refused early."""

import math

import pytest
import torch

from mamllib.algorithms.anil import anil_meta_loss, head_keys_of
from mamllib.algorithms.imaml import curvature_step_solver, proximal_adapt
from mamllib.algorithms.metasgd import lslr_lrs, meta_sgd_lrs, metasgd_adapt
from mamllib.algorithms.protonet import protonet_logits
from mamllib.evaluate import adaptation_curve
from mamllib.experiments import comparison as c
from mamllib.maml import cross_entropy_loss, mse_loss
from mamllib.models import forward
from mamllib.outer_steps import AdamStep, OuterStep
from mamllib.tasks import SinusoidTasks, make_generator


def _sinusoid(algorithm="maml", dtype=torch.float64):
    config = c.setting_config("sinusoid-5shot", "ci")
    params = c.initial_params(config, algorithm, seed=0)
    params = {k: v.detach().to(dtype) for k, v in params.items()}
    tasks = (
        SinusoidTasks().sample(3, 5, 7, generator=make_generator(0)).to("cpu", dtype)
    )
    return config, params, tasks


def test_bad_requests_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'"):
        c.check_request(["sinusoid-5shot"], ["mamll"], "book")
    with pytest.raises(ValueError, match="unknown setting"):
        c.run_comparison("ci", settings=["omniglot-7way"], measure=False)
    assert not c.applicable("sinusoid-10shot", "protonet")
    assert c.applicable("omniglot-20way-1shot", "protomaml")


def test_maml_family_scores_equal_the_adaptation_curve():
    config, params, tasks = _sinusoid()
    model = c.model_of(config)
    curve = adaptation_curve(
        model, params, tasks, mse_loss, config["inner_lr"], config["n_test_steps"]
    )
    for algorithm in ("maml", "fomaml", "reptile"):
        got = c.score(config, algorithm, params, tasks)["per_task"]
        torch.testing.assert_close(got, curve[:, -1], rtol=1e-10, atol=1e-12)


def test_learned_rate_adaptation_equals_the_metasgd_loop():
    config, params, tasks = _sinusoid()
    model = c.model_of(config)
    for lrs, steps in ((meta_sgd_lrs(params, 0.01), 1), (lslr_lrs(params, 0.02, 5), 5)):
        # distinct rates per step and element, so a wrong index would show
        lrs = {
            k: v.detach() * (1 + torch.rand(v.shape, dtype=v.dtype))
            for k, v in lrs.items()
        }
        full = {k: v.detach().requires_grad_() for k, v in {**params, **lrs}.items()}
        algorithm = "metasgd" if steps == 1 else "mamlpp"
        got = c.adapted_predictions(config, algorithm, full, tasks)
        for i in range(len(tasks)):
            adapted = metasgd_adapt(
                model,
                full,
                tasks.x_support[i],
                tasks.y_support[i],
                mse_loss,
                steps,
                first_order=True,
            )[-1]
            want = forward(model, adapted, tasks.x_query[i])
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("setting", ["sinusoid-5shot", "omniglot-5way-1shot"])
def test_imaml_adaptation_equals_the_proximal_loop(setting):
    config = c.setting_config(setting, "ci")
    own = c.ALGORITHM_SETTINGS["imaml"][config["domain"]]
    if config["domain"] == "sinusoid":
        _, params, tasks = _sinusoid("imaml")
        loss_fn = mse_loss
    else:
        config = {**config, "n_filters": 4}
        params = c.initial_params(config, "imaml", 0)
        params = {k: v.detach().double() for k, v in params.items()}
        tasks = c._random_batch({**config, "meta_batch_size": 2}, "imaml", None).to(
            "cpu", torch.float64
        )
        loss_fn = cross_entropy_loss
    model = c.model_of(config)
    solver = curvature_step_solver(own["n_inner_steps"])
    got = c.adapted_predictions(config, "imaml", params, tasks)
    for i in range(len(tasks)):
        phi = proximal_adapt(
            model,
            params,
            tasks.x_support[i],
            tasks.y_support[i],
            loss_fn,
            config["inner_lr"],
            own["n_inner_steps"],
            own["lam"],
            solver=solver if own["curvature_solver"] else None,
        )
        want = forward(model, phi, tasks.x_query[i])
        torch.testing.assert_close(got[i], want, rtol=1e-8, atol=1e-10)


def test_vmapped_anil_objective_equals_the_loop_value_and_gradient():
    config, params, tasks = _sinusoid("anil")
    model = c.model_of(config)
    params = {k: v.requires_grad_() for k, v in params.items()}
    objective = c.training_step(config, "anil")
    mine = objective(params, tasks)
    loop = anil_meta_loss(
        model, params, tasks, mse_loss, config["inner_lr"], 1, head_keys_of(model)
    )
    torch.testing.assert_close(mine, loop, rtol=1e-12, atol=1e-12)
    g_mine = torch.autograd.grad(mine, list(params.values()))
    g_loop = torch.autograd.grad(loop, list(params.values()))
    for a, b in zip(g_mine, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_protonet_predictions_are_its_logits():
    config = {**c.setting_config("omniglot-5way-1shot", "ci"), "n_filters": 4}
    params = c.initial_params(config, "protonet", 0)
    tasks = c._random_batch({**config, "meta_batch_size": 2}, "protonet", None)
    got = c.adapted_predictions(config, "protonet", params, tasks)
    model = c.model_of(config)
    for i in range(2):
        want = protonet_logits(
            model, params, tasks.x_support[i], tasks.y_support[i], tasks.x_query[i], 5
        )
        torch.testing.assert_close(got[i], want)


@pytest.mark.parametrize("setting", c.SETTINGS)
def test_every_outer_step_is_finite_and_moves_the_parameters(setting):
    config = c.setting_config(setting, "ci")
    if config["domain"] == "omniglot":
        config["n_filters"] = 8  # the step's code path, at a tenth of the cost
    for algorithm in c.ALGORITHMS:
        if not c.applicable(setting, algorithm):
            continue
        n_classes = 40 if algorithm == "pretrained" else None
        if config["domain"] == "sinusoid":
            n_classes = None
        params = {
            k: v.detach().requires_grad_()
            for k, v in c.initial_params(config, algorithm, 0, n_classes).items()
        }
        before = {k: v.detach().clone() for k, v in params.items()}
        step = c.training_step(config, algorithm, n_classes)
        if not isinstance(step, OuterStep):
            step = AdamStep(step, params, config["outer_lr"])
        batch = c._random_batch(config, algorithm, n_classes)
        _, stats = step(params, batch, 1.0)
        assert math.isfinite(stats["loss"]), (setting, algorithm)
        moved = sum((params[k] - before[k]).abs().sum().item() for k in params)
        assert moved > 0, (setting, algorithm)


def test_records_resume_summarize_and_become_an_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CI", "true")
    record = c.run_one("sinusoid-5shot", "maml", 0, "ci", {})
    assert record["iterations"] == c.BUDGETS["ci"]["sinusoid"]["n_iterations"]
    assert record["metric"] == "mse" and 0 < record["mean"] < 20
    assert record["n_test_tasks"] == 100 and record["diverged"] is None
    run = c.RunFolder("comparison", "ci", 0, create=False)
    path = c.record_path(run, "sinusoid-5shot", "maml")
    stamp = path.stat().st_mtime_ns
    assert c.run_one("sinusoid-5shot", "maml", 0, "ci", {}) == record
    assert path.stat().st_mtime_ns == stamp  # read back, not trained again
    c.run_one("sinusoid-5shot", "pretrained", 0, "ci", {})
    rows = c.summarize("ci")["rows"]["sinusoid-5shot"]
    assert rows["maml"]["mean"] == record["mean"] and rows["maml"]["complete"]
    assert (
        rows["pretrained"]["per_seed"][0]["finetune_lr"]
        in (c.ALGORITHM_SETTINGS["pretrained"]["sinusoid"]["finetune_lrs"])
    )
    (tmp_path / "artifacts").mkdir()
    target = c.write_artifact(
        "ci", "comparison-ci", "python -m mamllib compare", root=tmp_path
    )
    manifest = c.read_json(target / "manifest.json")
    assert manifest["status"] == "partial"  # two cells of many
    assert set(manifest["files"]) == {"metrics.json", "config.json"}


def test_a_diverging_training_is_recorded_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    config = {**c.setting_config("sinusoid-5shot", "ci"), "outer_lr": 10.0}
    config["n_iterations"] = 40
    run = c.RunFolder("comparison", "ci", 0)
    out = c.train_one(config, "maml", 0, {}, run)
    assert out["diverged"] is not None and out["params"] is None  # not scored
    assert str(tmp_path) not in out["diverged"]  # records are committed: no paths
    assert out["iterations"] < 40


def test_cost_is_measured_in_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLLIB_RESULTS", str(tmp_path))
    cost = c.cost_of("sinusoid-5shot", "maml", "ci")
    assert cost["ms_per_iteration"] > 0 and cost["peak_mib"] >= 0
    assert c.cost_path("ci", "sinusoid-5shot", "maml").exists()
