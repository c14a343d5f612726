"""Run under torchrun by tests/test_distributed.py: one rank of a small meta-training.

    torchrun --nproc_per_node 2 tests/distributed_worker.py gradient sinusoid OUT
    torchrun --nproc_per_node 2 tests/distributed_worker.py train N CHECKPOINT OUT

``gradient``: this rank's share of a float64 meta-batch, its meta-gradient all-reduced;
rank 0 saves the result. ``train``: N iterations of fit on the sinusoid in float64,
checkpointed; rank 0 saves the parameters. ``MAMLLIB_TEST_SLOW`` adds a pause per
iteration, so that a test can kill the run between checkpoints.
"""

import os
import sys
import time

import torch

from mamllib import distributed
from mamllib.maml import cross_entropy_loss, meta_loss_of, mse_loss
from mamllib.models import MLP, Conv4, init_params
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


def train(n_iterations: int, checkpoint: str, out: str) -> None:
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
    )
    if distributed.is_main():
        torch.save(result.params, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")
    if sys.argv[1] == "gradient":
        gradient(sys.argv[2], sys.argv[3])
    else:
        train(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    distributed.barrier()
