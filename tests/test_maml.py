"""The meta-gradient: finite differences, loop vs vmap, first vs second order, adapt."""

import pytest
import torch
from gradcheck import assert_matches_finite_differences, flat
from torch.func import grad, vmap

from mamllib.maml import (
    adapt,
    meta_gradient,
    mse_loss,
    task_loss,
)
from mamllib.models import MLP, init_params
from mamllib.tasks import SinusoidTasks, make_generator


def small_problem(dtype=torch.float64, n_tasks=3, k_shot=4, sizes=(1, 6, 5, 1), seed=0):
    model = MLP(sizes)
    params = init_params(model, make_generator(seed, "init"), dtype=dtype)
    tasks = SinusoidTasks().sample(n_tasks, k_shot, generator=make_generator(seed))
    return model, params, tasks.to("cpu", dtype)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("n_inner_steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(strategy, n_inner_steps):
    model, params, tasks = small_problem()
    inner_lr = 0.05
    _, g = meta_gradient(
        model, params, tasks, mse_loss, inner_lr, n_inner_steps, strategy=strategy
    )
    assert_matches_finite_differences(
        g, model, params, tasks, mse_loss, inner_lr, n_inner_steps
    )


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("n_inner_steps", [1, 3])
def test_vmap_path_equals_loop(first_order, n_inner_steps):
    model, params, tasks = small_problem(torch.float32, n_tasks=5, sizes=(1, 40, 40, 1))
    loss_l, g_l = meta_gradient(
        model, params, tasks, mse_loss, 0.01, n_inner_steps, first_order, "loop"
    )
    loss_v, g_v = meta_gradient(
        model, params, tasks, mse_loss, 0.01, n_inner_steps, first_order, "vmap"
    )
    torch.testing.assert_close(loss_v, loss_l, rtol=1e-6, atol=1e-6)
    for k in g_l:
        torch.testing.assert_close(g_v[k], g_l[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_first_order_is_second_order_minus_hessian_term(strategy):
    """One inner step: g_2nd = (I - alpha H_support(theta)) g_query(theta'),
    g_1st = g_query(theta'); so g_2nd - g_1st = -alpha H_support g_query."""
    model, params, tasks = small_problem(n_tasks=1)
    inner_lr = 0.1
    _, g2 = meta_gradient(model, params, tasks, mse_loss, inner_lr, 1, False, strategy)
    _, g1 = meta_gradient(model, params, tasks, mse_loss, inner_lr, 1, True, strategy)
    xs, ys, xq, yq = (
        tasks.x_support[0],
        tasks.y_support[0],
        tasks.x_query[0],
        tasks.y_query[0],
    )
    # Independent computation: Hessian-vector product by double backward.
    adapted = adapt(model, params, xs, ys, mse_loss, inner_lr, 1)
    g_query = torch.autograd.grad(
        task_loss(model, adapted, xq, yq, mse_loss), tuple(adapted.values())
    )
    g_query = {k: v.detach() for k, v in zip(params, g_query)}
    support_grad = torch.autograd.grad(
        task_loss(model, params, xs, ys, mse_loss),
        tuple(params.values()),
        create_graph=True,
    )
    hvp = torch.autograd.grad(
        support_grad, tuple(params.values()), grad_outputs=tuple(g_query.values())
    )
    for k, h in zip(params, hvp):
        torch.testing.assert_close(g1[k], g_query[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g2[k] - g1[k], -inner_lr * h, rtol=1e-8, atol=1e-10)
    assert flat(dict(zip(params, hvp))).abs().max() > 1e-4  # the term is not negligible


def test_adapt_equals_hand_written_sgd():
    model, params, tasks = small_problem(n_tasks=1)
    xs, ys = tasks.x_support[0], tasks.y_support[0]
    inner_lr, steps = 0.03, 4

    def by_hand(w):  # the 1-6-5-1 ReLU MLP written out
        h = torch.relu(xs @ w["net.0.weight"].T + w["net.0.bias"])
        h = torch.relu(h @ w["net.2.weight"].T + w["net.2.bias"])
        return ((h @ w["net.4.weight"].T + w["net.4.bias"] - ys) ** 2).mean()

    w = {k: v.detach().clone() for k, v in params.items()}
    for _ in range(steps):
        g = grad(by_hand)(w)
        w = {k: w[k] - inner_lr * g[k] for k in w}
    under_vmap = vmap(
        lambda xs_, ys_: adapt(model, params, xs_, ys_, mse_loss, inner_lr, steps),
    )(xs[None], ys[None])
    for adapted_params in (
        adapt(model, params, xs, ys, mse_loss, inner_lr, steps),
        {k: v[0] for k, v in under_vmap.items()},
    ):
        for k in w:
            torch.testing.assert_close(
                adapted_params[k].detach(), w[k], rtol=1e-12, atol=1e-12
            )


def test_one_meta_step_lowers_the_meta_loss():
    model, params, tasks = small_problem(
        torch.float32, n_tasks=10, k_shot=10, sizes=(1, 40, 40, 1)
    )
    loss0, g = meta_gradient(model, params, tasks, mse_loss, 0.01, 1)
    stepped = {
        k: (v - 1e-3 * g[k]).detach().requires_grad_() for k, v in params.items()
    }
    loss1, _ = meta_gradient(model, stepped, tasks, mse_loss, 0.01, 1)
    assert loss1 < loss0


def test_unknown_path_raises():
    model, params, tasks = small_problem()
    with pytest.raises(ValueError, match="strategy"):
        meta_gradient(model, params, tasks, mse_loss, 0.01, 1, strategy="fast")
