"""The conv-4: shapes, TF 'SAME' padding, transductive batch norm, and its
meta-gradient (finite differences, loop vs vmap vs batched, first vs second order)."""

import pytest
import torch
from gradcheck import assert_matches_finite_differences, flat
from torch.func import functional_call, vmap
from torch.nn import functional as F

from mamllib.maml import (
    accuracy,
    adapt,
    cross_entropy_loss,
    meta_gradient,
    task_loss,
)
from mamllib.models import (
    Conv4,
    batch_norm_batch_stats,
    init_conv4_params,
    init_params,
    tf_same_padding,
)
from mamllib.tasks import TaskBatch

FAST_STRATEGIES = ["vmap", "batched"]


def image_tasks(n_tasks, n_way, k_shot, dtype, size=28, channels=1, seed=0):
    """Random images with the shapes of an N-way K-shot episode (not real data)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n_tasks, n_way * k_shot, channels, size, size)
    x_support = torch.rand(shape, generator=generator, dtype=dtype)
    x_query = torch.rand(shape, generator=generator, dtype=dtype)
    labels = torch.arange(n_way).repeat(k_shot).expand(n_tasks, -1).contiguous()
    unused = torch.zeros(n_tasks)  # TaskBatch's sinusoid fields
    return TaskBatch(x_support, labels, x_query, labels.clone(), unused, unused)


def small_problem(dtype=torch.float64, n_tasks=2, n_way=3, n_filters=4, **kwargs):
    model = Conv4(n_way, n_filters=n_filters, **kwargs)
    params = init_params(model, torch.Generator().manual_seed(1), dtype=dtype)
    return model, params, image_tasks(n_tasks, n_way, 1, dtype)


def assert_grads_close(actual, expected, rtol):
    """Each parameter's gradient within ``rtol`` of the reference, relative to its
    norm. The conv biases' gradients are zero up to rounding (batch norm cancels
    the biases), so theirs is measured against the largest gradient instead."""
    scale = flat(expected).abs().max()
    for k in expected:
        gap = (actual[k] - expected[k]).norm()
        cancelled = k.startswith("conv") and k.endswith("bias")
        assert gap <= rtol * (scale if cancelled else expected[k].norm()), k


@pytest.mark.parametrize(
    "kwargs, x_shape, final_size, n_features",
    [
        (dict(n_way=5), (7, 1, 28, 28), 2, 64),
        (dict(n_way=20), (20, 1, 28, 28), 2, 64),
        (
            dict(n_way=5, in_channels=3, n_filters=32, image_size=84, max_pool=True),
            (5, 3, 84, 84),
            5,
            32 * 5 * 5,
        ),
    ],
)
def test_output_shapes(kwargs, x_shape, final_size, n_features):
    model = Conv4(**kwargs)
    params = init_params(model, torch.Generator().manual_seed(0))
    assert model.final_size == final_size
    assert params["head.weight"].shape == (kwargs["n_way"], n_features)
    logits = functional_call(model, params, (torch.rand(x_shape),))
    assert logits.shape == (x_shape[0], kwargs["n_way"])
    with pytest.raises(ValueError, match="expected images"):
        functional_call(model, params, (torch.rand(x_shape[0], 2, 28, 28),))


def test_tf_same_padding_puts_the_odd_zero_bottom_right():
    # Omniglot: 28 -> 14 -> 7 -> 4 -> 2 with stride 2, as cbfinn/maml's 'SAME'.
    assert [tf_same_padding(s, 3, 2) for s in (28, 14, 7, 4)] == [
        (0, 1),
        (0, 1),
        (1, 1),
        (0, 1),
    ]
    assert tf_same_padding(84, 3, 1) == (1, 1)
    assert Conv4(5).paddings == [(0, 1), (0, 1), (1, 1), (0, 1)]
    # So the first output pixel sees rows/columns 0..2 (no zero on top), unlike
    # PyTorch's padding=1, and the last one sees 26, 27 and a zero.
    model = Conv4(5, n_filters=1)
    x, w = torch.rand(1, 1, 28, 28), torch.rand(1, 1, 3, 3)
    out = model._conv(0, x, w, None)
    assert out.shape == (1, 1, 14, 14)
    torch.testing.assert_close(out[0, 0, 0, 0], (x[0, 0, :3, :3] * w[0, 0]).sum())
    last = (x[0, 0, 26:, 26:] * w[0, 0, :2, :2]).sum()
    torch.testing.assert_close(out[0, 0, -1, -1], last)


# TF's 'SAME' for a 3x3 stride-2 convolution: pad_total = max((ceil(n / 2) - 1) * 2 +
# 3 - n, 0) and pad_top = pad_total // 2, so an odd total puts the extra zero at the
# bottom/right. Written out for Omniglot's four layers (28 -> 14 -> 7 -> 4 -> 2).
TF_SAME_STRIDE_2 = {28: (0, 1), 14: (0, 1), 7: (1, 1), 4: (0, 1)}


@pytest.mark.parametrize("layer, size", list(enumerate(TF_SAME_STRIDE_2)))
def test_every_omniglot_layer_pads_as_tf_same(layer, size):
    """Against a zero-padded copy built by hand (no F.pad), on both paths: forward's
    explicit padding and forward_tasks' mirrored one (flip, symmetric zeros, flip)."""
    top, bottom = TF_SAME_STRIDE_2[size]
    model = Conv4(5, n_filters=1)
    assert model.paddings[layer] == (top, bottom)
    generator = torch.Generator().manual_seed(layer)
    x = torch.rand(2, 1, size, size, generator=generator, dtype=torch.float64)
    w = torch.rand(1, 1, 3, 3, generator=generator, dtype=torch.float64)
    padded = x.new_zeros(2, 1, size + top + bottom, size + top + bottom)
    padded[..., top : top + size, top : top + size] = x
    tf_same = F.conv2d(padded, w, None, 2)
    assert tf_same.shape[-1] == -(-size // 2)
    torch.testing.assert_close(model._conv(layer, x, w, None), tf_same)
    pad = model.mirrored_padding[layer]
    mirrored = F.conv2d(x.flip(-2, -1), w.flip(-2, -1), None, 2, pad).flip(-2, -1)
    torch.testing.assert_close(mirrored, tf_same)


def _block_maps(model, params, x):
    """Each block's batch-norm input and output in ``model``'s forward."""
    seen = []
    hooks = [
        getattr(model, f"norm{i}").register_forward_hook(
            lambda module, args, out: seen.append((args[0], out))
        )
        for i in range(1, 5)
    ]
    try:
        functional_call(model, params, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(
    "experiment, n_filters, map_sizes, paddings",
    [
        # App. A.1: 64 filters; §5.2: stride-2 convolutions instead of max-pooling
        # (cbfinn/maml utils.py conv_block with --max_pool=False), TF 'SAME'
        ("omniglot-5way-1shot", 64, [14, 7, 4, 2], list(TF_SAME_STRIDE_2.values())),
        ("omniglot-20way-5shot", 64, [14, 7, 4, 2], list(TF_SAME_STRIDE_2.values())),
        # App. A.1: 32 filters "to reduce overfitting"; stride 1, 'SAME', then a
        # 2x2 max-pool (--max_pool=True): 84 -> 42 -> 21 -> 10 -> 5
        ("miniimagenet-5way-1shot", 32, [84, 42, 21, 10], [(1, 1)] * 4),
    ],
)
def test_paper_models_constants(
    monkeypatch, experiment, n_filters, map_sizes, paddings
):
    """The constants the paper or cbfinn/maml fix, read off the paper preset's
    model: filters, stride or max-pool, padding, and batch norm's epsilon 1e-3
    (tf.contrib.layers.batch_norm's default, which cbfinn/maml's utils.py uses),
    offset without scale (its center=True, scale=False)."""
    from mamllib.experiments.fewshot import model_for
    from mamllib.presets import make_config

    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    config = make_config(experiment, "paper")
    model = model_for(config)
    assert model.n_filters == n_filters
    max_pool = config.get("max_pool", False)
    assert model.max_pool is max_pool and model.stride == (1 if max_pool else 2)
    assert model.paddings == paddings
    params = init_params(model, torch.Generator().manual_seed(0), torch.float64)
    in_channels = config.get("in_channels", 1)
    for i in range(1, 5):
        c_in = in_channels if i == 1 else n_filters
        assert params[f"conv{i}.weight"].shape == (n_filters, c_in, 3, 3)
        assert getattr(model, f"norm{i}").eps == 1e-3
        assert f"norm{i}.weight" not in params  # no gamma
    # The epsilon as the forward pass uses it; the input is scaled down so that the
    # first block's variances are comparable to it (PyTorch's default 1e-5 would
    # give a visibly different output there).
    generator = torch.Generator().manual_seed(1)
    size = config.get("image_size", 28)
    x = 0.2 * torch.rand(3, in_channels, size, size, generator=generator).double()
    params = {
        k: torch.randn(v.shape, generator=generator, dtype=v.dtype)
        if "norm" in k
        else v
        for k, v in params.items()
    }
    maps = _block_maps(model, params, x)
    assert [h.shape[-1] for h, _ in maps] == map_sizes
    for i, (h, out) in enumerate(maps, 1):
        assert h.shape[1] == n_filters
        mean = h.mean((0, 2, 3), keepdim=True)
        var = h.var((0, 2, 3), unbiased=False, keepdim=True)
        beta = params[f"norm{i}.bias"].view(1, -1, 1, 1)
        torch.testing.assert_close(out, (h - mean) / (var + 1e-3).sqrt() + beta)
        if i == 1:
            other_eps = (h - mean) / (var + 1e-5).sqrt() + beta
            assert (out - other_eps).abs().max() > 0.1


def test_batch_norm_normalises_each_channel_with_the_batch_statistics():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 5, generator=generator, dtype=torch.float64)
    x = x * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1) + 4.0
    beta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    out = batch_norm_batch_stats(x, None, beta, eps=1e-3)
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(out.mean((0, 2, 3)), beta)
    torch.testing.assert_close(out.var((0, 2, 3), unbiased=False), var / (var + 1e-3))
    # and it is what torch's own batch norm computes in training mode
    reference = F.batch_norm(
        x, None, None, torch.ones(3, dtype=x.dtype), beta, training=True, eps=1e-3
    )
    torch.testing.assert_close(out, reference)


def test_model_is_transductive_and_ignores_the_conv_bias():
    model, params, tasks = small_problem()
    x = tasks.x_support[0]
    logits = functional_call(model, params, (x,))
    # Another example in the batch changes example 0's logits: batch statistics.
    x_other = x.clone()
    x_other[1:] = x_other[1:] * 2 + 1
    assert (
        functional_call(model, params, (x_other,))[0] - logits[0]
    ).abs().max() > 1e-3
    # A conv bias shifts a channel's whole batch, which batch norm subtracts again.
    shifted = dict(params, **{"conv2.bias": params["conv2.bias"] + 3.0})
    torch.testing.assert_close(functional_call(model, shifted, (x,)), logits)


def test_init_follows_cbfinn_maml():
    model = Conv4(5)
    params = init_params(model, torch.Generator().manual_seed(0))
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Glorot uniform, 3x3, 64 -> 64
    assert params["conv2.weight"].abs().max() <= bound
    assert params["conv2.weight"].abs().max() > 0.95 * bound
    assert params["head.weight"].std().item() == pytest.approx(1.0, abs=0.15)
    for name in ("conv1.bias", "norm1.bias", "head.bias"):
        assert params[name].abs().max() == 0
    assert "norm1.weight" not in params  # TF's default: an offset, no scale
    scaled = init_conv4_params(Conv4(5, bn_scale=True), torch.Generator())
    assert (scaled["norm1.weight"] == 1).all()
    mini = init_params(Conv4(5, 3, 32, 84, True), torch.Generator().manual_seed(0))
    assert mini["head.weight"].abs().max() <= (6 / (800 + 5)) ** 0.5


def test_cross_entropy_and_accuracy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 6), generator=generator)
    torch.testing.assert_close(
        vmap(cross_entropy_loss)(logits, labels),
        torch.stack([F.cross_entropy(a, b) for a, b in zip(logits, labels)]),
    )
    assert accuracy(logits, labels) == (logits.argmax(-1) == labels).double().mean()
    assert accuracy(F.one_hot(labels, 5).double(), labels) == 1.0


def test_forward_tasks_equals_forward_task_by_task():
    for kwargs, size, channels in ((dict(), 28, 1), (dict(max_pool=True), 20, 3)):
        model = Conv4(3, channels, 4, size, bn_scale=True, **kwargs)
        generator = torch.Generator().manual_seed(0)
        params = {  # a different parameter set per task
            k: torch.randn(3, *v.shape, generator=generator, dtype=torch.float64)
            for k, v in model.named_parameters()
        }
        x = image_tasks(3, 3, 2, torch.float64, size, channels).x_support
        expected = torch.stack(
            [
                functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],))
                for t in range(3)
            ]
        )
        torch.testing.assert_close(
            model.forward_tasks(params, x), expected, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("strategy", ["loop", *FAST_STRATEGIES])
@pytest.mark.parametrize(
    # Without gamma, two steps of this small problem put the loss within 1e-6 of
    # a kink (ReLU): central differences at eps 1e-6 disagree with every path
    # there, the loop included (at 1e-7 they agree).
    "n_inner_steps, bn_scale",
    [(1, True), (2, True), (1, False)],
)
def test_second_order_meta_gradient_matches_finite_differences(
    strategy, n_inner_steps, bn_scale
):
    model, params, tasks = small_problem(bn_scale=bn_scale)
    inner_lr = 0.4
    _, g = meta_gradient(
        model, params, tasks, cross_entropy_loss, inner_lr, n_inner_steps,
        strategy=strategy,
    )
    assert_matches_finite_differences(
        g, model, params, tasks, cross_entropy_loss, inner_lr, n_inner_steps
    )


@pytest.mark.parametrize("strategy", FAST_STRATEGIES)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("bn_scale", [False, True])
def test_fast_paths_equal_loop(strategy, dtype, rtol, first_order, bn_scale):
    """Also guards a known trap: torch 2.13's vmap gets the second-order gradient
    through ``F.batch_norm`` wrong (here 8-25% off with an adapted gamma); the
    elementary batch norm and the batched path are exact."""
    model, params, tasks = small_problem(
        dtype, n_tasks=4, n_way=5, n_filters=8, bn_scale=bn_scale
    )
    results = [
        meta_gradient(
            model, params, tasks, cross_entropy_loss, 0.4, 2, first_order, strategy=p
        )
        for p in ("loop", strategy)
    ]
    (loss_loop, g_loop), (loss_fast, g_fast) = results
    torch.testing.assert_close(loss_fast, loss_loop, rtol=rtol, atol=0)
    assert_grads_close(g_fast, g_loop, rtol)


@pytest.mark.parametrize("strategy", ["loop", *FAST_STRATEGIES])
def test_first_order_is_second_order_minus_hessian_term(strategy):
    """One inner step: g_2nd - g_1st = -alpha H_support(theta) g_query(theta')."""
    model, params, tasks = small_problem(n_tasks=1, bn_scale=True)
    inner_lr, loss_fn = 0.4, cross_entropy_loss
    _, g2 = meta_gradient(model, params, tasks, loss_fn, inner_lr, 1, False, strategy)
    _, g1 = meta_gradient(model, params, tasks, loss_fn, inner_lr, 1, True, strategy)
    xs, ys, xq, yq = (
        tasks.x_support[0],
        tasks.y_support[0],
        tasks.x_query[0],
        tasks.y_query[0],
    )
    # Independent computation: Hessian-vector product by double backward.
    adapted = adapt(model, params, xs, ys, loss_fn, inner_lr, 1)
    g_query = torch.autograd.grad(
        task_loss(model, adapted, xq, yq, loss_fn), tuple(adapted.values())
    )
    support_grad = torch.autograd.grad(
        task_loss(model, params, xs, ys, loss_fn),
        tuple(params.values()),
        create_graph=True,
    )
    hvp = torch.autograd.grad(
        support_grad, tuple(params.values()), grad_outputs=g_query
    )
    g_query, hvp = dict(zip(params, g_query)), dict(zip(params, hvp))
    assert_grads_close(g1, g_query, 1e-10)
    assert_grads_close(
        {k: g2[k] - g1[k] for k in params},
        {k: -inner_lr * h for k, h in hvp.items()},
        1e-8,
    )
    assert flat(hvp).abs().max() > 1e-3  # the term is not negligible


def test_batched_path_needs_forward_tasks():
    from mamllib.maml import mse_loss
    from mamllib.models import MLP
    from mamllib.tasks import SinusoidTasks

    model = MLP()
    params = init_params(model, torch.Generator().manual_seed(0))
    tasks = SinusoidTasks().sample(2, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="forward_tasks"):
        meta_gradient(model, params, tasks, mse_loss, 0.01, 1, strategy="batched")


@pytest.mark.parametrize(
    "batch, groups, c_in, size, stride",
    [
        (10, 3, 1, 28, 2),  # one input channel per group: the forward runs per group
        (10, 3, 4, 14, 2),  # input size >= 7: the input gradient runs per group
        (5, 3, 4, 14, 2),  # too few images for per-group calls: all grouped
        (10, 3, 4, 4, 2),  # all grouped
        (10, 2, 3, 9, 1),  # stride 1, odd size
    ],
)
def test_grouped_conv2d_and_its_derivatives_equal_pytorchs(
    batch, groups, c_in, size, stride
):
    """mamllib.fast.convolution against F.conv2d: the value, the gradient, and the
    gradient of a function of the gradient (what second-order MAML takes), in
    float64, for shapes that take each kernel choice."""
    from mamllib.fast.convolution import grouped_conv2d

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        batch,
        groups * c_in,
        size,
        size,
        generator=generator,
        dtype=torch.float64,
        requires_grad=True,
    )
    w = torch.randn(
        groups * 6,
        c_in,
        3,
        3,
        generator=generator,
        dtype=torch.float64,
        requires_grad=True,
    )
    ours = grouped_conv2d(x, w, stride, 1, groups)
    reference = F.conv2d(x, w, None, stride, 1, groups=groups)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    probe = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    probe_x = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    probe_w = torch.randn(w.shape, generator=generator, dtype=torch.float64)

    def second_order(out):
        # A nonlinear output makes every derivative kind appear twice over.
        gx, gw = torch.autograd.grad(
            (out.tanh() * probe).sum(), (x, w), create_graph=True
        )
        value = (gx * probe_x).sum() + (gw * probe_w).sum() + (gx * gx).sum()
        return [gx, gw, *torch.autograd.grad(value, (x, w))]

    for a, b in zip(second_order(ours), second_order(reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # And against finite differences, to any order PyTorch checks (second here).
    small = (
        x[:2, :, :5, :5].detach().clone().requires_grad_(),
        w.detach().clone().requires_grad_(),
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b: grouped_conv2d(a, b, stride, 1, groups), small
    )


def test_fast_path_padding_is_the_mirrored_tf_same():
    """forward_tasks flips the maps and pads symmetrically (no F.pad copies) where
    that equals TF's 'SAME' (Omniglot); MiniImagenet's max-pooling is not
    mirror-symmetric and keeps its own symmetric padding. The values themselves are
    compared in test_forward_tasks_equals_forward_task_by_task."""
    assert Conv4(5).mirrored_padding == [1, 1, 1, 1]
    assert Conv4(5, image_size=27).mirrored_padding == [1, 1, 1, 1]
    assert Conv4(5, 3, 32, 84, max_pool=True).mirrored_padding is None
    # Without the mirroring (the fallback), the same logits.
    model, params, tasks = small_problem(n_tasks=3, n_filters=4)
    batched = {k: v.expand(3, *v.shape) for k, v in params.items()}
    mirrored = model.forward_tasks(batched, tasks.x_support)
    model.mirrored_padding = None
    torch.testing.assert_close(
        model.forward_tasks(batched, tasks.x_support), mirrored, rtol=1e-12, atol=1e-12
    )


def test_batch_norm_offset_and_its_derivatives_equal_pytorchs():
    """mamllib.fast.normalization (the batched path's batch norm without gamma) against
    F.batch_norm: value, gradient, gradient of a function of the gradient, and
    finite differences to second order; a third derivative raises."""
    from mamllib.fast.normalization import batch_norm_offset

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, 4, generator=generator, dtype=torch.float64) * 3 + 1
    x.requires_grad_()
    beta = torch.randn(5, generator=generator, dtype=torch.float64).requires_grad_()
    probe = torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def reference(x, beta):
        ones = torch.ones_like(beta)
        return F.batch_norm(x, None, None, ones, beta, training=True, eps=1e-3)

    def ours(x, beta):
        return batch_norm_offset(x, beta, 1e-3)

    def derivatives(bn):
        out = bn(x, beta)
        gx, gb = torch.autograd.grad(
            (out.relu() * probe).sum() + (out**3).sum(), (x, beta), create_graph=True
        )
        value = (gx * gx * probe).sum() + (gb * gb).sum()
        return [out, gx, gb, *torch.autograd.grad(value, (x, beta))]

    for a, b in zip(derivatives(ours), derivatives(reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradgradcheck(ours, (x, beta))
    gx = torch.autograd.grad(ours(x, beta).pow(3).sum(), x, create_graph=True)[0]
    ggx = torch.autograd.grad((gx * gx).sum(), x, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="third"):
        torch.autograd.grad(ggx.sum(), x)


@pytest.mark.parametrize("first_order", [False, True])
def test_threads_path_equals_loop_and_uses_threads(first_order):
    """strategy='threads': the batched path with the tasks shared among Python
    threads, one intra-op thread each; float64 against the loop, the threads
    really used, and torch's thread count restored after."""
    import threading

    model, params, tasks = small_problem(n_tasks=5, n_way=5, n_filters=8)
    seen = set()
    forward_tasks = model.forward_tasks

    def recording(p, x):
        seen.add((threading.get_ident(), torch.get_num_threads()))
        return forward_tasks(p, x)

    model.forward_tasks = recording
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loss, grads = meta_gradient(
            model, params, tasks, cross_entropy_loss, 0.4, 2, first_order, "threads"
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len({ident for ident, _ in seen}) == 2, seen  # two threads ran tasks
    assert {n for _, n in seen} == {1}  # each with one intra-op thread
    loss_loop, grads_loop = meta_gradient(
        model, params, tasks, cross_entropy_loss, 0.4, 2, first_order, "loop"
    )
    torch.testing.assert_close(loss, loss_loop, rtol=1e-10, atol=0)
    assert_grads_close(grads, grads_loop, 1e-10)
