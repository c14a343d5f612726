"""Training loop: learning, exact resume, interruption, NaN guard, run folders."""

import json

import pytest
import torch

from mamllib.evaluate import adaptation_curve, evaluation_tasks, mean_ci
from mamllib.experiments.sinusoid import train_method
from mamllib.maml import adapt, mse_loss, task_loss
from mamllib.models import MLP, init_params
from mamllib.presets import make_config
from mamllib.runs import RunFolder, read_json, repo_root, write_json, write_manifest
from mamllib.tasks import SinusoidTasks, make_generator
from mamllib.train import fit, meta_objective


def tiny_fit(n_iterations, checkpoint=None, objective=None, **kw):
    model = MLP((1, 8, 8, 1))
    params = init_params(model, make_generator(0, "init"))
    objective = objective or meta_objective(model, mse_loss, 0.01, 1)
    dist = SinusoidTasks()
    return fit(
        objective,
        params,
        lambda g: dist.sample(4, 5, generator=g),
        make_generator(0),
        n_iterations,
        1e-3,
        checkpoint=checkpoint,
        checkpoint_every=kw.pop("checkpoint_every", 7),
        log_every=5,
        fingerprint={"test": 1},
        **kw,
    )


def test_maml_meta_training_lowers_the_post_adaptation_loss(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    config = make_config("sinusoid", "ci", n_iterations=600, log_every=100)
    result = train_method("maml", config)
    losses = result.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses


def test_progress_lines_print_one_line_per_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAMLLIB_PROGRESS", "lines")
    tiny_fit(9, checkpoint=tmp_path / "ck.pt", checkpoint_every=3, desc="tiny")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "tiny: iteration 3/9",
        "tiny: iteration 6/9",
        "tiny: iteration 9/9",
    ]
    # a resumed call counts its speed from where it resumed; the loss is a number
    tiny_fit(12, checkpoint=tmp_path / "ck.pt", checkpoint_every=3, desc="tiny")
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("tiny: iteration 12/12, loss ")
    assert float(line.split("loss ")[1].split(",")[0]) > 0
    assert " s/it, about 0 min left" in line


def test_resume_reaches_the_same_numbers_as_an_uninterrupted_run(tmp_path):
    straight = tiny_fit(40)
    first = tiny_fit(17, checkpoint=tmp_path / "ck.pt")  # stops mid log-window
    assert first.iterations == 17
    resumed = tiny_fit(40, checkpoint=tmp_path / "ck.pt")
    assert resumed.resumed_from == 17
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k])
    assert straight.history == resumed.history


def test_ctrl_c_keeps_progress_and_resume_is_exact(tmp_path):
    straight = tiny_fit(30)
    model = MLP((1, 8, 8, 1))
    inner = meta_objective(model, mse_loss, 0.01, 1)
    calls = {"n": 0}

    def interrupted(params, tasks):
        calls["n"] += 1
        if calls["n"] == 13:  # during iteration 13, before its update
            raise KeyboardInterrupt
        return inner(params, tasks)

    with pytest.raises(KeyboardInterrupt):
        tiny_fit(
            30,
            checkpoint=tmp_path / "ck.pt",
            objective=interrupted,
            checkpoint_every=100,
        )
    assert torch.load(tmp_path / "ck.pt", weights_only=False)["iteration"] == 12
    resumed = tiny_fit(30, checkpoint=tmp_path / "ck.pt", checkpoint_every=100)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    model = MLP((1, 8, 8, 1))
    inner = meta_objective(model, mse_loss, 0.01, 1)
    calls = {"n": 0}

    def explodes(params, tasks):
        calls["n"] += 1
        loss = inner(params, tasks)
        return loss * float("nan") if calls["n"] > 10 else loss

    with pytest.raises(FloatingPointError, match="iteration 10.*iteration 7"):
        tiny_fit(30, checkpoint=tmp_path / "ck.pt", objective=explodes)
    state = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert state["iteration"] == 7
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    tiny_fit(7, checkpoint=tmp_path / "ck.pt")
    model = MLP((1, 8, 8, 1))
    params = init_params(model, make_generator(0, "init"))
    with pytest.raises(ValueError, match="different settings"):
        fit(
            meta_objective(model, mse_loss, 0.01, 1),
            params,
            lambda g: SinusoidTasks().sample(4, 5, generator=g),
            make_generator(0),
            10,
            1e-3,
            checkpoint=tmp_path / "ck.pt",
            fingerprint={"test": 2},
        )


def test_adaptation_curve_matches_the_loop_and_starts_unadapted():
    model = MLP()
    params = init_params(model, make_generator(1, "init"))
    tasks = evaluation_tasks(5, n_tasks=4, n_query=30)
    curve = adaptation_curve(model, params, tasks, mse_loss, 0.01, 3)
    assert curve.shape == (4, 4)
    for i in range(4):
        xs, ys, xq, yq = (
            tasks.x_support[i],
            tasks.y_support[i],
            tasks.x_query[i],
            tasks.y_query[i],
        )
        assert curve[i, 0].item() == pytest.approx(
            task_loss(model, params, xq, yq, mse_loss).item(), rel=1e-6
        )
        adapted = adapt(model, params, xs, ys, mse_loss, 0.01, 3)
        assert curve[i, 3].item() == pytest.approx(
            task_loss(model, adapted, xq, yq, mse_loss).item(), rel=1e-5
        )


def test_evaluation_tasks_are_fixed_and_mean_ci_is_right():
    a, b = evaluation_tasks(5, 10), evaluation_tasks(5, 10)
    torch.testing.assert_close(a.x_query, b.x_query)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    stats = mean_ci(values)
    assert stats["mean"] == 2.5
    assert stats["ci95"] == pytest.approx(1.96 * 1.2909944 / 2, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci(torch.tensor([1.0]))


def test_run_folder_lives_under_the_repo_root_and_writes_atomically(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MAMLLIB_RESULTS", raising=False)
    assert (repo_root() / "pyproject.toml").exists()
    run = RunFolder("99-test", "ci", 3, root=tmp_path)
    assert run.path == tmp_path / "results" / "99-test" / "ci" / "seed-3"
    write_json(run.file("metrics.json"), {"a": 1})
    assert read_json(run.file("metrics.json")) == {"a": 1}
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    manifest = write_manifest(run.path, command="x")
    files = json.loads(manifest.read_text())["files"]
    assert "metrics.json" in files and len(files["metrics.json"]) == 64


def test_time_limit_stops_with_a_checkpoint_and_a_rerun_continues(tmp_path):
    straight = tiny_fit(30)
    partial = tiny_fit(30, checkpoint=tmp_path / "ck.pt", time_limit_s=0.0)
    assert partial.iterations == 1  # stops after the first iteration past the limit
    assert torch.load(tmp_path / "ck.pt", weights_only=False)["iteration"] == 1
    resumed = tiny_fit(30, checkpoint=tmp_path / "ck.pt")
    assert resumed.iterations == 30
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k])


@pytest.mark.parametrize("how", ["SIGINT, ignored at start", "SIGTERM"])
def test_a_training_script_stopped_by_a_signal_saves_and_says_where(tmp_path, how):
    """``python -m mamllib train``, stopped after its first checkpoint line by ``kill
    -INT`` in a job whose shell ignored SIGINT (``nohup ... &`` from a script) or by a
    plain ``kill``: it saves the progress and ends with one line naming the run
    folder, no traceback."""
    import os
    import signal
    import subprocess
    import sys

    env = {
        **os.environ,
        "MAMLLIB_RESULTS": str(tmp_path),
        "MAMLLIB_PROGRESS": "lines",
        "OMP_NUM_THREADS": "1",
    }
    checkpoint = tmp_path / "sinusoid/ci/seed-0/checkpoint-maml.pt"
    sig = signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM
    proc = subprocess.Popen(
        [sys.executable, "-m", "mamllib", "train", "sinusoid", "--preset", "ci"]
        + ["--methods", "maml"],
        cwd=repo_root(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        # the first checkpoint's line (500 of 1500 iterations), then the signal
        assert proc.stdout.readline().startswith("maml: iteration 500/1500")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    assert f"checkpointed in {checkpoint.parent}" in err, err
    assert 500 <= torch.load(checkpoint, weights_only=False)["iteration"] < 1500
