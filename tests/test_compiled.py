"""strategy='compiled': equal to the loop (float64) and to vmap (float32), to finite
differences; compiled anew, not answered wrongly, when the dtype or shapes change;
refused off the MLP.

A cold compile takes tens of seconds on two cores (seconds once torch's on-disk cache
holds it), so the tests share three: one second-order and one first-order
configuration (2 inner steps each), each compiled for float64, and the second-order
one compiled again when float32 arrives.
"""

import pytest
import torch
from gradcheck import assert_matches_finite_differences

from mamllib.fast.compiled import compile_cache_dir, compiled_loss_and_grads
from mamllib.maml import STRATEGIES, meta_gradient, meta_loss_of, mse_loss
from mamllib.models import MLP, Conv4, init_params
from mamllib.presets import make_config
from mamllib.tasks import SinusoidTasks, make_generator

INNER_LR = 0.05


# One hidden layer: every extra layer adds kernels, each a C++ compile of seconds.
SIZES = (1, 6, 1)


def small_problem(dtype, n_tasks=3, k_shot=4, seed=0):
    model = MLP(SIZES)
    params = init_params(model, make_generator(seed, "init"), dtype=dtype)
    tasks = SinusoidTasks().sample(n_tasks, k_shot, generator=make_generator(seed))
    return model, params, tasks.to("cpu", dtype)


def both(model, params, tasks, n_inner_steps, first_order, reference):
    return [
        meta_gradient(
            model, params, tasks, mse_loss, INNER_LR, n_inner_steps, first_order, s
        )
        for s in (reference, "compiled")
    ]


def assert_same(result, expected, rtol, atol):
    (loss, grads), (expected_loss, expected_grads) = result, expected
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=atol)
    assert grads.keys() == expected_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=rtol, atol=atol)


@pytest.mark.parametrize("first_order", [False, True])
def test_compiled_equals_loop_in_float64(first_order):
    model, params, tasks = small_problem(torch.float64)
    expected, result = both(model, params, tasks, 2, first_order, "loop")
    assert_same(result, expected, rtol=1e-10, atol=1e-12)


def test_second_and_first_order_differ_so_the_comparison_means_something():
    model, params, tasks = small_problem(torch.float64)
    _, g2 = meta_gradient(
        model, params, tasks, mse_loss, INNER_LR, 2, False, "compiled"
    )
    _, g1 = meta_gradient(model, params, tasks, mse_loss, INNER_LR, 2, True, "compiled")
    assert max((g2[k] - g1[k]).abs().max() for k in g2) > 1e-4


def test_compiled_second_order_matches_finite_differences():
    model, params, tasks = small_problem(torch.float64)
    _, grads = meta_gradient(
        model, params, tasks, mse_loss, INNER_LR, 2, strategy="compiled"
    )
    assert_matches_finite_differences(
        grads, model, params, tasks, mse_loss, INNER_LR, 2
    )


def test_a_new_dtype_is_compiled_anew_and_float32_equals_vmap():
    # The float64 second-order configuration's compiled function, now called with
    # float32: the dtype guard fails and torch.compile compiles again.
    model, params, tasks = small_problem(torch.float32)
    expected, result = both(model, params, tasks, 2, False, "vmap")
    assert_same(result, expected, rtol=1e-5, atol=1e-6)


def test_the_loss_hands_the_gradient_to_backward():
    model, params, tasks = small_problem(torch.float64)
    loss = meta_loss_of("compiled")(model, params, tasks, mse_loss, INNER_LR, 2, True)
    (3.0 * loss).backward()
    _, grads = meta_gradient(model, params, tasks, mse_loss, INNER_LR, 2, True, "loop")
    for k, p in params.items():
        torch.testing.assert_close(p.grad, 3.0 * grads[k], rtol=1e-10, atol=1e-12)


def test_one_compiled_function_per_configuration():
    model = MLP(SIZES)
    f = compiled_loss_and_grads(model, mse_loss, INNER_LR, 2, True)
    assert compiled_loss_and_grads(MLP(SIZES), mse_loss, INNER_LR, 2, True) is f
    assert compiled_loss_and_grads(MLP((1, 7, 1)), mse_loss, INNER_LR, 2, True) is not f
    assert compiled_loss_and_grads(model, mse_loss, INNER_LR, 2, False) is not f
    assert compiled_loss_and_grads(model, mse_loss, INNER_LR, 1, True) is not f


def test_models_other_than_the_mlp_are_refused():
    model = Conv4(n_way=2, in_channels=1, n_filters=2)
    with pytest.raises(ValueError, match="MLP only.*strategy='vmap'"):
        meta_loss_of("compiled")(model, {}, None, mse_loss, INNER_LR, 1)


def test_the_strategy_is_registered_and_accepted_by_the_presets(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    assert "compiled" in STRATEGIES
    assert make_config("sinusoid", "ci", strategy="compiled")["strategy"] == "compiled"


def test_the_compile_cache_is_under_mamllib_cache_unless_torch_is_told(
    monkeypatch, tmp_path
):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MAMLLIB_CACHE", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert compile_cache_dir() == tmp_path / "inductor"
