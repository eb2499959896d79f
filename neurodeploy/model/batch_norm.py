"""Training-mode batch norm fused into the neuron kernel or a residual add.

A BatchNorm1d between a Linear layer and CUBA-LIF neurons runs inside the
neuron kernels (``neuron.cuba_lif_count``). These functions compute its
batch statistics in one pass over the input and update the running ones.
They finish its backward pass from two sums that the neuron's backward
kernel accumulates. The norm at the end of a residual branch runs in the
same pass as the add to the stream (``add_batch_norm``). All follow
BatchNorm1d's training mode to float rounding: batch statistics for the
output, running statistics updated with the unbiased variance, gradients
through the statistics.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import nn

from . import neuron_kernels as kernels


def fusable(norm: nn.Module | None) -> bool:
    """Tell whether ``norm`` is a BatchNorm1d these functions can run."""
    return isinstance(norm, nn.BatchNorm1d) and norm.training \
        and norm.track_running_stats and norm.affine \
        and norm.momentum is not None


def batch_statistics(norm: nn.BatchNorm1d, x: torch.Tensor) -> tuple:
    """Return (weight, bias, mean, invstd) of ``norm`` on (N, T, C) ``x``
    and update its running statistics as BatchNorm1d.forward would."""
    if not fusable(norm):
        raise ValueError("a fused norm must be an affine BatchNorm1d in "
                         "training mode with running statistics and a "
                         "momentum")
    if kernels.use_kernels(x) and x.is_contiguous():
        return _batch_statistics_cpu(norm, x)
    with torch.no_grad():
        mean, var = _moments(x)
        n = x.shape[0] * x.shape[1]
        momentum = norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        norm.running_var.mul_(1 - momentum).add_(
            var, alpha=momentum * n / max(n - 1, 1))
        norm.num_batches_tracked.add_(1)
        invstd = torch.rsqrt(var + norm.eps)
    return norm.weight, norm.bias, mean, invstd


def _batch_statistics_cpu(norm: nn.BatchNorm1d, x: torch.Tensor) -> tuple:
    """``batch_statistics`` from the compiled sums kernel, with the
    per-channel arithmetic in numpy on the norm's CPU buffers: on (C,)
    vectors a numpy operation has less overhead than a torch one."""
    n = x.shape[0] * x.shape[1]
    total = _sums(x.detach(), x.detach()).numpy() / n
    mean = total[0].astype(np.float32)
    # With float64 sums, E[x^2] - E[x]^2 keeps float32 precision while
    # |mean| / std stays below about 10^4.
    var = np.maximum(total[1] - total[0] ** 2, 0.0).astype(np.float32)
    momentum = np.float32(norm.momentum)
    unbiased = np.float32(n / max(n - 1, 1))
    for buffer, value in ((norm.running_mean, mean),
                          (norm.running_var, var * unbiased)):
        running = buffer.numpy()
        running *= 1 - momentum
        running += momentum * value
    norm.num_batches_tracked.numpy()[...] += 1
    invstd = 1 / np.sqrt(var + np.float32(norm.eps))
    return norm.weight, norm.bias, torch.from_numpy(mean), \
        torch.from_numpy(invstd)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the mean and biased variance per channel of (N, T, C) x."""
    var, mean = torch.var_mean(x.reshape(-1, x.shape[2]), dim=0,
                               unbiased=False)
    return mean, var


def gradient_sums(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return the (2, C) float64 sums of grad and of grad * x over
    (N, T, C)."""
    if not kernels.use_kernels(grad):
        return torch.stack([grad.sum((0, 1)),
                            (grad * x).sum((0, 1))]).double()
    return _sums(grad, x)


def _sums(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n_blocks = kernels.row_blocks(x.shape[0])
    sums = np.zeros((n_blocks, 2, x.shape[2]))
    kernels.sums_kernel(x.numpy(), y.numpy(), sums, n_blocks)
    return torch.from_numpy(sums.sum(axis=0))


def norm_backward(grad_y, sums, x, weight, mean, invstd, out):
    """Run BatchNorm1d's training-mode backward pass.

    Returns (grad_x, grad_weight, grad_bias) from (N, T, C) ``grad_y`` and
    ``x`` and the (2, C) sums of grad_y and grad_y * x. grad_x goes to
    ``out``, which may be grad_y."""
    n = x.shape[0] * x.shape[1]
    on_cpu = kernels.use_kernels(x)
    # Per-channel arithmetic in float64: numpy's on the CPU (less overhead
    # per operation on (C,) vectors), torch's elsewhere.
    sums, weight, mean, invstd = (
        value.detach().numpy().astype(np.float64) if on_cpu
        else value.detach().double()
        for value in (sums, weight, mean, invstd))
    grad_bias = sums[0]
    # sum(grad_y * x_hat), with x_hat = (x - mean) * invstd
    grad_weight = invstd * (sums[1] - mean * sums[0])
    scale = weight * invstd
    slope = -scale * invstd * grad_weight / n
    offset = -scale * grad_bias / n - slope * mean
    scale, offset, slope, grad_weight, grad_bias = (
        torch.from_numpy(value).to(x.dtype) if on_cpu else value.to(x.dtype)
        for value in (scale, offset, slope, grad_weight, grad_bias))

    _affine(grad_y, x, scale, offset, slope, out)
    return out, grad_weight, grad_bias


def _affine(x, y, scale, offset, slope, out) -> None:
    """Write ``x * scale + offset + slope * y`` per channel to ``out``;
    all are (N, T, C) and ``out`` may be ``x``."""
    if not kernels.use_kernels(x):
        out.copy_(x * scale + offset + slope * y)
    else:
        kernels.affine_kernel(x.numpy(), y.numpy(), scale.numpy(),
                              offset.numpy(), slope.numpy(), out.numpy(),
                              kernels.row_blocks(x.shape[0]),
                              numba.get_num_threads())


def add_batch_norm(stream: torch.Tensor, x: torch.Tensor,
                   norm: nn.BatchNorm1d) -> torch.Tensor:
    """Return ``stream + norm(x)`` for (N, C, T) tensors stored time-major,
    as a residual branch adds its output to the stream.

    One pass writes the sum, where BatchNorm1d and the add would take
    two and write the normalised ``x`` in between. The norm is a
    BatchNorm1d in training mode (``fusable``) and updates its running
    statistics. Differentiable in ``stream``, ``x`` and the norm's
    weight and bias."""
    rows = x.transpose(1, 2).contiguous()  # (N, T, C), a view if stored so
    weight, bias, mean, invstd = batch_statistics(norm, rows)
    total = _AddBatchNorm.apply(stream.transpose(1, 2).contiguous(), rows,
                                weight, bias, mean, invstd)
    return total.transpose(1, 2)


class _AddBatchNorm(torch.autograd.Function):
    """(N, T, C) stream and norm input -> stream + batch norm."""

    @staticmethod
    def forward(ctx, stream, x, weight, bias, mean, invstd):
        scale = weight.detach() * invstd
        shift = bias.detach() - mean * scale
        total = torch.empty_like(x)
        _affine(x, stream, scale, shift, torch.ones_like(scale), total)
        ctx.save_for_backward(x, weight, mean, invstd)
        return total

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x, grad_weight, grad_bias = norm_backward(
            grad, gradient_sums(grad, x), x, weight, mean, invstd,
            out=torch.empty_like(x))
        # The stream passes through the add unchanged.
        return grad, grad_x, grad_weight, grad_bias, None, None
