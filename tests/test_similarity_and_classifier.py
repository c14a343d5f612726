"""Linear CKA (mamllib.algorithms.similarity) against a direct formula and its
invariances; the pretrained-classifier baseline's head fitting
(mamllib.algorithms.pretrained_classifier) on toy support sets. Fast, float64."""

import pytest
import torch

from mamllib.algorithms.anil import head_keys_of
from mamllib.algorithms.pretrained_classifier import (
    classifier_objective,
    few_shot_logits,
    fit_logistic_head,
    sample_images,
    zero_head_params,
)
from mamllib.algorithms.similarity import linear_cka
from mamllib.models import MLP, Conv4, forward, init_params

DTYPE = torch.float64


def random(*shape, seed=0):
    return torch.randn(
        *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE
    )


def cka_by_hsic(x, y):
    """Kornblith et al.'s definition with an explicit centring matrix H:
    HSIC(K, L) = tr(K H L H) / (n - 1)^2 and CKA = HSIC(K, L) / sqrt(HSIC(K, K)
    HSIC(L, L)), with linear kernels K = X X^T, L = Y Y^T."""
    n = len(x)
    h = torch.eye(n, dtype=DTYPE) - torch.full((n, n), 1 / n, dtype=DTYPE)
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / (hsic(k, k) * hsic(l_, l_)).sqrt()


def test_linear_cka_matches_the_hsic_formula():
    x, y = random(30, 7, seed=1), random(30, 12, seed=2)
    y = y + x @ random(7, 12, seed=3)  # related, so CKA is well inside (0, 1)
    value = linear_cka(x, y)
    torch.testing.assert_close(value, cka_by_hsic(x, y), rtol=1e-12, atol=1e-14)
    assert 0.2 < value < 0.99
    torch.testing.assert_close(linear_cka(y, x), value, rtol=1e-12, atol=0)


def test_linear_cka_is_one_for_the_same_representation_rotated_or_scaled():
    x = random(40, 10, seed=4)
    q, _ = torch.linalg.qr(random(10, 10, seed=5))  # an orthogonal matrix
    one = torch.ones((), dtype=DTYPE)
    torch.testing.assert_close(linear_cka(x, x), one, rtol=1e-12, atol=0)
    torch.testing.assert_close(linear_cka(x, x @ q), one, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        linear_cka(x, 3.7 * x @ q + 2.0), one, rtol=1e-12, atol=0
    )
    # Not invariant to any invertible linear map: stretching one axis changes it.
    stretch = torch.diag(torch.tensor([10.0] + [1.0] * 9, dtype=DTYPE))
    assert linear_cka(x, x @ stretch) < 0.9


def test_linear_cka_flattens_feature_axes():
    x = random(8, 3, 4, 4, seed=6)  # like a conv layer's [n, C, H, W]
    y = random(8, 5, seed=7)
    torch.testing.assert_close(linear_cka(x, y), linear_cka(x.flatten(1), y))


def test_linear_cka_is_near_zero_for_independent_features():
    # Many more examples than features: independent representations barely align.
    x, y = random(2000, 5, seed=8), random(2000, 5, seed=9)
    assert linear_cka(x, y) < 0.02


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(5, 3), torch.zeros(6, 3), "same examples"),
        (torch.zeros(1, 3), torch.zeros(1, 3), "at least 2"),
        (torch.ones(5, 3), torch.randn(5, 3), "same for every example"),
    ],
)
def test_linear_cka_refuses_bad_input(x, y, message):
    with pytest.raises(ValueError, match=message):
        linear_cka(x, y)


def test_logistic_head_fits_a_separable_support_set_for_many_tasks_at_once():
    # 3 tasks, 5 classes, 2 examples per class, 4 features: class c sits near
    # direction c (one-hot), permuted differently in every task.
    g = torch.Generator().manual_seed(10)
    labels = torch.arange(5).repeat_interleave(2).expand(3, 10)  # [T, n]
    axes = torch.stack([torch.randperm(5, generator=g) for _ in range(3)])  # [T, 5]
    centres = torch.eye(5, dtype=DTYPE)[axes]  # [T, 5, 5]: class c -> unit vector
    features = centres.gather(1, labels[..., None].expand(3, 10, 5))
    features = features + 0.1 * torch.randn(3, 10, 5, generator=g, dtype=DTYPE)
    weight, bias = fit_logistic_head(features, labels, 5, n_steps=300)
    assert weight.shape == (3, 5, 5) and bias.shape == (3, 5)
    logits = features @ weight.transpose(-1, -2) + bias[..., None, :]
    assert (logits.argmax(-1) == labels).all()
    # One task alone gets the same head as in the batch.
    alone = fit_logistic_head(features[1], labels[1], 5, n_steps=300)
    torch.testing.assert_close(alone[0], weight[1])


def test_logistic_head_follows_the_gradient_of_its_loss():
    features, labels = random(6, 3, seed=11), torch.tensor([0, 1, 2, 0, 1, 2])
    weight, bias = fit_logistic_head(
        features, labels, 3, n_steps=1, lr=1.0, weight_decay=0.0
    )
    w0 = torch.zeros(3, 3, dtype=DTYPE, requires_grad=True)
    b0 = torch.zeros(3, dtype=DTYPE, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(features @ w0.T + b0, labels)
    gw, gb = torch.autograd.grad(loss, (w0, b0))
    torch.testing.assert_close(weight, -gw)
    torch.testing.assert_close(bias, -gb)


def test_logistic_head_refuses_bad_labels():
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        fit_logistic_head(random(4, 3), torch.tensor([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="disagree"):
        fit_logistic_head(random(4, 3), torch.tensor([0, 1, 2]), 3)


def test_sample_images_and_classifier_objective():
    images = torch.randint(0, 256, (7, 4, 1, 28, 28), dtype=torch.uint8)
    x, y = sample_images(images, 6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (6,)
    assert 0 <= x.min() and x.max() <= 1 and y.max() < 7
    x2, y2 = sample_images(images.numpy(), 6, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    model = Conv4(7, n_filters=4)
    params = init_params(model, torch.Generator().manual_seed(0))
    loss = classifier_objective(model)(params, (x, y))
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(forward(model, params, x), y)
    )
    with pytest.raises(ValueError, match=r"\[n_classes, n_images, C, H, W\]"):
        sample_images(images[0], 6, torch.Generator())


def test_few_shot_logits_ignore_the_classifiers_own_head():
    model = Conv4(11, n_filters=4)  # 11 training classes; 3-way tasks at test
    params = init_params(model, torch.Generator().manual_seed(1), dtype=DTYPE)
    g = torch.Generator().manual_seed(2)
    xs, xq = (torch.rand(n, 1, 28, 28, generator=g, dtype=DTYPE) for n in (3, 6))
    ys = torch.tensor([0, 1, 2])
    logits = few_shot_logits(model, params, xs, ys, xq, 3, n_steps=20)
    assert logits.shape == (6, 3)
    other = dict(params)
    for k in head_keys_of(model):
        other[k] = torch.zeros_like(params[k])
    torch.testing.assert_close(
        few_shot_logits(model, other, xs, ys, xq, 3, n_steps=20), logits
    )


def test_few_shot_logits_of_a_meta_batch_are_those_of_each_task():
    model = Conv4(11, n_filters=4)
    params = init_params(model, torch.Generator().manual_seed(3), dtype=DTYPE)
    g = torch.Generator().manual_seed(4)
    xs, xq = (torch.rand(2, n, 1, 28, 28, generator=g, dtype=DTYPE) for n in (3, 6))
    ys = torch.tensor([[0, 1, 2], [2, 0, 1]])
    together = few_shot_logits(model, params, xs, ys, xq, 3, n_steps=20)
    assert together.shape == (2, 6, 3)
    for t in range(2):
        torch.testing.assert_close(
            together[t],
            few_shot_logits(model, params, xs[t], ys[t], xq[t], 3, n_steps=20),
        )


def test_zero_head_params_zero_the_head_weight_only():
    for model in (Conv4(5, n_filters=4), MLP((1, 8, 3))):
        zero = zero_head_params(model, torch.Generator().manual_seed(5))
        usual = init_params(model, torch.Generator().manual_seed(5))
        weight, _ = head_keys_of(model)
        assert zero.keys() == usual.keys()
        assert not zero[weight].any() and usual[weight].any()
        for k in usual:
            if k != weight:
                assert torch.equal(zero[k], usual[k])
