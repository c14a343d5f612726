"""torch.distributed under torchrun: two gloo ranks compute what one process does."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

HERE = Path(__file__).parent


def torchrun(*args, env=None, wait=True, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(HERE / "distributed_worker.py"), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=environment, start_new_session=True)
    done = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("problem", ["sinusoid", "conv4"])
def test_two_ranks_give_the_meta_gradient_of_one_process(tmp_path, problem):
    """Second order, two inner steps, float64; 6 or 5 tasks split 3+3 or 3+2."""
    torchrun("gradient", problem, str(tmp_path / "g.pt"))
    model, params, tasks, loss_fn, path = worker.PROBLEMS[problem]()
    params = {k: v.requires_grad_() for k, v in params.items()}
    worker.meta_loss_of(path)(model, params, tasks, loss_fn, 0.1, 2).backward()
    two_ranks = torch.load(tmp_path / "g.pt")
    # The batched conv-4 leaves the conv biases out (batch norm cancels them): no
    # gradient reaches them, which the all-reduce sends as zeros.
    one = {
        k: torch.zeros_like(p) if p.grad is None else p.grad for k, p in params.items()
    }
    for k in params:
        torch.testing.assert_close(two_ranks[k], one[k], rtol=0, atol=1e-12)
    assert max(g.abs().max() for g in one.values()) > 1e-3  # not all zero


def test_maml_trpo_on_two_ranks_takes_the_steps_of_one_process(tmp_path):
    """Every iteration's parameters and statistics, float64, 5 tasks split 3+2: the
    surrogate, its gradient, every KL Hessian-vector product of conjugate gradient
    and the line search are reduced over the ranks, and each rank samples its tasks'
    trajectories as one process does."""
    torchrun("trpo", str(tmp_path / "trpo.pt"))
    two_ranks = torch.load(tmp_path / "trpo.pt")
    for run in worker.TRPO_RUNS:
        steps, history = worker.trpo(*run)
        assert len(two_ranks[run][0]) == len(steps) == run[2]
        for one, two in zip(steps, two_ranks[run][0]):
            for k in one:
                torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-10)
        assert two_ranks[run][1].keys() == history.keys()
        for k, values in history.items():
            torch.testing.assert_close(
                torch.tensor(two_ranks[run][1][k]),
                torch.tensor(values),
                rtol=0,
                atol=1e-10,
            )
        assert all(f > 0 for f in history["step_fraction"])  # steps were taken


def one_process(n_iterations, checkpoint):
    worker.train(n_iterations, str(checkpoint), str(checkpoint) + ".out")
    return torch.load(str(checkpoint) + ".out")


def test_twenty_iterations_on_two_ranks_equal_one_process(tmp_path):
    torchrun("train", "20", str(tmp_path / "ck2.pt"), str(tmp_path / "two.pt"))
    alone = one_process(20, tmp_path / "ck1.pt")
    two = torch.load(tmp_path / "two.pt")
    for k in alone:
        torch.testing.assert_close(two[k], alone[k], rtol=0, atol=1e-10)
    assert torch.load(tmp_path / "ck2.pt", weights_only=False)["iteration"] == 20


def test_a_killed_two_rank_run_resumes_to_the_same_parameters(tmp_path):
    checkpoint = tmp_path / "ck.pt"
    run = torchrun(
        "train",
        "40",
        str(checkpoint),
        str(tmp_path / "out.pt"),
        env={"MAMLLIB_TEST_SLOW": "0.1"},
        wait=False,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if checkpoint.exists():
                state = torch.load(checkpoint, weights_only=False)
                if state["iteration"] >= 10:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the two-rank run wrote no checkpoint past iteration 10")
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # torchrun and both ranks, no clean-up
        run.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["iteration"]
    assert 10 <= killed_at < 40
    torchrun("train", "40", str(checkpoint), str(tmp_path / "out.pt"))
    alone = one_process(40, tmp_path / "alone.pt")
    two = torch.load(tmp_path / "out.pt")
    for k in alone:
        torch.testing.assert_close(two[k], alone[k], rtol=0, atol=1e-10)


def test_ranks_stop_together_when_one_reaches_the_time_limit(tmp_path):
    """Rank 0's time limit is 0 s and rank 1's a day: both stop after iteration 1."""
    out = str(tmp_path / "t.pt")
    torchrun("time-limit", out, timeout=120)
    assert [torch.load(f"{out}.rank{r}") for r in (0, 1)] == [1, 1]
