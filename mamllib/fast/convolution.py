"""A grouped 2-d convolution whose every derivative picks its own CPU kernel.

Why: :func:`mamllib.fast.batched_conv4.forward_tasks` runs a whole meta-batch as one
grouped convolution per layer (``groups`` = tasks). Second-order MAML then
differentiates that convolution twice, and PyTorch's grouped kernels are slow on
some of the resulting shapes on a CPU: at the Omniglot 20-way setting the input
gradient of the 14x14 -> 7x7 layer, and the forward with one input channel per group
(the first layer), run several times faster one group at a time
(``benchmarks/README.md``). PyTorch's own double backward of a convolution also
splits a grouped weight gradient into one convolution per group.

So the three linear maps of a convolution are written as three
``torch.autograd.Function``s that are each other's derivatives, for any order:

* :class:`Convolution`: ``y = conv(x, w)``;
* :class:`ConvolutionInputGrad`: ``dx = conv_transpose(dy, w)``;
* :class:`ConvolutionWeightGrad`: ``dw = correlate(x, dy)``.

They satisfy ``<conv(x, w), dy> = <x, conv_transpose(dy, w)> = <w, correlate(x,
dy)>``, so the gradient of each with respect to either input is one of the three
again. Each calls the kernel measured fastest for its shape: the forward and input
gradient run group by group where that was faster, everything else as one grouped
call (group by group only on a CPU: the measurements were made there). The value
is the same linear map whichever kernel computes it (rounding aside);
``tests/test_conv4.py`` checks all three against PyTorch's convolution and
its derivatives, and the meta-gradient against the per-task loop and finite
differences.

Symmetric zero padding only, no dilation, no bias (add it outside).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Spatial sizes of the input x from which the input gradient runs group by group
# (14 and 7, Omniglot's layers 2 and 3, where that is faster; at 4, layer 4, one
# grouped call is faster).
LOOP_INPUT_GRAD_FROM = 7
# Group by group only for batches of at least this many images: measured faster
# with 20 (20-way 1-shot), slower with 5 (5-way 1-shot, 32 tasks: many tiny calls).
LOOP_MIN_BATCH = 10


def _per_group(fn, a: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
    """``fn(a_g, w_g)`` for each group g (channels of ``a``, rows of ``w``), joined."""
    return torch.cat(
        [
            fn(a_g.contiguous(), w_g)
            for a_g, w_g in zip(a.chunk(groups, 1), w.chunk(groups, 0))
        ],
        1,
    )


def _per_group_pays(t: torch.Tensor) -> bool:
    """Whether group-by-group calls can beat one grouped call for a batch like
    ``t``'s: on a CPU (where it was measured) and with enough images."""
    return t.is_cpu and t.shape[0] >= LOOP_MIN_BATCH


def conv_forward(x, w, stride: int, padding: int, groups: int) -> torch.Tensor:
    """``F.conv2d(x, w, None, stride, padding, groups=groups)``, fastest kernel."""
    if groups > 1 and x.shape[1] == groups and _per_group_pays(x):
        return _per_group(
            lambda a, b: F.conv2d(a, b, None, stride, padding), x, w, groups
        )
    return F.conv2d(x, w, None, stride, padding, 1, groups)


def conv_input_grad(g, w, x_size, stride: int, padding: int, groups: int):
    """The gradient of ``conv(x, w)`` w.r.t. ``x`` (shape ``x_size``) for output
    gradient ``g``: a transposed convolution."""
    output_padding = tuple(
        x_size[d] - ((g.shape[d] - 1) * stride + w.shape[d] - 2 * padding)
        for d in (-2, -1)
    )

    def transpose(a, b, n_groups=1):
        return F.conv_transpose2d(a, b, None, stride, padding, output_padding, n_groups)

    if groups > 1 and x_size[-1] >= LOOP_INPUT_GRAD_FROM and _per_group_pays(g):
        return _per_group(transpose, g, w, groups)
    return transpose(g, w, groups)


def conv_weight_grad(x, g, w_size, stride: int, padding: int, groups: int):
    """The gradient of ``conv(x, w)`` w.r.t. ``w`` (shape ``w_size``) for output
    gradient ``g``: one grouped call of PyTorch's convolution backward."""
    return torch.ops.aten.convolution_backward(
        g,
        x,
        x.new_empty(w_size),  # read for its shape only
        None,
        [stride, stride],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        groups,
        [False, True, False],
    )[1]


class Convolution(torch.autograd.Function):
    """``conv(x, w)``; its derivatives are the other two Functions."""

    @staticmethod
    def forward(x, w, stride, padding, groups):
        return conv_forward(x, w, stride, padding, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, ctx.stride, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        args = (ctx.stride, ctx.padding, ctx.groups)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = ConvolutionInputGrad.apply(g, w, tuple(x.shape), *args)
        if ctx.needs_input_grad[1]:
            dw = ConvolutionWeightGrad.apply(x, g, tuple(w.shape), *args)
        return dx, dw, None, None, None


class ConvolutionInputGrad(torch.autograd.Function):
    """``conv_transpose(g, w)``, linear in ``g`` and in ``w``."""

    @staticmethod
    def forward(g, w, x_size, stride, padding, groups):
        return conv_input_grad(g, w, x_size, stride, padding, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, w, _, ctx.stride, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(g, w)

    @staticmethod
    def backward(ctx, h):
        g, w = ctx.saved_tensors
        args = (ctx.stride, ctx.padding, ctx.groups)
        dg = dw = None
        if ctx.needs_input_grad[0]:  # <conv_transpose(g, w), h> = <g, conv(h, w)>
            dg = Convolution.apply(h, w, *args)
        if ctx.needs_input_grad[1]:  # ... = <w, correlate(h, g)>
            dw = ConvolutionWeightGrad.apply(h, g, tuple(w.shape), *args)
        return dg, dw, None, None, None, None


class ConvolutionWeightGrad(torch.autograd.Function):
    """``correlate(x, g)``, linear in ``x`` and in ``g``."""

    @staticmethod
    def forward(x, g, w_size, stride, padding, groups):
        return conv_weight_grad(x, g, w_size, stride, padding, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, g, _, ctx.stride, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(x, g)

    @staticmethod
    def backward(ctx, h):
        x, g = ctx.saved_tensors
        args = (ctx.stride, ctx.padding, ctx.groups)
        dx = dg = None
        if ctx.needs_input_grad[0]:  # <correlate(x, g), h> = <x, conv_transpose(g, h)>
            dx = ConvolutionInputGrad.apply(g, h, tuple(x.shape), *args)
        if ctx.needs_input_grad[1]:  # ... = <g, conv(x, h)>
            dg = Convolution.apply(x, h, *args)
        return dx, dg, None, None, None, None


def grouped_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, groups=groups)`` with the kernel
    choices above in every derivative. ``padding`` is symmetric, in pixels."""
    return Convolution.apply(x, weight, stride, padding, groups)
