"""Compiled CPU kernels of the CUBA-LIF neuron (see ``neuron.py``).

Arrays are time-major, (N, T, C): rows (batch x positions), time steps,
channels. The neuron's input is ``y = x * scale + shift`` per channel, in
float32, which is ``x`` itself for scale 1 and shift 0 and a batch norm
fused into the neuron otherwise.

On a CPU these kernels are limited by memory bandwidth, so each one makes
a single pass: the forward pass stores nothing but the spikes, and the
backward pass recomputes the voltages from the input instead of reading
them back. The loops over channels have no branches and vectorise; rows
are split into blocks that run in parallel.
"""

from __future__ import annotations

import numba
import numpy as np

STATE_SCALE = np.float32(1 << 12)  # SLAYER's s_scale (see neuron.py)
ROW_BLOCKS = 64  # parallel work items per call


def row_blocks(n_rows: int) -> int:
    return max(1, min(n_rows, ROW_BLOCKS))


@numba.njit(inline="always")
def _integrate_row(x_row, scale, shift, current, voltage, volts_out,
                   spikes_out, current_keep, voltage_keep, threshold_state):
    """SLAYER's integer CUBA dynamics for one row; returns its spike count.

    Writes the voltage before reset (in threshold units, float32) to
    ``volts_out`` and the spikes to ``spikes_out``, both (T, C).
    """
    n_steps, n_channels = x_row.shape
    current[:] = 0.0
    voltage[:] = 0.0
    count = 0
    for t in range(n_steps):
        x_t = x_row[t]
        for c in range(n_channels):
            y = x_t[c] * scale[c] + shift[c]
            # float32 * 4096 is exact, so this equals SLAYER's int cast.
            drive = np.trunc(y * STATE_SCALE)
            u = np.trunc(current[c] * current_keep) + drive
            v = np.trunc(voltage[c] * voltage_keep) + u
            fired = v > threshold_state
            current[c] = u
            voltage[c] = 0.0 if fired else v
            count += np.int64(fired)
            volts_out[t, c] = np.float32(v / 4096.0)
            spikes_out[t, c] = np.float32(1.0) if fired else np.float32(0.0)
    return count


@numba.njit(parallel=True, cache=True)
def forward_kernel(x, scale, shift, spikes, counts, current_keep,
                   voltage_keep, threshold_state):
    """Spikes of (N, T, C) inputs; spike counts per row block."""
    n_rows, n_steps, n_channels = x.shape
    n_blocks = counts.shape[0]
    for block in numba.prange(n_blocks):
        current = np.empty(n_channels)
        voltage = np.empty(n_channels)
        volts = np.empty((n_steps, n_channels), np.float32)  # not needed
        count = 0
        for row in range(block * n_rows // n_blocks,
                         (block + 1) * n_rows // n_blocks):
            count += _integrate_row(x[row], scale, shift, current, voltage,
                                    volts, spikes[row], current_keep,
                                    voltage_keep, threshold_state)
        counts[block] = count


@numba.njit(parallel=True, cache=True)
def backward_kernel(grad_spikes, grad_count, x, scale, shift, grad_y, sums,
                    n_blocks, current_keep, voltage_keep, threshold_state,
                    threshold, inv_tau_rho, rho_peak):
    """Gradient with respect to the neuron input y, (N, T, C).

    Back-propagates through spike, voltage and current as SLAYER does
    (surrogate rho_peak * exp(-|v - threshold| / tau_rho), no reset term).
    ``grad_count`` is the gradient of the spike count, added to every
    spike's. When ``sums`` (n_blocks, 2, C) has rows, it receives per
    block the sums of grad_y and of grad_y * x, which a fused norm needs.
    """
    n_rows, n_steps, n_channels = x.shape
    with_sums = sums.shape[0] > 0
    threshold = np.float32(threshold)
    inv_tau_rho = np.float32(inv_tau_rho)
    voltage_keep = np.float32(voltage_keep)
    current_keep = np.float32(current_keep)
    rho_peak = np.float32(rho_peak)
    grad_count = np.float32(grad_count)
    for block in numba.prange(n_blocks):
        current = np.empty(n_channels)
        voltage = np.empty(n_channels)
        volts = np.empty((n_steps, n_channels), np.float32)
        spikes = np.empty((n_steps, n_channels), np.float32)  # not needed
        voltage_grad = np.empty(n_channels, np.float32)
        current_grad = np.empty(n_channels, np.float32)
        mantissa = np.empty(n_channels, np.float32)
        exponent = np.empty(n_channels, np.int32)
        power = exponent.view(np.float32)
        for row in range(block * n_rows // n_blocks,
                         (block + 1) * n_rows // n_blocks):
            _integrate_row(x[row], scale, shift, current, voltage, volts,
                           spikes, current_keep, voltage_keep,
                           threshold_state)
            voltage_grad[:] = 0.0
            current_grad[:] = 0.0
            for t in range(n_steps - 1, -1, -1):
                _exp_neg(volts[t], threshold, inv_tau_rho, mantissa,
                         exponent)
                g_t, out_t = grad_spikes[row, t], grad_y[row, t]
                for c in range(n_channels):
                    surrogate = rho_peak * (mantissa[c] * power[c])
                    voltage_grad[c] = voltage_keep * voltage_grad[c] \
                        + (g_t[c] + grad_count) * surrogate
                    current_grad[c] = current_keep * current_grad[c] \
                        + voltage_grad[c]
                    out_t[c] = current_grad[c]
                if with_sums:
                    x_t = x[row, t]
                    for c in range(n_channels):
                        sums[block, 0, c] += out_t[c]
                        sums[block, 1, c] += out_t[c] * x_t[c]


@numba.njit(inline="always")
def _exp_neg(v, threshold, inv_tau, mantissa, exponent):
    """exp(-y), y = |v - threshold| * inv_tau, for a float32 row ``v``, as
    ``mantissa * exponent.view(float32)``.

    Cody-Waite reduction y = n ln 2 - r with |r| <= ln 2 / 2, a degree-6
    Taylor polynomial for exp(r) and 2**-n built from its IEEE-754 bits:
    relative error below 3e-6 (tests/test_neuron.py) for y <= 87, where
    float32 ends. Numba has no vectorised exp without Intel's SVML; this
    loop vectorises.
    """
    for c in range(v.shape[0]):
        yc = min(np.abs(v[c] - threshold) * inv_tau, np.float32(87.0))
        n = np.floor(yc * np.float32(1.4426950408889634) + np.float32(0.5))
        # ln 2 split in a short high part and a correction (Cody-Waite).
        r = n * np.float32(0.693359375) - yc + n * np.float32(-2.12194440e-4)
        mantissa[c] = np.float32(1.0) + r * (
            np.float32(1.0) + r * (np.float32(1 / 2) + r * (
                np.float32(1 / 6) + r * (np.float32(1 / 24) + r * (
                    np.float32(1 / 120) + r * np.float32(1 / 720))))))
        exponent[c] = (np.int32(127) - np.int32(n)) << 23


@numba.njit(parallel=True, cache=True)
def affine_kernel(grad_y, x, scale, offset, slope, n_blocks):
    """In place: grad_y = grad_y * scale + offset + slope * x, per channel
    (the batch-norm backward once its sums are known)."""
    n_rows, n_steps, n_channels = x.shape
    for block in numba.prange(n_blocks):
        for row in range(block * n_rows // n_blocks,
                         (block + 1) * n_rows // n_blocks):
            for t in range(n_steps):
                g_t, x_t = grad_y[row, t], x[row, t]
                for c in range(n_channels):
                    g_t[c] = g_t[c] * scale[c] + offset[c] + slope[c] * x_t[c]


@numba.njit(parallel=True, cache=True)
def moments_kernel(x, sums, n_blocks):
    """Per block, the sums of x and of x * x over rows and steps, in
    float64: ``sums`` (n_blocks, 2, C)."""
    n_rows, n_steps, n_channels = x.shape
    for block in numba.prange(n_blocks):
        for row in range(block * n_rows // n_blocks,
                         (block + 1) * n_rows // n_blocks):
            for t in range(n_steps):
                x_t = x[row, t]
                for c in range(n_channels):
                    value = np.float64(x_t[c])
                    sums[block, 0, c] += value
                    sums[block, 1, c] += value * value
