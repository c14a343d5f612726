"""Batch norm with batch statistics and an offset, its derivatives written by hand.

Why: second-order MAML through :func:`mamllib.fast.batched_conv4.forward_tasks` takes
the derivative of batch norm's backward at every inner step. PyTorch's double backward
of ``F.batch_norm`` is a composite of about 35 passes over the maps, and its fused
forward is slower on a CPU than a few elementary ops on the Omniglot maps
(``benchmarks/README.md``). Here the forward, the backward and the backward's derivative
are each a few passes, in three ``torch.autograd.Function``s (the last one raises if
differentiated). Same function as
``F.batch_norm(x, None, None, 1, beta, training=True, eps=eps)`` and as
:func:`mamllib.conv4.batch_norm_batch_stats` without gamma; ``tests/test_conv4.py``
checks the value and the first and second derivatives against PyTorch's and with
``gradgradcheck``. A third derivative raises (MAML needs two).

Per channel, over the batch and the spatial axes (``m`` is that mean):
``c = x - m(x)``, ``r = (m(c^2) + eps)^(-1/2)``, ``xhat = c r``, ``y = xhat + beta``.
Backward, for the output gradient ``g``: ``dbeta = sum(g)`` and
``dx = r (g - m(g) - xhat m(g xhat))``. The derivative of ``<a, dx>`` is
``r (a - m(a) - xhat m(a xhat))`` w.r.t. ``g`` and
``-r^2 [(m(a g) - m(a) m(g) - 3 m(g xhat) m(a xhat)) xhat + m(a xhat) (g - m(g))
+ m(g xhat) (a - m(a))]`` w.r.t. ``x``.
"""

from __future__ import annotations

import torch

_AXES = (0, 2, 3)  # [N, C, H, W]: statistics per channel


def _mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(_AXES, keepdim=True)


class BatchNorm(torch.autograd.Function):
    """``(y, xhat, r)`` for ``x`` ``[N, C, H, W]`` and ``beta`` ``[C]``."""

    @staticmethod
    def forward(x, beta, eps):
        c = x - _mean(x)
        r = torch.rsqrt(_mean(c * c) + eps)
        xhat = c.mul_(r)
        return xhat + beta.view(1, -1, 1, 1), xhat, r

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, xhat, r = output
        ctx.mark_non_differentiable(xhat, r)
        ctx.save_for_backward(inputs[0], xhat, r)

    @staticmethod
    def backward(ctx, g, _g_xhat, _g_r):
        x, xhat, r = ctx.saved_tensors
        dx = dbeta = None
        if ctx.needs_input_grad[0]:
            dx = BatchNormBackward.apply(g, x, xhat, r)[0]
        if ctx.needs_input_grad[1]:
            dbeta = g.sum(_AXES)
        return dx, dbeta, None


class BatchNormBackward(torch.autograd.Function):
    """``dx`` from ``g``; ``x`` is an input only so that its gradient flows."""

    @staticmethod
    def forward(g, x, xhat, r):
        mean_g = _mean(g)
        mean_gx = _mean(g * xhat)
        dx = g * r
        dx -= xhat * (mean_gx * r)
        dx -= mean_g * r
        return dx, mean_g, mean_gx

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, _, xhat, r = inputs
        _, mean_g, mean_gx = output
        ctx.mark_non_differentiable(mean_g, mean_gx)
        # x only for the graph: a third derivative must reach it (and raise).
        ctx.save_for_backward(g, inputs[1], xhat, r, mean_g, mean_gx)

    @staticmethod
    def backward(ctx, a, _a_mean_g, _a_mean_gx):
        g, x, xhat, r, mean_g, mean_gx = ctx.saved_tensors
        dg, dx = BatchNormSecondDerivative.apply(a, g, x, xhat, r, mean_g, mean_gx)
        return (
            dg if ctx.needs_input_grad[0] else None,
            dx if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


class BatchNormSecondDerivative(torch.autograd.Function):
    """The derivative of ``<a, dx>`` w.r.t. ``g`` and ``x``; no derivative itself."""

    @staticmethod
    def forward(a, g, x, xhat, r, mean_g, mean_gx):
        mean_a = _mean(a)
        mean_ax = _mean(a * xhat)
        dg = a * r
        dg -= xhat * (mean_ax * r)
        dg -= mean_a * r
        r2 = r * r
        k_xhat = (_mean(a * g) - mean_a * mean_g - 3 * mean_gx * mean_ax) * r2
        k_g, k_a = mean_ax * r2, mean_gx * r2
        dx = xhat * k_xhat.neg()
        dx -= g * k_g
        dx -= a * k_a
        dx += k_g * mean_g + k_a * mean_a
        return dg, dx

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "mamllib.fast.normalization's batch norm has derivatives up to the second "
            "(what MAML needs); for a third, use Conv4.forward or F.batch_norm"
        )


def batch_norm_offset(x: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch norm of ``x`` ``[N, C, H, W]`` with its own statistics, plus ``beta``."""
    return BatchNorm.apply(x, beta, eps)[0]
