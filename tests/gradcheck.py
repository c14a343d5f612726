"""A shared oracle for the tests: the meta-gradient against finite differences."""

import pytest
import torch

from mamllib.maml import meta_loss_loop


def flat(d: dict) -> torch.Tensor:
    """All tensors of a dict as one vector."""
    return torch.cat([v.reshape(-1) for v in d.values()])


def assert_matches_finite_differences(
    g, model, params, tasks, loss_fn, inner_lr, n_inner_steps, n_directions=3, eps=1e-6
):
    """``g`` (a meta-gradient dict) against central differences of the loop's meta-loss.

    For random directions v: (F(theta + eps v) - F(theta - eps v)) / 2 eps must equal
    g . v to about eps^2 (use float64). Also refuses a trivially zero gradient.
    """
    generator = torch.Generator().manual_seed(1)
    for _ in range(n_directions):
        direction = {
            k: torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in params.items()
        }

        def loss_at(sign, direction=direction):
            shifted = {
                k: (v + sign * eps * direction[k]).detach().requires_grad_()
                for k, v in params.items()
            }
            return meta_loss_loop(
                model, shifted, tasks, loss_fn, inner_lr, n_inner_steps
            ).item()

        numeric = (loss_at(+1) - loss_at(-1)) / (2 * eps)
        analytic = (flat(g) * flat(direction)).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert flat(g).abs().max() > 1e-3
