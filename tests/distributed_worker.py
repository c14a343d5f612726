"""Run under torchrun by tests/test_distributed.py: one rank of a small meta-training.

    torchrun --nproc_per_node 2 tests/distributed_worker.py gradient sinusoid OUT
    torchrun --nproc_per_node 2 tests/distributed_worker.py train N CHECKPOINT OUT
    torchrun --nproc_per_node 2 tests/distributed_worker.py trpo OUT

``gradient``: this rank's share of a float64 meta-batch, its meta-gradient all-reduced;
rank 0 saves the result. ``train``: N iterations of fit on the sinusoid in float64,
checkpointed; rank 0 saves the parameters. ``MAMLLIB_TEST_SLOW`` adds a pause per
iteration, so that a test can kill the run between checkpoints. ``trpo``: the
:data:`TRPO_RUNS` on a tiny float64 navigation problem; rank 0 saves the parameters
after every iteration and the histories.
"""

import os
import sys
import time

import torch

from mamllib import distributed
from mamllib.experiments.metarl import GoalBatch, TRPOStep, models, sample_task_goals
from mamllib.maml import cross_entropy_loss, meta_loss_of, mse_loss
from mamllib.models import MLP, Conv4, init_params
from mamllib.presets import make_config
from mamllib.rl.policy import init_policy_params
from mamllib.tasks import SinusoidTasks, TaskBatch, make_generator
from mamllib.train import fit, meta_objective


def sinusoid_problem():
    model = MLP((1, 8, 8, 1))
    params = init_params(model, make_generator(0, "init"), dtype=torch.float64)
    tasks = SinusoidTasks().sample(6, 5, generator=make_generator(0))
    return model, params, tasks.to("cpu", torch.float64), mse_loss, "vmap"


def conv4_problem():
    model = Conv4(3, n_filters=4)
    params = init_params(model, torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((5, 3, 1, 28, 28), generator=g, dtype=torch.float64)
    xq = torch.rand((5, 3, 1, 28, 28), generator=g, dtype=torch.float64)
    labels = torch.arange(3).expand(5, -1).contiguous()
    zeros = torch.zeros(5)
    tasks = TaskBatch(x, labels, xq, labels.clone(), zeros, zeros)
    return model, params, tasks, cross_entropy_loss, "batched"


PROBLEMS = {"sinusoid": sinusoid_problem, "conv4": conv4_problem}


def gradient(problem: str, out: str) -> None:
    model, params, tasks, loss_fn, path = PROBLEMS[problem]()
    params = {k: v.requires_grad_() for k, v in params.items()}
    share, fraction = distributed.shard(tasks)
    loss = meta_loss_of(path)(model, params, share, loss_fn, 0.1, 2)
    loss.backward()
    distributed.all_reduce_gradients(params, fraction)
    if distributed.is_main():
        torch.save({k: v.grad for k, v in params.items()}, out)


def train(
    n_iterations: int, checkpoint: str, out: str, time_limit_s: float | None = None
) -> None:
    model = MLP((1, 8, 8, 1))
    params = init_params(model, make_generator(0, "init"), dtype=torch.float64)
    pause = float(os.environ.get("MAMLLIB_TEST_SLOW", "0"))

    def sample(g):
        time.sleep(pause)
        return SinusoidTasks().sample(4, 5, generator=g).to("cpu", torch.float64)

    result = fit(
        meta_objective(model, mse_loss, 0.01, 1),
        params,
        sample,
        make_generator(0),
        n_iterations,
        1e-2,
        checkpoint=checkpoint,
        checkpoint_every=5,
        log_every=5,
        fingerprint={"test": "distributed"},
        time_limit_s=time_limit_s,
    )
    if distributed.is_main():
        torch.save(result.params, out)
    return result


def time_limit(out: str) -> None:
    """Rank 0's clock passes the time limit at once, rank 1's never: both stop at the
    same iteration, instead of rank 1 waiting for rank 0 in the next all-reduce."""
    limit = 0.0 if distributed.is_main() else 1e9
    result = train(20, out + ".ck", out, time_limit_s=limit)
    torch.save(result.iterations, f"{out}.rank{distributed.rank()}")


# (method, strategy, iterations): MAML through the fast and the readable path, and a
# baseline without inner step. 5 tasks: the ranks hold 3 and 2.
TRPO_RUNS = [("maml", "vmap", 2), ("maml", "loop", 1), ("pretrained", "vmap", 1)]


def trpo(method: str, strategy: str, n_iterations: int):
    """``n_iterations`` of MAML-TRPO (or a baseline) on navigation in float64 with a
    small policy: the parameters after each iteration, and the history."""
    config = {
        **make_config("navigation", "ci"),
        "hidden_sizes": [8, 8],
        "meta_batch_size": 5,
        "n_traj": 3,
        "horizon": 8,
        "strategy": strategy,
        # A well-conditioned CG system: the ranks sum in another order than one
        # process, and at the presets' 1e-5 this tiny problem's near-singular KL
        # Hessian amplifies that rounding to ~1e-9 (as much as between the loop and
        # the vmap paths of one process); at 0.1 the steps agree to ~1e-12.
        "cg_damping": 0.1,
    }
    model = models(config)[method]
    params = init_policy_params(model, make_generator(0, "init"), dtype=torch.float64)
    generator = make_generator(0, "tasks")
    steps = []
    result = fit(
        TRPOStep(method, model, config, generator),
        params,
        lambda g: GoalBatch(sample_task_goals(config, 5, g).double()),  # 3 + 2
        generator,
        n_iterations,
        checkpoint_every=1,
        log_every=1,
        on_checkpoint=lambda i, p: steps.append(
            {k: v.detach().clone() for k, v in p.items()}
        ),
    )
    return steps, result.history


def trpo_runs(out: str) -> None:
    runs = {run: trpo(*run) for run in TRPO_RUNS}
    if distributed.is_main():
        torch.save(runs, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")
    if sys.argv[1] == "gradient":
        gradient(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "time-limit":
        time_limit(sys.argv[2])
    elif sys.argv[1] == "trpo":
        trpo_runs(sys.argv[2])
    else:
        train(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    distributed.barrier()
