"""Compiled CPU kernels of the CUBA-LIF neuron (see ``neuron.py``).

Inputs, spikes and gradients are C-contiguous 6-D arrays (S, B, T, H, P,
D), passed flat with their shape: row ``b * P + p`` of the population,
time step ``t`` and channel ``(s * H + h) * D + d``. A plain time-major
(N, T, C) tensor is (1, N, T, 1, 1, C); the Q|K|V spikes of an attention
layer split into heads are (3, B, T, H, P, D), the layout its matrix
products read, so that the attention needs no copy of its own. A kernel
works on one row at a time as (T, C). Where a layout is split, it
gathers each block of rows into scratch memory first, or scatters it
from there afterwards.

The neuron's input is ``y = x * scale + shift`` per channel, in float32,
which is ``x`` itself for scale 1 and shift 0 and a batch norm fused into
the neuron otherwise.

On a CPU these kernels run close to the memory-bandwidth limit, so each
one makes a single pass. The forward pass stores nothing but the spikes,
and the backward pass recomputes the voltages from the input instead of
reading them back. The loops over channels have no branches and
vectorise, and rows are split into blocks that run in parallel.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

STATE_SCALE = np.float32(1 << 12)  # SLAYER's s_scale (see neuron.py)
ROW_BLOCKS = 64  # parallel work items per call
# float32 represents every integer up to 2**24 exactly.
FLOAT32_EXACT = 1 << 24


def prefer_wide_vectors() -> None:
    """Let LLVM vectorise with 512-bit registers on CPUs with AVX-512.

    LLVM's tuning for Intel cores with AVX-512 prefers 256-bit vectors
    (its ``prefer-256-bit`` feature). These kernels gain from 512-bit
    ones: on 2 Sapphire Rapids cores the SNN/ANN throughput ratio of
    ``benchmarks/train_bench.py`` rose from 0.198 to 0.218. This takes
    effect only before numba compiles or loads its first function in the
    process, and a ``NUMBA_CPU_FEATURES`` set by the user wins.
    """
    if numba.config.CPU_FEATURES is not None:
        return
    if "+avx512f" in host_cpu_features():
        numba.config.CPU_FEATURES = get_host_cpu_features() \
            + ",-prefer-256-bit"


def host_cpu_features() -> set[str]:
    """Return LLVM's names of this CPU's features, such as '+avx512f'."""
    return set(get_host_cpu_features().split(","))


prefer_wide_vectors()


def use_kernels(tensor) -> bool:
    """Tell whether ``tensor`` goes through these kernels: CPU tensors do,
    others take the tensor-operation versions in neuron.py and
    batch_norm.py."""
    return tensor.device.type == "cpu"


def row_blocks(n_rows: int) -> int:
    """Return the number of parallel row blocks for ``n_rows`` rows."""
    return max(1, min(n_rows, ROW_BLOCKS))


@numba.njit(inline="always")
def _block_range(block, n_rows, n_blocks):
    """Return the first and one-past-last row of row block ``block``."""
    return block * n_rows // n_blocks, (block + 1) * n_rows // n_blocks


@numba.njit(inline="always")
def _is_plain(shape) -> bool:
    return shape[0] * shape[3] * shape[4] == 1


@numba.njit(inline="always")
def _plain_row(array, shape, row):
    """Row ``row`` of a plain (1, N, T, 1, 1, C) flat array, as (T, C)."""
    size = shape[2] * shape[5]
    return array[row * size:(row + 1) * size].reshape((shape[2], shape[5]))


@numba.njit(inline="always")
def _copy_block(array, shape, first, last, block, to_block):
    """Copy rows ``first`` to ``last`` - 1 of a split flat 6-D array to
    ``block`` (rows, T, C), or back with ``to_block`` False.

    Walks the split array in its own order: part, step, head, then row.
    Consecutive rows of one (part, step, head) lie next to each other
    there. The runs of one row lie at strides of powers of two instead,
    which would all fall into the same cache set. Offsets are unsigned,
    which spares the loops numba's negative-index checks."""
    n_parts, n_batch, n_steps, n_heads, n_positions, d_head = shape
    for s in range(n_parts):
        for t in range(n_steps):
            for h in range(n_heads):
                channel = np.uint64((s * n_heads + h) * d_head)
                for row in range(first, last):
                    b, p = row // n_positions, row % n_positions
                    offset = np.uint64(((((s * n_batch + b) * n_steps + t)
                                         * n_heads + h) * n_positions + p)
                                       * d_head)
                    values = block[row - first, t]
                    if to_block:
                        for d in range(d_head):
                            values[channel + np.uint64(d)] = \
                                array[offset + np.uint64(d)]
                    else:
                        for d in range(d_head):
                            array[offset + np.uint64(d)] = \
                                values[channel + np.uint64(d)]


@numba.njit(inline="always")
def _integrate_row(x, scale, shift, current, voltage, over_limit, volts,
                   spikes, spikes_u8, current_keep, voltage_keep,
                   threshold_state, limit):
    """Integrate one (T, C) row with SLAYER's integer CUBA dynamics.

    Writes the spikes (float32 and uint8) and the voltage before reset
    (in threshold units, float32) to (T, C) arrays. Returns the number of
    inputs with |y| >= ``limit``, counted per channel in the int32
    scratch array ``over_limit`` first. The state arithmetic runs in the
    type of ``current``, ``voltage`` and the constants: float64 is exact
    for states below 2**53, float32 while no input reaches
    ``_float32_limit``."""
    n_steps, n_channels = x.shape
    current[:] = 0.0
    voltage[:] = 0.0
    over_limit[:] = 0
    for t in range(n_steps):
        x_t, volts_t, spikes_t, u8_t = x[t], volts[t], spikes[t], \
            spikes_u8[t]
        for c in range(n_channels):
            y = x_t[c] * scale[c] + shift[c]
            # A count per channel: numba types a scalar count as a 64-bit
            # integer, which halves the vector width of the loop, and a
            # float max would not vectorise without fastmath.
            over_limit[c] += np.int32(np.abs(y) >= limit)
            # float32 * 4096 is exact: this equals SLAYER's int cast.
            drive = np.trunc(y * STATE_SCALE)
            u = np.trunc(current[c] * current_keep) + drive
            v = np.trunc(voltage[c] * voltage_keep) + u
            fired = v > threshold_state
            current[c] = u
            voltage[c] = 0.0 if fired else v
            # Scaling by 2**-12 is exact, so both state types give the
            # same float32 voltage.
            volts_t[c] = np.float32(v) * np.float32(1 / STATE_SCALE)
            spikes_t[c] = np.float32(1.0) if fired else np.float32(0.0)
            u8_t[c] = np.uint8(fired)
    return over_limit.sum()


@numba.njit(inline="always")
def _add_spikes(counts, spikes_u8):
    """Add the spikes of a (T, C) uint8 row to the int32 ``counts`` of
    its channels."""
    for t in range(spikes_u8.shape[0]):
        row = spikes_u8[t]
        for c in range(row.shape[0]):
            counts[c] += np.int32(row[c])


@numba.njit(inline="always")
def _float32_limit(n_steps, odd_keep):
    """Return the bound on |y| below which float32 integrates a row of
    ``n_steps`` steps exactly.

    With D = max |trunc(4096 y)| over the row, |u| <= T D and |v| <= T^2 D
    (the decays only shrink the state). A product state * keep, with keep
    = m / 4096 and m = ``odd_keep`` times a power of two, is then exact
    while T^2 D ``odd_keep`` < 2**24, and so are the sums."""
    exact_limit = FLOAT32_EXACT / (STATE_SCALE * n_steps * n_steps * odd_keep)
    # Rounded down, so that |y| below it keeps the bound.
    return np.float32(exact_limit * (1.0 - 2.0**-20))


@numba.njit(inline="always")
def _integrate_exact(x, scale, shift, state32, state64, over_limit, volts,
                     spikes, spikes_u8, keeps, threshold_state, odd_keep):
    """``_integrate_row`` in float32 (16 lanes per AVX-512 vector instead
    of 8), again in float64 for a row where float32 was not exact.
    ``state32`` and ``state64`` are (2, C) scratch arrays, ``over_limit``
    a (C,) int32 one, ``keeps`` the two decays' keep factors."""
    too_large = _integrate_row(
        x, scale, shift, state32[0], state32[1], over_limit, volts, spikes,
        spikes_u8, np.float32(keeps[0]), np.float32(keeps[1]),
        np.float32(threshold_state), _float32_limit(x.shape[0], odd_keep))
    if too_large > 0:
        _integrate_row(
            x, scale, shift, state64[0], state64[1], over_limit, volts,
            spikes, spikes_u8, np.float64(keeps[0]), np.float64(keeps[1]),
            np.float64(threshold_state), np.float32(np.inf))


@numba.njit(parallel=True, cache=True)
def forward_kernel(x, x_shape, spikes, spikes_shape, spikes_u8, scale,
                   shift, counts, current_keep, voltage_keep,
                   threshold_state, odd_keep):
    """Write the spikes of flat 6-D inputs to flat 6-D ``spikes`` and the
    spike count of each row block to ``counts``. A non-empty ``spikes_u8``
    receives the spikes of a plain layout once more, as uint8."""
    n_rows = x_shape[1] * x_shape[4]
    n_steps, n_channels = x_shape[2], scale.shape[0]
    x_plain, spikes_plain = _is_plain(x_shape), _is_plain(spikes_shape)
    n_blocks = counts.shape[0]
    block_rows = -(-n_rows // n_blocks)
    for block in numba.prange(n_blocks):
        first, last = _block_range(block, n_rows, n_blocks)
        state32 = np.empty((2, n_channels), np.float32)
        state64 = np.empty((2, n_channels), np.float64)
        over_limit = np.empty(n_channels, np.int32)
        channel_counts = np.zeros(n_channels, np.int32)
        volts = np.empty((n_steps, n_channels), np.float32)  # unused here
        scratch_u8 = np.empty((n_steps, n_channels), np.uint8)
        x_block = np.empty((0 if x_plain else block_rows, n_steps,
                            n_channels), np.float32)
        spikes_block = np.empty((0 if spikes_plain else block_rows, n_steps,
                                 n_channels), np.float32)
        if not x_plain:
            _copy_block(x, x_shape, first, last, x_block, True)
        for row in range(first, last):
            x_row = _plain_row(x, x_shape, row) if x_plain \
                else x_block[row - first]
            spikes_row = _plain_row(spikes, spikes_shape, row) \
                if spikes_plain else spikes_block[row - first]
            row_u8 = _plain_row(spikes_u8, spikes_shape, row) \
                if spikes_u8.shape[0] > 0 else scratch_u8
            _integrate_exact(x_row, scale, shift, state32, state64,
                             over_limit, volts, spikes_row, row_u8,
                             (current_keep, voltage_keep), threshold_state,
                             odd_keep)
            _add_spikes(channel_counts, row_u8)
        if not spikes_plain:
            _copy_block(spikes, spikes_shape, first, last, spikes_block,
                        False)
        counts[block] = channel_counts.sum()


@numba.njit(parallel=True, cache=True)
def backward_kernel(grad_spikes, grad_shape, grad_count, x, x_shape, scale,
                    shift, grad_x, sums, n_blocks, current_keep,
                    voltage_keep, threshold_state, odd_keep, threshold,
                    inv_tau_rho, rho_peak):
    """Write the gradient of the neuron input to ``grad_x`` (layout of x).

    Back-propagates through spike, voltage and current as SLAYER does
    (surrogate rho_peak * exp(-|v - threshold| / tau_rho), no reset term).
    ``grad_count`` is the gradient of the spike count, added to every
    spike's. When ``sums`` (n_blocks, 2, C) has rows, it receives per
    block the sums of grad_y and of grad_y * x, which a fused norm needs.
    """
    n_rows = x_shape[1] * x_shape[4]
    n_steps, n_channels = x_shape[2], scale.shape[0]
    x_plain, grad_plain = _is_plain(x_shape), _is_plain(grad_shape)
    with_sums = sums.shape[0] > 0
    threshold = np.float32(threshold)
    inv_tau_rho = np.float32(inv_tau_rho)
    voltage_grad_keep = np.float32(voltage_keep)
    current_grad_keep = np.float32(current_keep)
    rho_peak = np.float32(rho_peak)
    grad_count = np.float32(grad_count)
    block_rows = -(-n_rows // n_blocks)
    for block in numba.prange(n_blocks):
        first, last = _block_range(block, n_rows, n_blocks)
        state32 = np.empty((2, n_channels), np.float32)
        state64 = np.empty((2, n_channels), np.float64)
        over_limit = np.empty(n_channels, np.int32)
        row_sums = np.empty((2, n_channels), np.float32)
        volts = np.empty((n_steps, n_channels), np.float32)
        spikes = np.empty((n_steps, n_channels), np.float32)  # unused here
        scratch_u8 = np.empty((n_steps, n_channels), np.uint8)  # unused
        x_block = np.empty((0 if x_plain else block_rows, n_steps,
                            n_channels), np.float32)
        out_block = np.empty_like(x_block)
        grad_block = np.empty((0 if grad_plain else block_rows, n_steps,
                               n_channels), np.float32)
        voltage_grad = np.empty(n_channels, np.float32)
        current_grad = np.empty(n_channels, np.float32)
        mantissa = np.empty(n_channels, np.float32)
        exponent = np.empty(n_channels, np.int32)
        power = exponent.view(np.float32)
        if not x_plain:
            _copy_block(x, x_shape, first, last, x_block, True)
        if not grad_plain:
            _copy_block(grad_spikes, grad_shape, first, last, grad_block,
                        True)
        for row in range(first, last):
            if x_plain:
                x_row = _plain_row(x, x_shape, row)
                out_row = _plain_row(grad_x, x_shape, row)
            else:
                x_row, out_row = x_block[row - first], out_block[row - first]
            grad_row = _plain_row(grad_spikes, grad_shape, row) \
                if grad_plain else grad_block[row - first]
            _integrate_exact(x_row, scale, shift, state32, state64,
                             over_limit, volts, spikes, scratch_u8,
                             (current_keep, voltage_keep), threshold_state,
                             odd_keep)
            voltage_grad[:] = 0.0
            current_grad[:] = 0.0
            row_sums[:] = 0.0
            for t in range(n_steps - 1, -1, -1):
                _exp_neg(volts[t], threshold, inv_tau_rho, mantissa,
                         exponent)
                g_t, out_t = grad_row[t], out_row[t]
                for c in range(n_channels):
                    surrogate = rho_peak * (mantissa[c] * power[c])
                    voltage_grad[c] = voltage_grad_keep * voltage_grad[c] \
                        + (g_t[c] + grad_count) * surrogate
                    current_grad[c] = current_grad_keep * current_grad[c] \
                        + voltage_grad[c]
                    out_t[c] = current_grad[c]
                if with_sums:
                    x_t = x_row[t]
                    for c in range(n_channels):
                        row_sums[0, c] += out_t[c]
                        row_sums[1, c] += out_t[c] * x_t[c]
            if with_sums:
                # float32 over one row's T steps, float64 across rows.
                for c in range(n_channels):
                    sums[block, 0, c] += row_sums[0, c]
                    sums[block, 1, c] += row_sums[1, c]
        if not x_plain:
            _copy_block(grad_x, x_shape, first, last, out_block, False)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in float32 with one rounding (LLVM's llvm.fma, one
    vector instruction on CPUs with FMA). numba contracts a * b + c into
    it only under fastmath, which would also reorder other float math."""
    if not all(arg == types.float32 for arg in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(function, args)

    return types.float32(types.float32, types.float32, types.float32), \
        codegen


@numba.njit(inline="always")
def _exp_neg(v, threshold, inv_tau, mantissa, exponent):
    """Compute exp(-y), y = |v - threshold| * inv_tau, for a float32 row
    ``v``, as ``mantissa * exponent.view(float32)``.

    Cody-Waite reduction y = n ln 2 - r with |r| <= ln 2 / 2, a degree-6
    Taylor polynomial for exp(r) in fused multiply-adds (Horner's scheme)
    and 2**-n built from its IEEE-754 bits:
    relative error below 3e-6 (tests/test_neuron.py) for y <= 87, where
    float32 ends. Numba has no vectorised exp without Intel's SVML; this
    loop vectorises.
    """
    for c in range(v.shape[0]):
        yc = min(np.abs(v[c] - threshold) * inv_tau, np.float32(87.0))
        n = np.floor(yc * np.float32(1.4426950408889634) + np.float32(0.5))
        # ln 2 split in a short high part and a correction (Cody-Waite).
        r = _fma(n, np.float32(-2.12194440e-4),
                 _fma(n, np.float32(0.693359375), -yc))
        p = _fma(r, np.float32(1 / 720), np.float32(1 / 120))
        p = _fma(p, r, np.float32(1 / 24))
        p = _fma(p, r, np.float32(1 / 6))
        p = _fma(p, r, np.float32(1 / 2))
        p = _fma(p, r, np.float32(1.0))
        mantissa[c] = _fma(p, r, np.float32(1.0))
        exponent[c] = (np.int32(127) - np.int32(n)) << 23


@numba.njit(parallel=True, cache=True)
def affine_kernel(x, y, scale, offset, slope, out, n_blocks, n_threads):
    """Write out = x * scale + offset + slope * y per channel.

    All arrays are (N, T, C), and ``out`` may be ``x``. This is the
    batch-norm backward pass once its sums are known, and the forward pass
    of a norm added to the residual stream. Each of the ``n_threads``
    threads walks its rows backwards (``_reversed_block``)."""
    n_rows, n_steps, n_channels = x.shape
    for index in numba.prange(n_blocks):
        block = _reversed_block(index, n_blocks, n_threads)
        first, last = _block_range(block, n_rows, n_blocks)
        for row in range(last - 1, first - 1, -1):
            for t in range(n_steps):
                x_t, y_t, out_t = x[row, t], y[row, t], out[row, t]
                for c in range(n_channels):
                    out_t[c] = x_t[c] * scale[c] + offset[c] \
                        + slope[c] * y_t[c]


@numba.njit(inline="always")
def _reversed_block(index, n_blocks, n_threads):
    """Map the ``index``-th iteration of a parallel loop over blocks to
    the blocks of its thread's share in reverse order.

    By default numba 0.61 splits a parallel loop into one contiguous range
    of iterations per thread (``get_sched_size`` and ``do_scheduling`` in
    ``numba/parfors/parfor_lowering.py``, chunk size 0). A pass that
    follows another over the same rows (the sums of a batch norm, then its
    affine pass) then starts with the rows that the same core touched
    last, which are still in its L2 cache. Another schedule only changes
    the order, not the result."""
    share = -(-n_blocks // n_threads)
    first = index // share * share
    return first + min(share, n_blocks - first) - 1 - (index - first)


@numba.njit(parallel=True, cache=True)
def sums_kernel(x, y, sums, n_blocks):
    """Sum x and x * y over rows and steps, per block, in float64.

    ``x`` and ``y`` are (N, T, C), ``sums`` is (n_blocks, 2, C)."""
    n_rows, n_steps, n_channels = x.shape
    for block in numba.prange(n_blocks):
        first, last = _block_range(block, n_rows, n_blocks)
        for row in range(first, last):
            for t in range(n_steps):
                x_t, y_t = x[row, t], y[row, t]
                for c in range(n_channels):
                    value = np.float64(x_t[c])
                    sums[block, 0, c] += value
                    sums[block, 1, c] += value * y_t[c]
