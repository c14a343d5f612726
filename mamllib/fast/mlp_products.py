"""The ReLU MLP's Jacobian products written out by hand, for a batch of tasks.

MAML-TRPO's KL Hessian-vector product needs, for every task, products with the
Jacobian of the policy's mean network and with the derivative of its backward pass
(``mamllib.rl.metarl.meta_trpo_problem``). Autograd gets them by differentiating
twice through the graph (``meta_trpo_problem_reference``); here they are the layer
recursions themselves, on activations saved once per TRPO step:

* :func:`forward`: the activations of ``x`` and which ReLUs are on (a :class:`Trace`);
* :func:`jvp`: J u, the output's change along a parameter direction u (forward mode);
* :func:`vjp`: J^T c, the parameters' gradient for an output cotangent c;
* :func:`vjp_tangent`: the change of that gradient along u when c changes too, which
  is a Hessian-vector product of any loss of the output (Pearlmutter's R-operator).

Every tensor has a task axis first: inputs ``[n_tasks, n_samples, width]``; weights
``[out, in]`` (one network for all tasks) or ``[n_tasks, out, in]`` (one per task),
biases ``[out]`` or ``[n_tasks, out]``. A parameter-shaped result is per task
(``per_task=True``) or summed over the tasks, which is one matrix product over all
samples. ``tests/test_trpo_speed_paths.py`` holds each product to ``torch.func`` on
:func:`mamllib.models.MLP`'s forward and the whole MAML-TRPO problem to the reference.
Only torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mamllib.models import MLP

Layer = tuple[torch.Tensor, torch.Tensor]  # (weight, bias) of one nn.Linear


def linear_layer_names(model: MLP) -> list[tuple[str, str]]:
    """The parameter names ``(weight, bias)`` of each linear layer of ``model.net``,
    in order.

    Raises if the network is not linear layers with a ReLU between each two (the
    products below are written for exactly that).
    """
    modules = list(model.net)
    names = []
    for i, module in enumerate(modules):
        expected = nn.ReLU if i % 2 else nn.Linear
        if not isinstance(module, expected) or type(module) is not expected:
            raise ValueError(
                "mamllib.fast.mlp_products handles Linear-ReLU-...-Linear networks, "
                f"got {module!r} at net.{i}; use the reference path "
                "(mamllib.rl.metarl.meta_trpo_problem_reference) for this model"
            )
        if i % 2 == 0:
            names.append((f"net.{i}.weight", f"net.{i}.bias"))
    if len(modules) % 2 == 0:
        raise ValueError(
            f"the network must end with a linear layer, got {modules[-1]!r}; use "
            "mamllib.rl.metarl.meta_trpo_problem_reference for this model"
        )
    return names


@dataclass
class Trace:
    """What the products need from one forward pass: the input of every linear
    layer ``[n_tasks, n_samples, in]``, the on/off state of every hidden ReLU as
    0/1 ``[n_tasks, n_samples, width]`` (a float, to multiply by), the output."""

    inputs: list[torch.Tensor]
    active: list[torch.Tensor]
    output: torch.Tensor

    def tasks(self, index: slice) -> Trace:
        """The same for the tasks at ``index``."""
        return Trace(
            [a[index] for a in self.inputs],
            [d[index] for d in self.active],
            self.output[index],
        )


def tasks(layers: list[Layer], index: slice) -> list[Layer]:
    """The layers of the tasks at ``index``: per-task ones sliced, shared ones as
    they are."""
    return [(w[index], b[index]) if w.dim() == 3 else (w, b) for w, b in layers]


# Products over this many samples at a time keep their temporaries in the CPU's
# caches; whole meta-batches would stream each one through memory.
CHUNK_SAMPLES = 4096


def task_chunks(n_tasks: int, n_samples: int) -> list[slice]:
    """Consecutive groups of whole tasks of about :data:`CHUNK_SAMPLES` samples
    (``n_samples`` per task)."""
    per_chunk = max(1, CHUNK_SAMPLES // max(1, n_samples))
    return [slice(i, min(i + per_chunk, n_tasks)) for i in range(0, n_tasks, per_chunk)]


# Outputs at most this wide (the policy's mean) are computed transposed, as
# weight @ a^T: MKL's sgemm is several times slower writing a few long columns than
# a few long rows.
NARROW = 16


def _linear(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``a @ weight^T + bias`` for a shared or per-task layer."""
    n, s, width = a.shape
    if weight.shape[-2] <= NARROW:  # [n, out, s], returned as a [n, s, out] view
        w = weight.expand(n, *weight.shape[-2:])
        if bias is None:
            return torch.bmm(w, a.transpose(1, 2)).transpose(1, 2)
        b = bias.expand(n, bias.shape[-1]).unsqueeze(-1)
        return torch.baddbmm(b, w, a.transpose(1, 2)).transpose(1, 2)
    if weight.dim() == 2:  # one matrix product over all tasks' samples
        flat = a.reshape(n * s, width)
        out = flat @ weight.T if bias is None else torch.addmm(bias, flat, weight.T)
        return out.view(n, s, -1)
    if bias is None:
        return torch.bmm(a, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2))


def _add_linear_(out: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    """``out += a @ weight^T`` in place (``out`` as :func:`_linear` made it)."""
    if weight.shape[-2] <= NARROW:
        w = weight.expand(a.shape[0], *weight.shape[-2:])
        out.transpose(1, 2).baddbmm_(w, a.transpose(1, 2))
    elif weight.dim() == 2:
        out.view(-1, out.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), weight.T)
    else:
        out.baddbmm_(a, weight.transpose(1, 2))


def _backprop(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``delta @ weight``: a cotangent of a layer's output to one of its input."""
    n, s, width = delta.shape
    if weight.dim() == 2:
        return (delta.reshape(n * s, width) @ weight).view(n, s, -1)
    return torch.bmm(delta, weight)


def _add_backprop_(out: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor):
    """``out += delta @ weight`` in place."""
    if weight.dim() == 2:
        out.view(-1, out.shape[-1]).addmm_(delta.reshape(-1, delta.shape[-1]), weight)
    else:
        out.baddbmm_(delta, weight)


def _outer(delta: torch.Tensor, a: torch.Tensor, per_task: bool) -> torch.Tensor:
    """A weight's gradient, sum over samples of ``delta a^T``, per task or in all."""
    if per_task:
        return torch.bmm(delta.transpose(1, 2), a)
    return delta.reshape(-1, delta.shape[-1]).T @ a.reshape(-1, a.shape[-1])


def _add_outer_(out: torch.Tensor, delta: torch.Tensor, a: torch.Tensor) -> None:
    """``out += _outer(delta, a)`` in place (per task when ``out`` has a task axis)."""
    if out.dim() == 3:
        out.baddbmm_(delta.transpose(1, 2), a)
    else:
        out.addmm_(delta.reshape(-1, delta.shape[-1]).T, a.reshape(-1, a.shape[-1]))


def _sum(delta: torch.Tensor, per_task: bool) -> torch.Tensor:
    """A bias's gradient: the sum over samples, per task or in all."""
    return delta.sum(1) if per_task else delta.sum((0, 1))


def forward(layers: list[Layer], x: torch.Tensor) -> Trace:
    """The network on ``x`` ``[n_tasks, n_samples, in]``, keeping what the products
    need. The output is ``[n_tasks, n_samples, out]``."""
    inputs, active = [], []
    a = x
    for i, (weight, bias) in enumerate(layers):
        inputs.append(a)
        z = _linear(a, weight, bias)
        if i == len(layers) - 1:
            return Trace(inputs, active, z)
        # ReLU's derivative is 0 at 0, as autograd takes it.
        active.append((z > 0).to(z.dtype))
        a = z.relu_()
    raise ValueError("no layers")


def jvp(
    trace: Trace, layers: list[Layer], tangent: list[Layer]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """J u: the output's change ``[n_tasks, n_samples, out]`` along the parameter
    direction ``tangent`` (one ``(d weight, d bias)`` per layer), and the change of
    every layer's input (None for the data), which :func:`vjp_tangent` needs."""
    d_inputs: list[torch.Tensor | None] = [None]
    d_a = None
    for i, ((weight, _), (d_weight, d_bias), a) in enumerate(
        zip(layers, tangent, trace.inputs)
    ):
        d_z = _linear(a, d_weight, d_bias)
        if d_a is not None:
            _add_linear_(d_z, d_a, weight)
        if i == len(layers) - 1:
            return d_z, d_inputs
        d_a = d_z.mul_(trace.active[i])
        d_inputs.append(d_a)
    raise ValueError("no layers")


def vjp(
    trace: Trace,
    layers: list[Layer],
    cotangent: torch.Tensor,
    per_task: bool,
    keep_deltas: bool = False,
) -> tuple[list[Layer], list[torch.Tensor]]:
    """J^T c: the gradient of ``sum(cotangent * output)`` for every layer's
    ``(weight, bias)``, per task or summed over the tasks; with ``keep_deltas`` also
    the cotangent of every layer's output but the first's (what
    :func:`vjp_tangent` needs)."""
    grads: list[Layer] = [None] * len(layers)  # type: ignore[list-item]
    deltas: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]
    delta = cotangent
    for i in reversed(range(len(layers))):
        grads[i] = (_outer(delta, trace.inputs[i], per_task), _sum(delta, per_task))
        if keep_deltas and i:
            deltas[i] = delta
        if i:
            delta = _backprop(delta, layers[i][0]).mul_(trace.active[i - 1])
    return grads, deltas if keep_deltas else []


def vjp_tangent(
    trace: Trace,
    layers: list[Layer],
    deltas: list[torch.Tensor],
    tangent: list[Layer],
    d_inputs: list[torch.Tensor | None],
    d_cotangent: torch.Tensor,
    per_task: bool,
) -> list[Layer]:
    """The change of :func:`vjp`'s gradient when the parameters move along
    ``tangent`` (``d_inputs`` from :func:`jvp`) and the cotangent by
    ``d_cotangent``; ``deltas`` are the cotangents :func:`vjp` kept.

    For a loss l(output), with ``d_cotangent`` = l'' J u, this is the loss's
    Hessian-vector product H u (the network's second derivatives included).
    """
    grads: list[Layer] = [None] * len(layers)  # type: ignore[list-item]
    d_delta = d_cotangent
    for i in reversed(range(len(layers))):
        d_weight = _outer(d_delta, trace.inputs[i], per_task)
        if d_inputs[i] is not None:
            _add_outer_(d_weight, deltas[i], d_inputs[i])
        grads[i] = (d_weight, _sum(d_delta, per_task))
        if i:
            below = _backprop(d_delta, layers[i][0])
            _add_backprop_(below, deltas[i], tangent[i][0])
            d_delta = below.mul_(trace.active[i - 1])
    return grads
