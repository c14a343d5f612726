"""Proto-MAML's inner loop (notebook 14): SGD from the prototype head with head and
body as independent parameters, the same one task at a time and under ``vmap``."""

import pytest
import torch
from torch.func import grad, vmap

from mamllib.algorithms.anil import body_features, head_keys_of
from mamllib.algorithms.protonet import protomaml_adapt, prototypes
from mamllib.maml import cross_entropy_loss
from mamllib.models import MLP, forward, init_params

DTYPE = torch.float64


def problem(n_tasks=2, n_way=3, k_shot=2):
    g = torch.Generator().manual_seed(5)
    model = MLP((2, 6, 5, n_way))
    params = init_params(model, g, dtype=DTYPE)
    x = torch.randn(n_tasks, n_way * k_shot, 2, generator=g, dtype=DTYPE)
    y = torch.arange(n_way).repeat_interleave(k_shot).repeat(n_tasks, 1)
    return model, params, x, y


def by_hand(model, params, xs, ys, alpha, n_steps, n_way):
    """MAML's inner loop on every parameter, from the prototype head."""
    weight_key, bias_key = head_keys_of(model)
    centres = prototypes(body_features(model, params, xs), ys, n_way)
    theta = {**params, weight_key: 2 * centres, bias_key: -(centres**2).sum(-1)}
    for _ in range(n_steps):
        g = grad(lambda p: cross_entropy_loss(forward(model, p, xs), ys))(theta)
        theta = {k: theta[k] - alpha * g[k] for k in theta}
    return theta


@pytest.mark.parametrize("n_steps", [1, 2])
def test_protomaml_inner_loop_is_sgd_from_the_prototype_head(n_steps):
    model, params, x, y = problem()
    params = {k: v.requires_grad_() for k, v in params.items()}
    looped = [
        protomaml_adapt(
            model,
            params,
            x[i],
            y[i],
            cross_entropy_loss,
            0.5,
            n_steps,
            3,
            adapt_body=True,
        )
        for i in range(len(x))
    ]
    batched = vmap(
        lambda xs, ys: protomaml_adapt(
            model, params, xs, ys, cross_entropy_loss, 0.5, n_steps, 3, adapt_body=True
        )
    )(x, y)
    for i in range(len(x)):
        expected = by_hand(model, params, x[i], y[i], 0.5, n_steps, 3)
        for k in params:
            torch.testing.assert_close(looped[i][k], expected[k])
            torch.testing.assert_close(batched[k][i], expected[k])
    # The body moved: the check is not vacuous.
    assert (looped[0]["net.0.weight"] - params["net.0.weight"]).abs().max() > 1e-4
