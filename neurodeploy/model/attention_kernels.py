"""Compiled CPU kernels of the spike attention for sparse Q, K and V.

The attention of ``snn.attend_heads`` multiplies 0/1 matrices: per time
step and head, S = Q K^T with the future keys zeroed, and Y = diag(r) S V
with a power-of-two scale r per query. Dense batched products cost the
same at any firing rate. Once a rate penalty has made the spikes sparse,
these kernels visit only the spikes and the pairs of positions that
share one.

Q, K and V are (3, M, P, D) float32 arrays of M (batch, step, head)
matrices with P positions and D <= 64 channels. Each row of Q, K and V
becomes a 64-bit mask of its spiking channels. Y is exact (sums of
integers times powers of two), as in the dense product; the gradients
equal the dense ones to float rounding.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# Imported before any kernel here compiles, for its numba settings
# (see neuron_kernels.prefer_wide_vectors).
from .neuron_kernels import ROW_BLOCKS

MAX_CHANNELS = 64  # one uint64 mask per row


@intrinsic
def _lowest_bit(typingctx, mask):
    """Return the index of the lowest set bit of a nonzero uint64 (LLVM's
    llvm.cttz, a single tzcnt on x86-64 CPUs with BMI1)."""
    if mask != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
            "llvm.cttz.i64")
        return builder.call(function, [args[0], ir.Constant(ir.IntType(1),
                                                              1)])

    return types.uint64(types.uint64), codegen


@numba.njit(inline="always")
def _row_masks(x, masks):
    """Write the mask of the nonzero channels of each row of (P, D) ``x``
    to ``masks`` (P,)."""
    for p in range(x.shape[0]):
        mask = np.uint64(0)
        row = x[p]
        for d in range(row.shape[0]):
            mask |= np.uint64(row[d] != 0.0) << np.uint64(d)
        masks[p] = mask


@numba.njit(inline="always")
def _columns(masks, columns, counts):
    """List, for each channel d, the rows whose mask has bit d, in
    ascending order: columns[d, :counts[d]]."""
    counts[:] = 0
    for j in range(masks.shape[0]):
        bits = masks[j]
        while bits:
            d = _lowest_bit(bits)
            columns[d, counts[d]] = j
            counts[d] += 1
            bits &= bits - np.uint64(1)


@numba.njit(inline="always")
def _scores(query, p, columns, counts, scores, touched):
    """Add S[p, j] = popcount(query & key_j) for the keys j <= p to
    ``scores`` (zero on entry) and list the keys with a nonzero score
    in ``touched``. Returns their number."""
    n_touched = 0
    bits = query
    while bits:
        d = _lowest_bit(bits)
        bits &= bits - np.uint64(1)
        for n in range(counts[d]):
            j = columns[d, n]
            if j > p:
                break
            if scores[j] == 0.0:
                touched[n_touched] = j
                n_touched += 1
            scores[j] += 1.0
    return n_touched


@numba.njit(inline="always")
def _scratch(n_positions, n_channels):
    """Allocate the per-thread arrays of ``_prepare`` and ``_scores``."""
    return (np.empty((3, n_positions), np.uint64),
            np.empty((n_channels, n_positions), np.int32),
            np.empty(n_channels, np.int32),
            np.zeros(n_positions, np.float32),
            np.empty(n_positions, np.int32))


@numba.njit(inline="always")
def _prepare(qkv, m, masks, columns, counts):
    """Write the masks of Q, K and V of matrix ``m`` and list the key
    columns."""
    for part in range(3):
        _row_masks(qkv[part, m], masks[part])
    _columns(masks[1], columns, counts)


@numba.njit(parallel=True, cache=True)
def sparse_attention_forward(qkv, row_scale, y):
    """Write Y = diag(row_scale) S V of every matrix to ``y`` (M, P, D)."""
    _, n_matrices, n_positions, n_channels = qkv.shape
    n_blocks = max(1, min(n_matrices, ROW_BLOCKS))
    for block in numba.prange(n_blocks):
        masks, columns, counts, scores, touched = \
            _scratch(n_positions, n_channels)
        for m in range(block * n_matrices // n_blocks,
                       (block + 1) * n_matrices // n_blocks):
            _prepare(qkv, m, masks, columns, counts)
            out = y[m]
            out[:] = 0.0
            for p in range(n_positions):
                n_touched = _scores(masks[0, p], p, columns, counts, scores,
                                    touched)
                for n in range(n_touched):
                    j = touched[n]
                    # Integers times a power of two: exact in any order.
                    weight = scores[j] * row_scale[p]
                    scores[j] = 0.0
                    bits = masks[2, j]
                    while bits:
                        out[p, _lowest_bit(bits)] += weight
                        bits &= bits - np.uint64(1)


@numba.njit(parallel=True, cache=True)
def sparse_attention_backward(qkv, row_scale, grad_y, grad):
    """Write the gradients of Q, K and V to ``grad`` (3, M, P, D) from
    ``grad_y`` (M, P, D), the gradient of Y.

    With G = diag(row_scale) grad_y and the score gradient GS[p, j] =
    G[p] . v_j for j <= p: grad V = S^T G, grad Q = GS K and grad K =
    GS^T Q. GS is formed only where v_j has a spike and k_j or q_p has
    one too."""
    _, n_matrices, n_positions, n_channels = qkv.shape
    n_blocks = max(1, min(n_matrices, ROW_BLOCKS))
    for block in numba.prange(n_blocks):
        masks, columns, counts, scores, touched = \
            _scratch(n_positions, n_channels)
        values = np.empty(n_positions, np.int32)  # keys with a V spike
        both = np.empty(n_positions, np.int32)  # ... and a K spike
        for m in range(block * n_matrices // n_blocks,
                       (block + 1) * n_matrices // n_blocks):
            _prepare(qkv, m, masks, columns, counts)
            n_values, n_both = _value_keys(masks[1], masks[2], values, both)
            grad[0, m] = 0.0
            grad[1, m] = 0.0
            grad[2, m] = 0.0
            for p in range(n_positions):
                _position_grads(qkv, m, p, row_scale[p], grad_y[m, p], masks,
                                columns, counts, scores, touched, values,
                                n_values, both, n_both, grad)


@numba.njit(inline="always")
def _value_keys(k_masks, v_masks, values, both):
    """List the keys whose V row has a spike in ``values`` and those whose
    K row has one as well in ``both``; return both counts."""
    n_values = n_both = 0
    for j in range(v_masks.shape[0]):
        if v_masks[j]:
            values[n_values] = j
            n_values += 1
            if k_masks[j]:
                both[n_both] = j
                n_both += 1
    return n_values, n_both


@numba.njit(inline="always")
def _position_grads(qkv, m, p, scale, g_row, masks, columns, counts, scores,
                    touched, values, n_values, both, n_both, grad):
    """Add the gradient terms of query position ``p`` of matrix ``m``."""
    query = masks[0, p]
    grad_v = grad[2, m]
    n_touched = _scores(query, p, columns, counts, scores, touched)
    for n in range(n_touched):
        j = touched[n]
        weight = scores[j] * scale
        scores[j] = 0.0
        v_grad_row = grad_v[j]
        for e in range(g_row.shape[0]):
            v_grad_row[e] += weight * g_row[e]

    # Without a Q spike at p, only keys with a K spike need GS[p, j].
    keys, n_keys = (values, n_values) if query else (both, n_both)
    grad_q, grad_k = grad[0, m], grad[1, m]
    for n in range(n_keys):
        j = keys[n]
        if j > p:
            break
        total = np.float32(0.0)
        bits = masks[2, j]
        while bits:
            total += g_row[_lowest_bit(bits)]
            bits &= bits - np.uint64(1)
        score_grad = total * scale
        bits = masks[1, j]
        while bits:
            grad_q[p, _lowest_bit(bits)] += score_grad
            bits &= bits - np.uint64(1)
        bits = query
        while bits:
            grad_k[j, _lowest_bit(bits)] += score_grad
            bits &= bits - np.uint64(1)
