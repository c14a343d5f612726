"""MAML++ (mamllib.algorithms.maml_plus_plus) in float64: the vmapped meta-objective
against the per-task loop of mamllib.algorithms.metasgd, the cosine schedule against
PyTorch's, and the training step's schedules."""

import math

import torch

from mamllib.algorithms.maml_plus_plus import (
    MAMLPlusPlusStep,
    cosine_lr,
    msl_meta_loss_vmap,
    query_losses_vmap,
)
from mamllib.algorithms.metasgd import (
    lslr_lrs,
    metasgd_meta_loss,
    multi_step_loss,
    multi_step_weights,
)
from mamllib.maml import meta_loss_loop, mse_loss
from mamllib.models import MLP, init_params
from mamllib.tasks import SinusoidTasks, make_generator
from mamllib.train import fit

MODEL = MLP((1, 8, 8, 1))


def _setup(n_steps=3):
    params = init_params(MODEL, make_generator(0, "init"), dtype=torch.float64)
    tasks = SinusoidTasks().sample(3, 5, 5, generator=make_generator(0, "tasks"))
    return params, tasks.to("cpu", torch.float64)


def _grads(loss, params):
    return torch.autograd.grad(loss, list(params.values()))


def test_vmap_equals_metasgd_loop_with_lslr_and_msl():
    params, tasks = _setup()
    params = {**params, **lslr_lrs(params, 0.02, 3)}
    with torch.no_grad():
        for k in params:
            if k.startswith("lr."):
                params[k].mul_(
                    torch.tensor([0.5, 1.0, 1.5]).view(-1, *[1] * (params[k].dim() - 1))
                )
    w = multi_step_weights(3, 0.3)
    for first_order in (False, True):
        a = msl_meta_loss_vmap(MODEL, params, tasks, mse_loss, 0.0, 3, w, first_order)
        b = metasgd_meta_loss(MODEL, params, tasks, mse_loss, 3, first_order, w)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        for ga, gb in zip(_grads(a, params), _grads(b, params)):
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-13)


def test_fixed_rate_equals_multi_step_loss_and_maml():
    params, tasks = _setup()
    w = multi_step_weights(3, 0.7)
    a = msl_meta_loss_vmap(MODEL, params, tasks, mse_loss, 0.02, 3, w)
    b = multi_step_loss(MODEL, params, tasks, mse_loss, 0.02, 3, w)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    # No step weights: MAML's meta-loss (the last step's query loss).
    a = msl_meta_loss_vmap(MODEL, params, tasks, mse_loss, 0.02, 3)
    torch.testing.assert_close(
        a, meta_loss_loop(MODEL, params, tasks, mse_loss, 0.02, 3), rtol=1e-12, atol=0
    )
    per_task = query_losses_vmap(MODEL, params, tasks, mse_loss, 0.02, 3, per_task=True)
    assert per_task.shape == (3, 3)
    torch.testing.assert_close(per_task.mean(0)[-1], a, rtol=1e-12, atol=0)


def test_cosine_lr_matches_torch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-5)
    for t in range(21):
        assert math.isclose(
            cosine_lr(1e-3, 1e-5, t, 20), opt.param_groups[0]["lr"], rel_tol=1e-9
        )
        opt.step()
        sched.step()


def test_step_schedules_and_training_moves_params():
    step = MAMLPlusPlusStep(
        MODEL,
        mse_loss,
        0.01,
        3,
        1e-3,
        msl_iterations=10,
        first_order_iterations=5,
        cosine_iterations=20,
    )
    s0, s5, s10 = step.schedule(0), step.schedule(5), step.schedule(10)
    assert s0["first_order"] and not s5["first_order"]
    assert s0["step_weights"] == [1 / 3] * 3 and s10["step_weights"][-1] > 0.9
    assert s0["outer_lr"] == 1e-3 and s10["outer_lr"] < 1e-3
    params = init_params(MODEL, make_generator(0, "init"))
    params = {**params, **lslr_lrs(params, 0.01, 3)}
    result = fit(
        step,
        params,
        lambda g: SinusoidTasks().sample(2, 5, 5, generator=g),
        make_generator(0, "tasks"),
        6,
        log_every=3,
    )
    assert step.iteration == 6 and len(result.history["query_loss"]) == 2
    assert any(not torch.equal(result.params[k], params[k]) for k in params)
