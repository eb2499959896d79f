"""Exact integer matrix product of spikes and 8-bit weights for training.

A SpikeLinear layer reads 0/1 spikes and SLAYER's 8-bit weights, which
are integers k in [-128, 127] times 1/32. Its forward product is then an
integer sum, and a uint8 x int8 GEMM with int32 accumulation computes it
exactly. In a training step on 2 AVX-512 cores it takes about half the
time of a float32 GEMM of the same size (docs/benchmarks.md).
The backward products take float gradients and stay in float32, so
training computes the same values as the float path (to float32 rounding
of the sums, which the integer path does not have).

The integer GEMM is oneDNN's quantised linear, ``torch.ops.onednn.
qlinear_pointwise`` (PyTorch 2.3 on x86). Where it is missing, or its
one-off check against float32 fails, the float path runs instead.

The weight gradient G^T S sums a row of G for every spike. Below a
firing rate of ``SPARSE_RATE`` a compiled kernel does only those sums,
which is faster than the dense float32 GEMM; a rate penalty in training
brings the rates of the demo model there within a few hundred steps.
"""

from __future__ import annotations

import functools
import logging
import sys

import numba
import numpy as np
import torch
import torch.nn.functional as F

# Imported before any kernel here compiles, for its numba settings
# (see neuron_kernels.prefer_wide_vectors).
from . import neuron_kernels  # noqa: F401

log = logging.getLogger(__name__)

# Attributes of a spike tensor that contain its uint8 copy, (N, T, C), and
# its number of spikes, when the neuron kernel wrote them
# (``neuron.cuba_lif_count``).
SPIKES_UINT8 = "neurodeploy_uint8"
SPIKE_COUNT = "neurodeploy_spike_count"
WEIGHT_STEP = 1 / 32  # SLAYER's quantize_8bit: mantissa steps of 2/64
K_MIN, K_MAX = -128, 127  # 8-bit signed mantissa (of 2/64), exponent 0
# Firing rate below which the sparse weight gradient beats the dense GEMM.
# On 2 Sapphire Rapids cores the two took equal time near 0.1 for (8192,
# 256) spikes and 128 outputs, and near 0.18 for (8192, 128) spikes and
# 384 outputs (docs/benchmarks.md).
SPARSE_RATE = 0.1
WEIGHT_GRAD_BLOCKS = 4  # row blocks, each with its own accumulator


def quantized_mantissa(weight: torch.Tensor) -> tuple[torch.Tensor,
                                                      torch.Tensor,
                                                      torch.Tensor]:
    """Return (k, weight_q, in_range) for a float32 CPU ``weight``.

    ``k`` is the int8 mantissa: weight rounded to k / 32 (half to even)
    and clamped to 8 bits. ``weight_q`` is k / 32 in float32, and
    ``in_range`` marks where the clamp lets the gradient through. One
    compiled pass replaces six tensor operations."""
    weight = weight.detach().contiguous()
    k = torch.empty(weight.shape, dtype=torch.int8)
    weight_q = torch.empty_like(weight)
    in_range = torch.empty(weight.shape, dtype=torch.bool)
    _quantize_kernel(weight.numpy().ravel(), k.numpy().ravel(),
                     weight_q.numpy().ravel(), in_range.numpy().ravel())
    return k, weight_q, in_range


@numba.njit(cache=True)
def _quantize_kernel(weight, k, weight_q, in_range):
    for i in range(weight.shape[0]):
        # Times 32 is exact in float32. np.round rounds half to even, as
        # torch.round in layers.quantize_weight does.
        scaled = np.round(weight[i] * np.float32(1 / WEIGHT_STEP))
        in_range[i] = K_MIN <= scaled <= K_MAX
        clamped = min(max(scaled, np.float32(K_MIN)), np.float32(K_MAX))
        k[i] = np.int8(clamped)
        weight_q[i] = clamped * np.float32(WEIGHT_STEP)


def spike_linear(spikes: torch.Tensor, weight: torch.Tensor,
                 spikes_u8: torch.Tensor | None = None,
                 n_spikes: int | None = None) -> torch.Tensor:
    """``spikes @ quantize(weight).T`` for 0/1 rows (M, C_in).

    Same value and gradients as ``F.linear(spikes, quantize_weight(
    weight))`` with the straight-through rounding of ``layers.
    quantize_weight``; exact in the forward pass where the integer GEMM
    is available. ``spikes_u8``, the same rows as uint8, saves converting
    them, and ``n_spikes``, their number of ones, saves counting them.
    """
    if spikes.device.type == "cpu" and integer_gemm_works():
        return _SpikeLinear.apply(spikes, weight, spikes_u8, n_spikes)
    from .layers import quantize_weight
    return F.linear(spikes, quantize_weight(weight))


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spikes, weight, spikes_u8, n_spikes):
        k, weight_q, in_range = quantized_mantissa(weight)
        if spikes_u8 is None:
            spikes_u8 = spikes.to(torch.uint8)
        if n_spikes is None:
            n_spikes = _count_spikes(spikes_u8.numpy().ravel())
        out = _integer_gemm(spikes_u8, k)
        # The uint8 spikes for a sparse weight gradient, else the float
        # spikes for the dense GEMM.
        ctx.sparse = n_spikes < SPARSE_RATE * spikes.numel()
        ctx.save_for_backward(spikes_u8 if ctx.sparse else spikes,
                              weight_q, in_range)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        spikes, weight_q, in_range = ctx.saved_tensors
        grad_spikes = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_spikes = grad_out @ weight_q
        if ctx.needs_input_grad[1]:
            if ctx.sparse:
                grad_weight = sparse_weight_grad(grad_out, spikes)
            else:
                grad_weight = grad_out.t() @ spikes
            grad_weight.mul_(in_range)
        return grad_spikes, grad_weight, None, None


def sparse_weight_grad(grad_out: torch.Tensor,
                       spikes_u8: torch.Tensor) -> torch.Tensor:
    """``grad_out.T @ spikes`` for (M, C_out) float32 gradients and
    (M, C_in) uint8 spikes, summing only where spikes are 1."""
    c_out, c_in = grad_out.shape[1], spikes_u8.shape[1]
    spikes = spikes_u8.contiguous().numpy()
    # 8 spikes per 64-bit word: at low rates most words are 0 and are
    # skipped in one test. The kernel reads the channels past the last
    # whole word one by one (all of them on a big-endian machine).
    whole = c_in - c_in % 8 if sys.byteorder == "little" else 0
    words = np.ascontiguousarray(spikes[:, :whole]).view(np.uint64)
    partial = np.empty((WEIGHT_GRAD_BLOCKS, c_in, c_out), np.float32)
    _weight_grad_kernel(grad_out.contiguous().numpy(), words, spikes,
                        partial)
    return torch.from_numpy(partial.sum(axis=0).T.copy())


@numba.njit(parallel=True, cache=True)
def _count_spikes(spikes):
    """Number of ones in flat uint8 spikes (torch's sum would first copy
    them to int64)."""
    count = 0
    for i in numba.prange(spikes.shape[0]):
        count += spikes[i]
    return count


@numba.njit(parallel=True, cache=True)
def _weight_grad_kernel(grad, words, spikes, partial):
    """Write, per row block, partial[block, i] = the sum of the grad rows
    whose spike i is 1. ``words`` contains the spikes 8 to a uint64 word,
    ``spikes`` the same spikes one per byte."""
    n_rows, c_in = spikes.shape
    n_words = words.shape[1]
    n_blocks = partial.shape[0]
    for block in numba.prange(n_blocks):
        total = partial[block]
        total[:] = 0.0
        inputs = np.empty(c_in, np.int64)
        for row in range(block * n_rows // n_blocks,
                         (block + 1) * n_rows // n_blocks):
            grad_row, words_row, spikes_row = grad[row], words[row], \
                spikes[row]
            # List the spiking inputs without a branch per input, because
            # inside a word that contains a spike such branches mispredict.
            n_spikes = 0
            for w in range(n_words):
                if words_row[w] == 0:
                    continue
                for i in range(8 * w, 8 * w + 8):
                    inputs[n_spikes] = i
                    n_spikes += spikes_row[i]
            for i in range(8 * n_words, c_in):
                inputs[n_spikes] = i
                n_spikes += spikes_row[i]
            for n in range(n_spikes):
                _add_row(total[inputs[n]], grad_row)


@numba.njit(inline="always")
def _add_row(total, row):
    for o in range(row.shape[0]):
        total[o] += row[o]


def _integer_gemm(spikes_u8: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(M, C_in) uint8 @ (C_out, C_in).T int8 -> float32, times 1/32."""
    packed = torch.ops.onednn.qlinear_prepack(k, list(spikes_u8.shape))
    scales, zero_points = _weight_quantization(k.shape[0])
    return torch.ops.onednn.qlinear_pointwise(
        spikes_u8.contiguous(), 1.0, 0, packed, scales, zero_points, None,
        1.0, 0, torch.float32, "none", [], "")


@functools.cache
def _weight_quantization(c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scales (1/32) and zero points (0) of the int8 weights."""
    return (torch.full((c_out,), WEIGHT_STEP),
            torch.zeros(c_out, dtype=torch.long))


@functools.cache
def integer_gemm_works() -> bool:
    """Tell whether the oneDNN integer GEMM exists here and is exact.

    Checked once per process on a product whose sums reach the int16
    range, against float64.
    """
    try:
        generator = torch.Generator().manual_seed(0)
        spikes = torch.rand(64, 320, generator=generator) < 0.5
        spikes[0] = True
        k = torch.randint(K_MIN, K_MAX + 1, (48, 320), generator=generator)
        k[0] = K_MAX
        expected = spikes.double() @ k.double().t() * WEIGHT_STEP
        got = _integer_gemm(spikes.to(torch.uint8), k.to(torch.int8))
        works = torch.equal(got.double(), expected)
    except (AttributeError, RuntimeError) as error:
        log.debug("integer GEMM unavailable: %s", error)
        return False
    if not works:
        log.warning("oneDNN's integer GEMM disagrees with float64 on this "
                    "machine; training uses float32 products instead")
    return works
