"""The batched conv-4: :meth:`mamllib.conv4.Conv4.forward` for a whole meta-batch at
once, each task with its own parameters.

Why: after one inner step every task has its own weights, and running the tasks one
by one (or under vmap) leaves a CPU mostly idle on tiny tensors. Here the task axis is
folded into the channels, ``[N, T * C, H, W]``: each convolution is one grouped
convolution (``groups=T``) and batch norm over the folded channels is exactly
per-task, per-channel batch norm. Without vmap, PyTorch's own ``F.batch_norm`` (batch
statistics) is exact to second order, so it is used here (except as below);
:meth:`~mamllib.conv4.Conv4.forward` keeps the elementary
:func:`~mamllib.conv4.batch_norm_batch_stats`, which vmap needs. With strided
convolutions (Omniglot) the maps are mirrored so that TF's 'SAME' padding becomes
symmetric (no ``F.pad`` copies; :func:`mirrored_padding`), and on a CPU each
convolution and its derivatives run on the kernels measured fastest
(:mod:`mamllib.fast.convolution`), and batch norm without gamma has hand-written
derivatives (:mod:`mamllib.fast.normalization`).

Replaces :meth:`~mamllib.conv4.Conv4.forward` run task by task (the loop and vmap
strategies): equal to it task by task, and its meta-gradient to the loop's and to
finite differences (``tests/test_conv4.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mamllib.fast.convolution import grouped_conv2d
from mamllib.fast.normalization import batch_norm_offset


def mirrored_padding(
    image_size: int, paddings: list[tuple[int, int]], stride: int, max_pool: bool
) -> list[int] | None:
    """The symmetric zeros per layer that stand in for TF's 'SAME' ``paddings`` on
    mirrored maps, or None where mirroring does not reproduce TF's output sizes.

    TF's 'SAME' puts an odd zero bottom/right, which PyTorch's convolution cannot;
    F.pad would copy each map. Mirrored, the same windows are symmetric: with the
    image flipped upside down and left to right, and each kernel flipped too, a
    convolution padded with ``after`` zeros on both sides computes the flipped output
    of the TF one (see :func:`forward_tasks`). That holds when it gives TF's output
    size at every layer; the flips then cancel at the spatial mean (Omniglot).
    Max-pooling an odd size (21 -> 10) is not mirror-symmetric, so MiniImagenet
    (symmetric padding anyway) does not use it.
    """
    if max_pool:
        return None
    side, pads = image_size, []
    for _, after in paddings:
        out = (side + 2 * after - 3) // stride + 1
        if out != -(-side // stride):
            return None
        pads.append(after)
        side = out
    return pads


def forward_tasks(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``model``'s logits for a meta-batch, each task with its own parameters.

    Args:
        model: a :class:`~mamllib.conv4.Conv4` (its ``mirrored_padding`` picks the
            mirrored path; None for the padded one).
        params: the names of ``named_parameters``, each with a leading task axis
            ``[T, ...]`` (``expand`` a shared set to get one).
        x: ``[T, N, in_channels, image_size, image_size]``.

    Returns:
        Logits ``[T, N, n_way]``.
    """
    n_tasks, n = x.shape[:2]
    # [T, N, C, H, W] -> [N, T * C, H, W]: task t owns channels t*C .. (t+1)*C - 1
    h = x.transpose(0, 1).reshape(n, n_tasks * model.in_channels, *x.shape[3:])
    mirrored = model.mirrored_padding
    if mirrored is not None:  # see mirrored_padding: flipped maps, symmetric zeros
        h = h.flip(-2, -1)
    # Omniglot on a CPU: the kernels measured there (mamllib.fast.convolution,
    # mamllib.fast.normalization); elsewhere PyTorch's own.
    measured_cpu = mirrored is not None and h.is_cpu
    for i in range(4):
        w = params[f"conv{i + 1}.weight"]  # [T, O, I, 3, 3]
        w = w.reshape(-1, *w.shape[2:])
        # The conv bias is left out: batch norm with batch statistics subtracts
        # each channel's mean, so the bias cancels exactly (the same output, and
        # its meta-gradient is zero, as the loop's is up to rounding). That is
        # one pass over the maps fewer in every forward and every derivative.
        if mirrored is None:
            h = model._conv(i, h, w, None, groups=n_tasks)
        elif measured_cpu:
            # Kernels chosen per derivative: PyTorch's grouped ones are slow on
            # some of these shapes on a CPU.
            h = grouped_conv2d(h, w.flip(-2, -1), model.stride, mirrored[i], n_tasks)
        else:  # not measured on a GPU: PyTorch's own grouped convolution
            h = F.conv2d(h, w.flip(-2, -1), None, model.stride, mirrored[i], 1, n_tasks)
        beta = params[f"norm{i + 1}.bias"].reshape(-1)
        gamma = params.get(f"norm{i + 1}.weight")
        eps = getattr(model, f"norm{i + 1}").eps
        if measured_cpu and gamma is None:
            # Hand-written derivatives, fewer passes over the maps than
            # PyTorch's.
            h = batch_norm_offset(h, beta, eps)
        else:
            # PyTorch's fused batch norm: exact here (no vmap), and on 84x84
            # MiniImageNet maps faster than the elementary one (fewer passes
            # over the largest tensors; benchmarks/README.md). Its double
            # backward needs a weight: ones when there is no gamma.
            h = F.batch_norm(
                h,
                None,
                None,
                torch.ones_like(beta) if gamma is None else gamma.reshape(-1),
                beta,
                training=True,
                eps=eps,
            )
        h = torch.relu(h)
        if model.max_pool:
            h = F.max_pool2d(h, 2)
    # [N, T * C, s, s] -> [T, N, features], features as in forward
    h = h.reshape(n, n_tasks, -1) if model.max_pool else h.mean((2, 3))
    h = h.reshape(n, n_tasks, -1).transpose(0, 1)
    # [T, N, F] @ [T, F, n_way] + [T, 1, n_way]
    return torch.baddbmm(
        params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2)
    )
