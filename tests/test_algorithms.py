"""The algorithms after MAML (mamllib.algorithms), in float64: finite differences,
closed forms on quadratic tasks, and MAML itself where they reduce to it."""

from dataclasses import dataclass

import pytest
import torch
from gradcheck import flat
from torch.autograd.functional import hessian

from mamllib.algorithms.anil import (
    adapt_head,
    anil_meta_loss,
    anil_objective,
    body_features,
    head_keys_of,
    nil_probabilities,
)
from mamllib.algorithms.imaml import (
    curvature_step_solver,
    imaml_objective,
    implicit_meta_gradient,
    implicit_meta_gradient_vmap,
    implicit_task_gradient,
    proximal_adapt,
)
from mamllib.algorithms.metasgd import (
    lslr_lrs,
    meta_sgd_lrs,
    metasgd_adapt,
    metasgd_meta_loss,
    multi_step_loss,
    multi_step_weights,
)
from mamllib.algorithms.protonet import (
    protomaml_meta_loss,
    protonet_logits,
    prototype_head,
    prototypes,
)
from mamllib.algorithms.reptile import (
    reptile_direction,
    reptile_direction_vmap,
    reptile_objective,
)
from mamllib.baselines import pretrain_objective
from mamllib.batch import Batch
from mamllib.maml import (
    adapt,
    cross_entropy_loss,
    meta_gradient,
    meta_loss_loop,
    mse_loss,
    task_loss,
)
from mamllib.models import MLP, Conv4, forward, init_params
from mamllib.outer_steps import AdamStep
from mamllib.rl.trpo import flatten, unflatten
from mamllib.tasks import SinusoidTasks, make_generator

DTYPE = torch.float64


@dataclass
class Tasks(Batch):
    """A meta-batch made by hand: support and query sets only."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


def sinusoid_problem(n_tasks=3, k_shot=4, sizes=(1, 6, 5, 1), seed=0):
    model = MLP(sizes)
    params = init_params(model, make_generator(seed, "init"), dtype=DTYPE)
    tasks = SinusoidTasks().sample(n_tasks, k_shot, generator=make_generator(seed))
    return model, params, tasks.to("cpu", DTYPE)


def classification_problem(n_tasks=2, n_way=3, k_shot=2, n_query=2, sizes=(2, 6, 5)):
    """Gaussian blobs, one per class and task; an MLP whose head has n_way outputs."""
    g = torch.Generator().manual_seed(3)
    model = MLP((*sizes, n_way))
    params = init_params(model, g, dtype=DTYPE)
    centres = torch.randn(n_tasks, n_way, 1, sizes[0], generator=g, dtype=DTYPE)

    def points(n):
        x = centres + 0.5 * torch.randn(
            n_tasks, n_way, n, sizes[0], generator=g, dtype=DTYPE
        )
        labels = torch.arange(n_way).repeat_interleave(n).repeat(n_tasks, 1)
        return x.reshape(n_tasks, n_way * n, sizes[0]), labels

    tasks = Tasks(*points(k_shot), *points(n_query))
    return model, params, tasks


def grads_of(loss, params):
    """d loss / d params as a dict, zeros where a parameter does not reach it."""
    values = torch.autograd.grad(loss, tuple(params.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if g is None else g
        for (k, p), g in zip(params.items(), values)
    }


def assert_matches_finite_differences(loss_of_params, params, g, n_directions=3):
    """``g`` against central differences of ``loss_of_params`` along random
    directions (all keys, learning rates included); refuses a zero gradient."""
    generator, eps = torch.Generator().manual_seed(1), 1e-6
    for _ in range(n_directions):
        direction = {
            k: torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in params.items()
        }

        def at(sign, direction=direction):
            shifted = {
                k: (v + sign * eps * direction[k]).detach().requires_grad_()
                for k, v in params.items()
            }
            return loss_of_params(shifted).item()

        numeric = (at(+1) - at(-1)) / (2 * eps)
        analytic = (flat(g) * flat(direction)).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert flat(g).abs().max() > 1e-3


def augmented(x):
    """[x, 1]: the inputs of a linear layer with bias, so that w x + b = theta . x~."""
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def quadratic_problem(n_tasks=2, n_points=6, n_features=3):
    """Linear regression tasks: MSE is quadratic in theta = (w, b), with
    grad L = A theta - c, A = (2/n) X~^T X~, c = (2/n) X~^T y."""
    g = torch.Generator().manual_seed(5)
    model = MLP((n_features, 1))
    params = init_params(model, g, dtype=DTYPE)

    def data():
        x = torch.randn(n_tasks, n_points, n_features, generator=g, dtype=DTYPE)
        return x, torch.randn(n_tasks, n_points, 1, generator=g, dtype=DTYPE)

    tasks = Tasks(*data(), *data())
    return model, params, tasks


def quadratic(x, y):
    """(A, c) of the MSE of a linear model on one task's points."""
    xt = augmented(x)
    return 2 / len(x) * xt.T @ xt, 2 / len(x) * xt.T @ y[:, 0]


# --------------------------------------------------------------------------------------
# Reptile
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_query", [False, True])
def test_reptile_one_step_is_inner_lr_times_joint_training_gradient(use_query):
    model, params, tasks = sinusoid_problem()
    inner_lr = 0.02
    _, direction = reptile_direction(
        model, params, tasks, mse_loss, inner_lr, 1, use_query=use_query
    )
    if use_query:  # the pretrained baseline's objective: every point of every task
        joint = pretrain_objective(model, mse_loss)(params, tasks)
    else:
        joint = mse_loss(forward(model, params, tasks.x_support), tasks.y_support)
    g = grads_of(joint, params)
    for k in params:
        torch.testing.assert_close(
            direction[k], inner_lr * g[k], rtol=1e-10, atol=1e-15
        )
    assert flat(direction).abs().max() > 1e-3


def test_reptile_two_steps_on_quadratic_tasks_match_closed_form():
    """Two full-batch steps: theta - theta'' = alpha (2I - alpha A)(A theta - c)."""
    model, params, tasks = quadratic_problem(n_tasks=3)
    inner_lr = 0.1
    _, direction = reptile_direction(model, params, tasks, mse_loss, inner_lr, 2)
    theta = flatten(params.values()).detach()
    expected, first_order = torch.zeros_like(theta), torch.zeros_like(theta)
    for i in range(len(tasks)):
        a, c = quadratic(tasks.x_support[i], tasks.y_support[i])
        gradient = a @ theta - c
        expected += inner_lr * (2 * torch.eye(len(a)) - inner_lr * a) @ gradient / 3
        first_order += 2 * inner_lr * gradient / 3
    torch.testing.assert_close(
        flatten(direction.values()), expected, rtol=1e-12, atol=0
    )
    assert (expected - first_order).abs().max() > 1e-3  # the -alpha A term matters


def test_reptile_matches_taylor_expansion_to_second_order():
    """Nichol et al. §5.1, k = 2 minibatch steps: averaged over the order of the two
    minibatches, g_Reptile / alpha = grad(L1 + L2) - (alpha/2) grad(g1 . g2)
    + O(alpha^2). Halving alpha quarters the error, while leaving out the alignment
    term only halves it."""
    model, params, tasks = sinusoid_problem(n_tasks=4, k_shot=8, sizes=(1, 8, 8, 1))
    swapped = Tasks(
        torch.cat([tasks.x_support[:, 4:], tasks.x_support[:, :4]], 1),
        torch.cat([tasks.y_support[:, 4:], tasks.y_support[:, :4]], 1),
        tasks.x_query,
        tasks.y_query,
    )
    leaves = tuple(params.values())

    def expansion(alpha):
        total = 0
        for i in range(len(tasks)):
            x, y = tasks.x_support[i], tasks.y_support[i]
            l1 = task_loss(model, params, x[:4], y[:4], mse_loss)
            l2 = task_loss(model, params, x[4:], y[4:], mse_loss)
            g1 = flatten(torch.autograd.grad(l1, leaves, create_graph=True))
            g2 = flatten(torch.autograd.grad(l2, leaves, create_graph=True))
            total = total + (l1 + l2 - alpha / 2 * g1 @ g2) / len(tasks)
        return flatten(torch.autograd.grad(total, leaves))

    def reptile(alpha):
        directions = [
            flatten(
                reptile_direction(model, params, t, mse_loss, alpha, 2, batch_size=4)[
                    1
                ].values()
            )
            for t in (tasks, swapped)
        ]
        return (directions[0] + directions[1]) / (2 * alpha)

    gradient_term = expansion(0.0)
    alphas = (1e-3, 5e-4)
    errors = [(reptile(a) - expansion(a)).norm().item() for a in alphas]
    naive = [(reptile(a) - gradient_term).norm().item() for a in alphas]
    assert errors[0] / errors[1] == pytest.approx(4, rel=0.1)
    assert naive[0] / naive[1] == pytest.approx(2, rel=0.1)
    assert errors[0] < 0.05 * naive[0]


@pytest.mark.parametrize(
    "use_query, batch_size, steps", [(False, None, 1), (True, 3, 5), (True, None, 2)]
)
def test_reptile_vmap_equals_the_loop(use_query, batch_size, steps):
    model, params, tasks = sinusoid_problem(n_tasks=4, k_shot=5)
    args = (model, params, tasks, mse_loss, 0.02, steps, use_query, batch_size)
    loss, loop = reptile_direction(*args)
    loss_vmap, vmapped = reptile_direction_vmap(*args)
    assert loss_vmap.item() == pytest.approx(loss.item(), rel=1e-12)
    for k in params:
        torch.testing.assert_close(vmapped[k], loop[k], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="strategy must be"):
        reptile_objective(model, mse_loss, 0.02, steps, strategy="compiled")


def test_reptile_objective_reports_query_loss_and_has_the_direction_as_gradient():
    model, params, tasks = sinusoid_problem()
    inner_lr, steps = 0.02, 3
    value = reptile_objective(model, mse_loss, inner_lr, steps)(params, tasks)
    g = grads_of(value, params)
    _, direction = reptile_direction(model, params, tasks, mse_loss, inner_lr, steps)
    # the query loss after full-batch SGD is first-order MAML's meta-loss
    fomaml = meta_loss_loop(model, params, tasks, mse_loss, inner_lr, steps, True)
    assert value.item() == pytest.approx(fomaml.item(), rel=1e-12)
    for k in params:
        torch.testing.assert_close(g[k], direction[k], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------
# ANIL and NIL
# --------------------------------------------------------------------------------------


def test_head_keys_and_body_features_of_mlp_and_conv4():
    """The head applied to the body's features is the whole network."""
    g = torch.Generator().manual_seed(0)
    cases = [
        (MLP((1, 40, 40, 1)), torch.randn(5, 1, dtype=DTYPE), 40),
        (Conv4(3, n_filters=4), torch.rand(2, 1, 28, 28, dtype=DTYPE), 4),
        (
            Conv4(3, in_channels=3, n_filters=2, image_size=84, max_pool=True),
            torch.rand(2, 3, 84, 84, dtype=DTYPE),
            2 * 5 * 5,
        ),
    ]
    assert head_keys_of(cases[0][0]) == ("net.4.weight", "net.4.bias")
    assert head_keys_of(cases[1][0]) == ("head.weight", "head.bias")
    for model, x, n_features in cases:
        params = init_params(model, g, dtype=DTYPE)
        weight, bias = (params[k] for k in head_keys_of(model))
        features = body_features(model, params, x)
        assert features.shape == (len(x), n_features)
        torch.testing.assert_close(
            features @ weight.T + bias,
            forward(model, params, x),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("n_inner_steps", [1, 2])
def test_anil_meta_gradient_matches_finite_differences(n_inner_steps):
    model, params, tasks = sinusoid_problem()
    head = head_keys_of(model)
    inner_lr = 0.1

    def meta_loss(p, first_order=False):
        return anil_meta_loss(
            model, p, tasks, mse_loss, inner_lr, n_inner_steps, head, first_order
        )

    g = grads_of(meta_loss(params), params)
    assert_matches_finite_differences(meta_loss, params, g)
    # the body learns, and second order through the head's steps changes its gradient
    g1 = grads_of(meta_loss(params, first_order=True), params)
    assert g["net.0.weight"].abs().max() > 1e-3
    assert (g["net.0.weight"] - g1["net.0.weight"]).abs().max() > 1e-4


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_with_every_key_in_the_head_is_maml(first_order):
    model, params, tasks = sinusoid_problem()
    loss_m, g_maml = meta_gradient(
        model, params, tasks, mse_loss, 0.1, 2, first_order, strategy="loop"
    )
    loss_a = anil_meta_loss(
        model, params, tasks, mse_loss, 0.1, 2, tuple(params), first_order
    )
    g_anil = grads_of(loss_a, params)
    assert torch.equal(loss_a.detach(), loss_m)
    for k in params:
        torch.testing.assert_close(g_anil[k], g_maml[k], rtol=1e-13, atol=1e-15)
    g_head_only = grads_of(
        anil_objective(model, mse_loss, 0.1, 2, first_order=first_order)(params, tasks),
        params,
    )
    assert (flat(g_head_only) - flat(g_maml)).abs().max() > 1e-3


def test_anil_inner_loop_changes_the_head_only():
    model, params, tasks = sinusoid_problem()
    head = head_keys_of(model)
    adapted_params = adapt_head(
        model, params, tasks.x_support[0], tasks.y_support[0], mse_loss, 0.1, 3, head
    )
    for k in params:
        if k in head:
            assert (adapted_params[k] - params[k]).abs().max() > 1e-3
        else:
            assert adapted_params[k] is params[k]


def toy_features_model():
    """A 2-2-2 MLP whose body is the identity on the positive quadrant."""
    model = MLP((2, 2, 2))
    params = init_params(model, torch.Generator().manual_seed(0), dtype=DTYPE)
    params["net.0.weight"] = torch.eye(2, dtype=DTYPE)
    params["net.0.bias"] = torch.zeros(2, dtype=DTYPE)
    return model, params


def test_nil_classifies_by_cosine_similarity_of_features():
    """Support: class 0 at (4, 0), class 1 at (0.5, 0.5). The query (3, 2.8) is
    nearer (4, 0) but points along (1, 1): NIL says class 1, a prototypical network
    (Euclidean) says class 0."""
    model, params = toy_features_model()
    x_support = torch.tensor([[4.0, 0.0], [0.5, 0.5]], dtype=DTYPE)
    y_support = torch.tensor([0, 1])
    x_query = torch.tensor([[3.0, 2.8], [5.0, 0.1]], dtype=DTYPE)
    probs = nil_probabilities(model, params, x_support, y_support, x_query, 2)
    cos = x_query / x_query.norm(dim=1, keepdim=True)
    cos = torch.stack([cos[:, 0], cos.sum(1) / 2**0.5], 1)  # vs (1, 0), (1, 1)/sqrt 2
    torch.testing.assert_close(probs, cos.softmax(1), rtol=1e-12, atol=0)
    assert probs.argmax(1).tolist() == [1, 0]
    euclidean = protonet_logits(model, params, x_support, y_support, x_query, 2)
    assert euclidean.argmax(1).tolist() == [0, 0]


# --------------------------------------------------------------------------------------
# Prototypical networks and Proto-MAML
# --------------------------------------------------------------------------------------


def by_hand_features(params, x):
    """The body of the 2-6-5-3 MLP written out."""
    h = torch.relu(x @ params["net.0.weight"].T + params["net.0.bias"])
    return torch.relu(h @ params["net.2.weight"].T + params["net.2.bias"])


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    model, params, tasks = classification_problem(k_shot=3)
    xs, ys, xq = tasks.x_support[0], tasks.y_support[0], tasks.x_query[0]
    logits = protonet_logits(model, params, xs, ys, xq, 3)
    fs, fq = by_hand_features(params, xs), by_hand_features(params, xq)
    expected = torch.empty(len(xq), 3, dtype=DTYPE)
    for k in range(3):
        centre = sum(fs[j] for j in range(len(xs)) if ys[j] == k) / 3
        for q in range(len(xq)):
            expected[q, k] = -sum((fq[q, d] - centre[d]) ** 2 for d in range(5))
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-14)
    assert logits.std() > 1e-3


def test_prototype_head_gives_protonet_logits_up_to_a_constant_per_query():
    model, params, tasks = classification_problem()
    xs, ys, xq = tasks.x_support[0], tasks.y_support[0], tasks.x_query[0]
    weight, bias = prototype_head(prototypes(body_features(model, params, xs), ys, 3))
    with_head = forward(
        model, {**params, "net.4.weight": weight, "net.4.bias": bias}, xq
    )
    proto = protonet_logits(model, params, xs, ys, xq, 3)
    shift = with_head - proto  # ||f(x_query)||^2 in every column
    torch.testing.assert_close(
        shift, (by_hand_features(params, xq) ** 2).sum(1, keepdim=True).expand(-1, 3)
    )
    assert shift[:, 0].std() > 1e-3  # a different constant for each query
    torch.testing.assert_close(with_head.softmax(1), proto.softmax(1))


@pytest.mark.parametrize("adapt_body", [False, True])
def test_protomaml_meta_gradient_matches_finite_differences(adapt_body):
    model, params, tasks = classification_problem()

    def meta_loss(p):
        return protomaml_meta_loss(
            model, p, tasks, cross_entropy_loss, 0.5, 2, 3, adapt_body
        )

    g = grads_of(meta_loss(params), params)
    assert_matches_finite_differences(meta_loss, params, g)
    assert g["net.0.weight"].abs().max() > 1e-3  # through the prototypes
    assert flat({k: g[k] for k in head_keys_of(model)}).abs().max() == 0


# --------------------------------------------------------------------------------------
# iMAML
# --------------------------------------------------------------------------------------


def newton_solver(loss_of_params, theta):
    """One Newton step with the dense Hessian: exact on a quadratic."""
    v = flatten(theta.values()).detach()

    def f(u):
        return loss_of_params(unflatten(u, theta))

    step = torch.linalg.solve(hessian(f, v), torch.func.grad(f)(v))
    return unflatten(v - step, theta)


def test_implicit_gradient_is_exact_on_quadratic_tasks():
    """phi*(theta) = (A + lam I)^-1 (c + lam theta), so d/dtheta L_query(phi*) =
    lam (A + lam I)^-1 grad L_query(phi*): by hand, by finite differences of the
    closed form, and by iMAML with the inner problem solved (GD or Newton)."""
    model, params, tasks = quadratic_problem(n_tasks=2)
    lam, n = 2.0, 4
    theta = flatten(params.values()).detach()

    def phi_star(t, i):
        a, c = quadratic(tasks.x_support[i], tasks.y_support[i])
        return torch.linalg.solve(a + lam * torch.eye(n), c + lam * t)

    def query_loss(t):
        xq, yq = augmented(tasks.x_query), tasks.y_query[..., 0]
        return torch.stack(
            [((xq[i] @ phi_star(t, i) - yq[i]) ** 2).mean() for i in range(2)]
        ).mean()

    exact, first_order = torch.zeros(n, dtype=DTYPE), torch.zeros(n, dtype=DTYPE)
    for i in range(2):
        a, _ = quadratic(tasks.x_support[i], tasks.y_support[i])
        aq, cq = quadratic(tasks.x_query[i], tasks.y_query[i])
        g_query = aq @ phi_star(theta, i) - cq
        exact += lam * torch.linalg.solve(a + lam * torch.eye(n), g_query) / 2
        first_order += g_query / 2
    eps, numeric = 1e-6, torch.empty(n, dtype=DTYPE)
    for j in range(n):
        e = torch.zeros(n, dtype=DTYPE)
        e[j] = eps
        numeric[j] = (query_loss(theta + e) - query_loss(theta - e)) / (2 * eps)
    torch.testing.assert_close(exact, numeric, rtol=1e-7, atol=1e-9)
    assert (exact - first_order).abs().max() > 1e-2  # the Jacobian matters

    phi = proximal_adapt(
        model, params, tasks.x_support[0], tasks.y_support[0], mse_loss, 0.1, 500, lam
    )
    torch.testing.assert_close(
        flatten(phi.values()), phi_star(theta, 0), rtol=1e-12, atol=1e-12
    )
    for steps, solver in ((500, None), (0, newton_solver)):
        loss, g = implicit_meta_gradient(
            model,
            params,
            tasks,
            mse_loss,
            0.1,
            steps,
            lam,
            cg_iters=n + 2,
            cg_tol=1e-28,
            solver=solver,
        )
        torch.testing.assert_close(flatten(g.values()), exact, rtol=1e-10, atol=1e-12)
        assert loss.item() == pytest.approx(query_loss(theta).item(), rel=1e-12)


def test_conjugate_gradient_matches_a_dense_solve():
    model, params, tasks = sinusoid_problem(n_tasks=1, k_shot=5)
    lam = 5.0
    xs, ys, xq, yq = (
        tasks.x_support[0],
        tasks.y_support[0],
        tasks.x_query[0],
        tasks.y_query[0],
    )
    phi = proximal_adapt(model, params, xs, ys, mse_loss, 0.02, 20, lam)
    v = flatten(phi.values()).detach()
    h = hessian(lambda u: task_loss(model, unflatten(u, phi), xs, ys, mse_loss), v)
    matrix = torch.eye(len(v), dtype=DTYPE) + h / lam
    assert torch.linalg.eigvalsh(matrix).min() > 0.05  # symmetric positive definite
    g_query = flatten(
        torch.autograd.grad(
            task_loss(model, phi, xq, yq, mse_loss), tuple(phi.values())
        )
    )
    dense = torch.linalg.solve(matrix, g_query)
    _, g = implicit_task_gradient(
        model, phi, xs, ys, xq, yq, mse_loss, lam, cg_iters=3 * len(v), cg_tol=1e-30
    )
    torch.testing.assert_close(flatten(g.values()), dense, rtol=1e-8, atol=1e-10)
    _, g_short = implicit_task_gradient(
        model, phi, xs, ys, xq, yq, mse_loss, lam, cg_iters=1
    )
    assert (flatten(g_short.values()) - dense).abs().max() > 1e-4
    assert (dense - g_query).abs().max() > 1e-3  # not the identity
    assert (g_query != 0).sum() > len(g_query) // 2


@pytest.mark.parametrize("n_inner_steps", [0, 1, 7])
def test_imaml_vmap_equals_the_loop(n_inner_steps):
    """The vmapped implicit meta-gradient (jvp-of-grad products, CG's early stop as
    a mask) against the loop (double-backward products, CG's early stop a break)."""
    model, params, tasks = sinusoid_problem(n_tasks=4, k_shot=5)
    args = (model, params, tasks, mse_loss, 0.02, n_inner_steps, 3.0)
    for cg_tol in (0.0, 1e-10):
        loss, loop = implicit_meta_gradient(*args, cg_iters=4, cg_tol=cg_tol)
        loss_vmap, vmapped = implicit_meta_gradient_vmap(*args, 4, cg_tol)
        assert loss_vmap.item() == pytest.approx(loss.item(), rel=1e-12)
        for k in params:
            torch.testing.assert_close(vmapped[k], loop[k], rtol=1e-10, atol=1e-13)
    _, fewer = implicit_meta_gradient_vmap(*args, cg_iters=1)
    assert (flat(fewer) - flat(loop)).abs().max() > 1e-4  # CG's iterations matter


def test_imaml_vmap_stops_each_tasks_conjugate_gradient_on_its_own():
    """Many CG iterations on a 4-parameter quadratic: every task converges long before
    the last iteration, and the masked early stop keeps the result finite and equal
    to the loop's (whose break would otherwise be a division by zero)."""
    model, params, tasks = quadratic_problem(n_tasks=3)
    args = (model, params, tasks, mse_loss, 0.1, 50, 2.0)
    _, loop = implicit_meta_gradient(*args, cg_iters=40, cg_tol=1e-20)
    _, vmapped = implicit_meta_gradient_vmap(*args, cg_iters=40, cg_tol=1e-20)
    for k in params:
        assert torch.isfinite(vmapped[k]).all()
        torch.testing.assert_close(vmapped[k], loop[k], rtol=1e-10, atol=1e-13)


def test_imaml_objective_checks_its_strategy_before_training():
    model, _, _ = sinusoid_problem()
    with pytest.raises(ValueError, match="strategy must be one of"):
        imaml_objective(model, mse_loss, 0.01, 5, 1.0, strategy="compiled")


def test_curvature_step_solver_converges_where_a_fixed_step_diverges():
    """Linear regression with inputs scaled up: the support loss's curvature exceeds
    2/alpha - lam, so fixed-step descent diverges; the step from power iteration
    reaches the closed-form phi*. On the MLP, vmap with the solver equals the loop."""
    model, params, tasks = quadratic_problem(n_tasks=1)
    xs, ys, lam = 6.0 * tasks.x_support[0], tasks.y_support[0], 2.0
    a, c = quadratic(xs, ys)
    theta = flatten(params.values()).detach()
    exact = torch.linalg.solve(a + lam * torch.eye(4, dtype=DTYPE), c + lam * theta)
    assert torch.linalg.eigvalsh(a).max() > 2 / 0.05 - lam
    fixed = proximal_adapt(model, params, xs, ys, mse_loss, 0.05, 200, lam)
    assert not torch.isfinite(flat(fixed)).all() or (flat(fixed) - exact).norm() > 1e3
    solved = proximal_adapt(
        model, params, xs, ys, mse_loss, 0.0, 0, lam, curvature_step_solver(2000, 30)
    )
    torch.testing.assert_close(flat(solved), exact, rtol=1e-8, atol=1e-10)
    model, params, tasks = sinusoid_problem(n_tasks=4, k_shot=5)
    args = (model, params, tasks, mse_loss, 0.0, 0, 3.0, 5)
    solver = curvature_step_solver(6, 5)
    loss, loop = implicit_meta_gradient(*args, solver=solver)
    loss_vmap, vmapped = implicit_meta_gradient_vmap(*args, solver=solver)
    assert loss_vmap.item() == pytest.approx(loss.item(), rel=1e-12)
    for k in params:
        torch.testing.assert_close(vmapped[k], loop[k], rtol=1e-10, atol=1e-13)


def test_imaml_inner_loop_keeps_no_graph():
    model, params, tasks = sinusoid_problem()
    for steps in (1, 30):
        phi = proximal_adapt(
            model,
            params,
            tasks.x_support[0],
            tasks.y_support[0],
            mse_loss,
            0.01,
            steps,
            1.0,
        )
        assert all(p.is_leaf and p.grad_fn is None for p in phi.values())


# --------------------------------------------------------------------------------------
# Meta-SGD, LSLR and the multi-step loss
# --------------------------------------------------------------------------------------


def perturbed(lrs, scale=0.03):
    """Learning rates made unequal, so that every one of them matters."""
    g = torch.Generator().manual_seed(7)
    return {
        k: (v + scale * torch.rand(v.shape, generator=g, dtype=v.dtype))
        .detach()
        .requires_grad_()
        for k, v in lrs.items()
    }


@pytest.mark.parametrize("kind", ["meta_sgd", "lslr"])
def test_metasgd_meta_gradient_matches_finite_differences(kind):
    model, params, tasks = sinusoid_problem()
    steps = 2
    lrs = (
        meta_sgd_lrs(params, 0.05) if kind == "meta_sgd" else lslr_lrs(params, 0.05, 2)
    )
    all_params = {**params, **perturbed(lrs)}

    def meta_loss(p):
        return metasgd_meta_loss(model, p, tasks, mse_loss, steps)

    g = grads_of(meta_loss(all_params), all_params)
    assert_matches_finite_differences(meta_loss, all_params, g)
    assert flat({k: g[k] for k in lrs}).abs().max() > 1e-3  # the rates learn


@pytest.mark.parametrize("kind", ["meta_sgd", "lslr"])
def test_metasgd_with_equal_rates_is_maml(kind):
    model, params, tasks = sinusoid_problem()
    inner_lr, steps = 0.05, 2
    lrs = (
        meta_sgd_lrs(params, inner_lr)
        if kind == "meta_sgd"
        else lslr_lrs(params, inner_lr, steps)
    )
    all_params = {**params, **lrs}
    loss = metasgd_meta_loss(model, all_params, tasks, mse_loss, steps)
    g = grads_of(loss, all_params)
    loss_m, g_maml = meta_gradient(
        model, params, tasks, mse_loss, inner_lr, steps, strategy="loop"
    )
    assert loss.item() == pytest.approx(loss_m.item(), rel=1e-13)
    for k in params:
        torch.testing.assert_close(g[k], g_maml[k], rtol=1e-12, atol=1e-14)


def test_lslr_takes_each_steps_own_rate():
    model, params, tasks = sinusoid_problem()
    xs, ys = tasks.x_support[0], tasks.y_support[0]
    lrs = lslr_lrs(params, 0.0, 2)
    with torch.no_grad():
        for v in lrs.values():
            v[0], v[1] = 0.02, 0.07
    adapted_params = metasgd_adapt(model, {**params, **lrs}, xs, ys, mse_loss, 2)[-1]
    by_maml = adapt(
        model,
        adapt(model, params, xs, ys, mse_loss, 0.02, 1),
        xs,
        ys,
        mse_loss,
        0.07,
        1,
    )
    swapped = adapt(
        model,
        adapt(model, params, xs, ys, mse_loss, 0.07, 1),
        xs,
        ys,
        mse_loss,
        0.02,
        1,
    )
    for k in params:
        torch.testing.assert_close(adapted_params[k], by_maml[k], rtol=1e-13, atol=0)
    assert (flat(by_maml) - flat(swapped)).abs().max() > 1e-4


def test_multi_step_loss_is_the_weighted_sum_of_each_steps_meta_loss():
    """Weights (0, 0, 1) give MAML's meta-loss and meta-gradient; any weights give
    sum_j w_j (MAML's meta-loss after j steps)."""
    model, params, tasks = sinusoid_problem()
    inner_lr = 0.05
    last = multi_step_loss(model, params, tasks, mse_loss, inner_lr, 3, (0, 0, 1))
    loss_m, g_maml = meta_gradient(
        model, params, tasks, mse_loss, inner_lr, 3, strategy="loop"
    )
    assert last.item() == pytest.approx(loss_m.item(), rel=1e-13)
    g = grads_of(last, params)
    for k in params:
        torch.testing.assert_close(g[k], g_maml[k], rtol=1e-12, atol=1e-14)
    weights = multi_step_weights(3, 0.25)
    msl = multi_step_loss(model, params, tasks, mse_loss, inner_lr, 3, weights)
    per_step = [
        meta_loss_loop(model, params, tasks, mse_loss, inner_lr, j) for j in (1, 2, 3)
    ]
    assert msl.item() == pytest.approx(
        sum(w * q.item() for w, q in zip(weights, per_step)), rel=1e-13
    )
    assert abs(msl.item() - last.item()) > 1e-3
    with pytest.raises(ValueError, match="one weight per inner step"):
        multi_step_loss(model, params, tasks, mse_loss, inner_lr, 3, (0, 1))


def test_multi_step_weights_anneal_towards_the_last_step():
    n = 5
    assert multi_step_weights(n, 0.0) == pytest.approx([0.2] * 5)
    middle = multi_step_weights(n, 0.5)
    assert middle == pytest.approx([0.1] * 4 + [0.6])
    end = multi_step_weights(n, 1.0)
    assert end == pytest.approx([0.006] * 4 + [1 - 4 * 0.006])
    for progress in (0.0, 0.3, 0.97, 1.0, 2.0):
        assert sum(multi_step_weights(n, progress)) == pytest.approx(1)


# --------------------------------------------------------------------------------------
# Objectives in the training loop's Adam step
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["reptile", "imaml"])
def test_first_adam_step_follows_the_algorithms_direction(algorithm):
    """Adam's first step is -outer_lr * g / (|g| + eps): the sign of the update the
    objective hands it, elementwise."""
    model, params, tasks = sinusoid_problem()
    if algorithm == "reptile":
        objective = reptile_objective(model, mse_loss, 0.02, 3)
        _, g = reptile_direction(model, params, tasks, mse_loss, 0.02, 3)
    else:
        objective = imaml_objective(model, mse_loss, 0.02, 10, lam=2.0)
        _, g = implicit_meta_gradient(model, params, tasks, mse_loss, 0.02, 10, 2.0)
    before = flatten(params.values()).detach().clone()
    params, stats = AdamStep(objective, params, outer_lr=1e-3)(params, tasks, 1.0)
    step, g = flatten(params.values()).detach() - before, flatten(g.values())
    clear = g.abs() > 1e-4
    assert clear.sum() > len(g) // 2
    torch.testing.assert_close(step[clear], -1e-3 * g[clear].sign(), rtol=1e-3, atol=0)
    assert stats["loss"] > 0
