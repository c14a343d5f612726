"""MAML-TRPO's fast paths equal the readable ones (float64, a tiny fixed problem).

``meta_trpo_problem`` (products written out, mamllib.fast.mlp_products) against
``meta_trpo_problem_reference`` (double backward); the MLP's hand-written products
against torch.func; ``trpo_step`` with the step length from conjugate gradient's
residual against one more product.
"""

import pytest
import torch
from torch.func import functional_call, jvp, vjp

from mamllib.fast import mlp_products as mlp
from mamllib.models import MLP
from mamllib.rl.metarl import (
    PGData,
    adapted_policies,
    meta_objective_loop,
    meta_trpo_problem,
    meta_trpo_problem_reference,
)
from mamllib.rl.policy import init_policy_params, per_task_mean, policy_model
from mamllib.rl.trpo import (
    conjugate_gradient,
    conjugate_gradient_and_product,
    flatten,
    trpo_step,
)

DTYPE = torch.float64
N_TASKS, N_TRAJ, HORIZON, OBS, ACT, LR = 3, 2, 6, 3, 2, 0.5


def random_data(gen: torch.Generator) -> PGData:
    """Random trajectories with ragged lengths (the mask), task axis first."""
    shape = (N_TASKS, N_TRAJ, HORIZON)
    lengths = torch.randint(2, HORIZON + 1, (N_TASKS, N_TRAJ), generator=gen)
    lengths[0] = HORIZON  # one task without padding
    return PGData(
        torch.randn(*shape, OBS, generator=gen, dtype=DTYPE),
        torch.randn(*shape, ACT, generator=gen, dtype=DTYPE),
        torch.randn(*shape, generator=gen, dtype=DTYPE),
        (torch.arange(HORIZON) < lengths[..., None]).to(DTYPE),
    )


def make_problem(inner_step: bool = True):
    """A policy with two hidden layers, D_i, and D'_i sampled (as far as the
    problem knows) by the adapted policies, as training builds them."""
    gen = torch.Generator().manual_seed(0)
    model = policy_model(OBS, ACT, (5, 4))
    params = init_policy_params(model, gen, init_std=0.7, dtype=DTYPE)
    with torch.no_grad():  # biases start at 0: move every ReLU off its kink
        for k, v in params.items():
            if k.endswith("bias"):
                v.add_(0.3 * torch.randn(v.shape, generator=gen, dtype=DTYPE))
    pre = random_data(gen)
    post = random_data(gen)
    if inner_step:
        old = adapted_policies(model, params, pre, LR)
    else:
        old = {k: v.detach().expand(N_TASKS, *v.shape) for k, v in params.items()}
    post.old_mean = per_task_mean(model, old, post.obs).detach()
    post.old_log_std = old["log_std"]
    return model, params, (pre if inner_step else None), post


CASES = {
    "second order": (True, False),
    "first order": (True, True),
    "no inner step": (False, True),
}


@pytest.fixture(params=[1, 10**6], ids=["a task per chunk", "one chunk"])
def chunk_samples(request, monkeypatch):
    monkeypatch.setattr(mlp, "CHUNK_SAMPLES", request.param)
    return request.param


@pytest.mark.parametrize("case", list(CASES))
def test_fast_problem_equals_the_reference(case, chunk_samples):
    inner_step, first_order = CASES[case]
    model, params, pre, post = make_problem(inner_step)
    loss, gradient, hvp = meta_trpo_problem(model, params, pre, post, LR, first_order)
    loss_r, gradient_r, hvp_r = meta_trpo_problem_reference(
        model, params, pre, post, LR, first_order
    )
    assert loss == pytest.approx(loss_r, rel=1e-12, abs=1e-14)
    assert gradient.abs().max() > 1e-3
    torch.testing.assert_close(gradient, gradient_r, rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(gradient.shape, generator=gen, dtype=DTYPE)
        product = hvp(v)
        assert product.abs().max() > 1e-3
        torch.testing.assert_close(product, hvp_r(v), rtol=1e-10, atol=1e-12)
    # The loss is the loop's mean surrogate, through the inner step.
    surrogate, _ = meta_objective_loop(
        model, params, pre, post, LR if inner_step else 0.0, first_order
    )
    assert loss == pytest.approx(surrogate.item(), rel=1e-12)


def test_the_inner_step_changes_the_product():
    """The comparison above can fail: second order's J^T F J differs from first
    order's F (J = I) on the same problem."""
    model, params, pre, post = make_problem()
    _, _, hvp2 = meta_trpo_problem(model, params, pre, post, LR, False)
    _, _, hvp1 = meta_trpo_problem(model, params, pre, post, LR, True)
    v = torch.randn(
        flatten(params.values()).shape,
        generator=torch.Generator().manual_seed(2),
        dtype=DTYPE,
    )
    assert (hvp2(v) - hvp1(v)).abs().max() > 1e-3


@pytest.mark.parametrize("per_task_layers", [False, True])
@pytest.mark.parametrize("per_task", [False, True])
def test_mlp_products_equal_torch_func(per_task_layers, per_task):
    """forward, jvp, vjp and vjp_tangent against torch.func on MLP's forward, one
    task at a time, for a network shared by the tasks or one per task, results per
    task or summed over the tasks."""
    gen = torch.Generator().manual_seed(3)
    model = MLP((OBS, 5, 4, ACT))
    names = mlp.linear_layer_names(model)
    lead = (N_TASKS,) if per_task_layers else ()

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    params = {n: randn(*lead, *p.shape) for n, p in model.named_parameters()}
    tangent = {n: randn(*lead, *p.shape) for n, p in model.named_parameters()}
    x = randn(N_TASKS, 7, OBS)
    cotangent, d_cotangent = randn(N_TASKS, 7, ACT), randn(N_TASKS, 7, ACT)

    def task(p, i):  # task i's network
        return {k: v[i] for k, v in p.items()} if per_task_layers else p

    def outputs(p):
        return torch.stack(
            [functional_call(model, task(p, i), (x[i],)) for i in range(N_TASKS)]
        )

    def gradients(p, c):  # J^T c by torch.func, per task or summed
        per = [
            vjp(lambda q, i=i: functional_call(model, q, (x[i],)), task(p, i))[1](c[i])[
                0
            ]
            for i in range(N_TASKS)
        ]
        join = torch.stack if per_task else lambda gs: torch.stack(gs).sum(0)
        return tuple(join([g[n] for g in per]) for pair in names for n in pair)

    def layers(d):
        return [(d[w], d[b]) for w, b in names]

    def flat(pairs):
        return tuple(t for pair in pairs for t in pair)

    trace = mlp.forward(layers(params), x)
    torch.testing.assert_close(trace.output, outputs(params))
    d_out, d_inputs = mlp.jvp(trace, layers(params), layers(tangent))
    torch.testing.assert_close(d_out, jvp(outputs, (params,), (tangent,))[1])
    grads, deltas = mlp.vjp(trace, layers(params), cotangent, per_task, True)
    expected = gradients(params, cotangent)
    for got, want in zip(flat(grads), expected):
        torch.testing.assert_close(got, want)
    # The tangent of J^T c when the parameters move along u and c by d_cotangent
    # (forward over reverse).
    d_grads = mlp.vjp_tangent(
        trace, layers(params), deltas, layers(tangent), d_inputs, d_cotangent, per_task
    )
    _, expected = jvp(gradients, (params, cotangent), (tangent, d_cotangent))
    for got, want in zip(flat(d_grads), expected):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want)


def test_other_networks_are_refused():
    model = MLP((OBS, 5, ACT))
    model.net[1] = torch.nn.Tanh()
    with pytest.raises(ValueError, match="meta_trpo_problem_reference"):
        mlp.linear_layer_names(model)


def test_conjugate_gradient_returns_the_product_of_its_solution():
    gen = torch.Generator().manual_seed(4)
    m = torch.randn(20, 20, generator=gen, dtype=DTYPE)
    a = m @ m.T + 0.1 * torch.eye(20, dtype=DTYPE)
    b = torch.randn(20, generator=gen, dtype=DTYPE)
    x, ax = conjugate_gradient_and_product(lambda v: a @ v, b, n_iters=6)
    torch.testing.assert_close(x, conjugate_gradient(lambda v: a @ v, b, n_iters=6))
    torch.testing.assert_close(ax, a @ x, rtol=1e-9, atol=1e-10)
    assert (ax - b).abs().max() > 1e-3  # not converged: A x is not b yet


@pytest.mark.parametrize("case", list(CASES))
def test_one_trpo_step_reaches_the_reference_parameters(case):
    """From the same state: the fast problem and the step length from conjugate
    gradient's residual take the reference's step (double backward, one more
    product)."""
    inner_step, first_order = CASES[case]
    model, params, pre, post = make_problem(inner_step)
    lr = LR if inner_step else 0.0

    def evaluate(p):
        return meta_objective_loop(model, p, pre, post, lr, True)

    steps = []
    for problem, from_cg in [
        (meta_trpo_problem_reference, False),
        (meta_trpo_problem, True),
    ]:
        loss, gradient, hvp = problem(model, params, pre, post, LR, first_order)
        steps.append(
            trpo_step(
                params,
                loss,
                gradient,
                hvp,
                evaluate,
                max_kl=1e-3,
                product_from_cg=from_cg,
            )
        )
    (new_r, stats_r), (new, stats) = steps
    assert stats_r.accepted and stats.accepted
    assert stats.step_fraction == stats_r.step_fraction
    assert stats.kl_after == pytest.approx(stats_r.kl_after, rel=1e-5)
    step_r = (flatten(new_r.values()) - flatten(params.values())).detach()
    step = (flatten(new.values()) - flatten(params.values())).detach()
    assert step_r.abs().max() > 1e-3
    # Ten conjugate-gradient iterations on this small, ill-conditioned KL Hessian
    # (condition number ~1e6) amplify rounding: the reference and the third-order
    # double backward (direct_problem) differ by ~1e-7 of the step here too.
    tolerance = 1e-6 * step_r.abs().max().item()
    torch.testing.assert_close(step, step_r, rtol=0, atol=tolerance)
