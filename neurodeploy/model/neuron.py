"""CUBA-LIF neuron with lava-dl SLAYER's fixed-point arithmetic, made fast.

SLAYER (lava-dl 0.6.0, ``slayer.neuron.cuba``) integrates a neuron in
integer state units of ``S = 1 << 12`` per unit of threshold-scaled
voltage, and decays in units of ``1 << 12``::

    u[t] = trunc0(u[t-1] * (4096 - current_decay) / 4096) + trunc0(S * x[t])
    v[t] = trunc0(v[t-1] * (4096 - voltage_decay) / 4096) + u[t]
    s[t] = v[t] > S * threshold;  v[t] = 0 where s[t]

``trunc0`` rounds towards zero as Loihi's right shift does. SLAYER tests
``v >= threshold + 0.01 / S``, which for integer states is Loihi's
``v > threshold``; this module tests ``>`` directly. Its surrogate gradient
is ``scale_rho / (2 tau_rho) * exp(-|v - threshold| / tau_rho)`` with
``tau_rho = 100 tau_grad threshold`` and ``scale_rho = 0.1 scale_grad``,
and the leaky integrators are back-propagated without the reset term.

SLAYER steps through time with a Python loop of tensor operations, each a
full pass over the state, so on a CPU its neuron costs more than a Linear
layer of the same size (docs/benchmarks.md). Here the whole neuron is one compiled (numba) pass over
memory on the CPU, and the same arithmetic in tensor operations elsewhere.
Both give SLAYER's spikes bit for bit (``tests/test_neuron.py`` checks).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

STATE_SCALE = 1 << 12  # SLAYER's s_scale = scale (1 << 6) * (1 << 6)
DECAY_SCALE = 1 << 12  # SLAYER's p_scale: decays are 12-bit fractions
WEIGHT_SCALE = 1 << 6  # SLAYER's w_scale: thresholds are multiples of 1/64
TAU_RHO_MULT = 100  # slayer.neuron.cuba.TAU_RHO_MULT in lava-dl 0.6.0
SCALE_RHO_MULT = 0.1  # slayer.neuron.cuba.SCALE_RHO_MULT in lava-dl 0.6.0


class CubaParams:
    """Quantised CUBA parameters, exactly as SLAYER rounds them.

    ``threshold`` is in units of 1/64 (Loihi's ``vThMant`` over 64);
    ``current_decay`` and ``voltage_decay`` are integers out of 4096
    (Loihi's ``iDecay`` and ``vDecay``).
    """

    def __init__(self, threshold: float, current_decay: float,
                 voltage_decay: float, tau_grad: float = 1.0,
                 scale_grad: float = 1.0):
        self.threshold = int(threshold * WEIGHT_SCALE) / WEIGHT_SCALE
        self.current_decay = _quantize_decay(current_decay)
        self.voltage_decay = _quantize_decay(voltage_decay)
        self.tau_rho = tau_grad * self.threshold * TAU_RHO_MULT
        self.scale_rho = scale_grad * SCALE_RHO_MULT

    @property
    def threshold_state(self) -> float:
        """Threshold in integer state units: SLAYER's ``vThMant << 6``."""
        return self.threshold * STATE_SCALE

    def kernel_args(self) -> tuple[float, ...]:
        return (
            (DECAY_SCALE - self.current_decay) / DECAY_SCALE,
            (DECAY_SCALE - self.voltage_decay) / DECAY_SCALE,
            self.threshold_state,
            # SLAYER's spike function compares against threshold + 0.01 / S.
            self.threshold + 0.01 / STATE_SCALE,
            self.tau_rho,
            self.scale_rho / 2 / self.tau_rho,
        )


def _quantize_decay(decay: float) -> int:
    # SLAYER stores p_scale * decay as float32 and rounds half to even.
    scaled = torch.tensor([DECAY_SCALE * decay], dtype=torch.float32)
    return int(torch.round(scaled).clamp(0, DECAY_SCALE).item())


def cuba_lif(x: torch.Tensor, params: CubaParams) -> torch.Tensor:
    """Return the spikes of a CUBA-LIF population driven by input ``x``.

    ``x`` has shape (N, C, T), time last; the result has the same shape and
    is 0.0 or 1.0. State starts at zero. Differentiable in ``x``.
    """
    if x.dim() != 3:
        raise ValueError(
            f"expected input of shape (N, C, T), got {tuple(x.shape)}"
        )
    return _CubaFunction.apply(x, params)


class _CubaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params):
        # (N, C, T) -> (N, T, C): time-major rows are contiguous, and a
        # Linear layer's output viewed as (N, C, T) already has this layout.
        x_ntc = x.transpose(1, 2).contiguous()
        need_grad = ctx.needs_input_grad[0]

        if x_ntc.is_cuda:
            spikes, surrogate = _forward_torch(x_ntc, params, need_grad)
        else:
            spikes = torch.empty_like(x_ntc)
            surrogate = torch.empty_like(x_ntc) if need_grad else spikes
            _forward_kernel(x_ntc.numpy(), spikes.numpy(), surrogate.numpy(),
                            need_grad, *params.kernel_args())

        ctx.params = params
        if need_grad:
            ctx.save_for_backward(surrogate)
        return spikes.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_spikes):
        (surrogate,) = ctx.saved_tensors
        params = ctx.params
        grad_ntc = grad_spikes.transpose(1, 2).contiguous()
        current_keep, voltage_keep = params.kernel_args()[:2]

        if grad_ntc.is_cuda:
            grad_x = _backward_torch(grad_ntc, surrogate, current_keep,
                                     voltage_keep)
        else:
            grad_x = torch.empty_like(grad_ntc)
            _backward_kernel(grad_ntc.numpy(), surrogate.numpy(),
                             grad_x.numpy(), current_keep, voltage_keep)
        return grad_x.transpose(1, 2), None


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(x, spikes, surrogate, need_grad, current_keep,
                    voltage_keep, threshold_state, threshold, tau_rho,
                    rho_peak):
    """Integrate (N, T, C) inputs; write spikes and surrogate derivatives."""
    n_rows, n_steps, n_channels = x.shape
    for row in numba.prange(n_rows):
        current = np.zeros(n_channels)
        voltage = np.zeros(n_channels)
        for t in range(n_steps):
            for c in range(n_channels):
                # float32 * 4096 is exact, so this equals SLAYER's int cast.
                drive = np.trunc(np.float32(x[row, t, c] * np.float32(4096.0)))
                current[c] = np.trunc(current[c] * current_keep) + drive
                voltage[c] = np.trunc(voltage[c] * voltage_keep) + current[c]
                if need_grad:
                    scaled = np.float32(voltage[c] / 4096.0)
                    surrogate[row, t, c] = rho_peak * math.exp(
                        -abs(scaled - threshold) / tau_rho)
                if voltage[c] > threshold_state:
                    spikes[row, t, c] = 1.0
                    voltage[c] = 0.0
                else:
                    spikes[row, t, c] = 0.0


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(grad_spikes, surrogate, grad_x, current_keep,
                     voltage_keep):
    """Back-propagate through spike, voltage and current (no reset term)."""
    n_rows, n_steps, n_channels = grad_spikes.shape
    for row in numba.prange(n_rows):
        voltage_grad = np.zeros(n_channels)
        current_grad = np.zeros(n_channels)
        for t in range(n_steps - 1, -1, -1):
            for c in range(n_channels):
                g = grad_spikes[row, t, c] * surrogate[row, t, c]
                voltage_grad[c] = voltage_keep * voltage_grad[c] + g
                current_grad[c] = current_keep * current_grad[c] \
                    + voltage_grad[c]
                grad_x[row, t, c] = current_grad[c]


def _forward_torch(x, params, need_grad):
    """Tensor-operation version of ``_forward_kernel`` (for GPUs)."""
    current_keep, voltage_keep, threshold_state, threshold, tau_rho, \
        rho_peak = params.kernel_args()
    drive = torch.trunc(x * STATE_SCALE).double()
    current = torch.zeros_like(drive[:, 0])
    voltage = torch.zeros_like(drive[:, 0])
    spikes = torch.empty_like(x)
    surrogate = torch.empty_like(x) if need_grad else spikes

    for t in range(x.shape[1]):
        current = torch.trunc(current * current_keep) + drive[:, t]
        voltage = torch.trunc(voltage * voltage_keep) + current
        if need_grad:
            scaled = (voltage / STATE_SCALE).float()
            surrogate[:, t] = rho_peak * torch.exp(
                -(scaled - threshold).abs() / tau_rho)
        fired = voltage > threshold_state
        spikes[:, t] = fired.float()
        voltage = voltage.masked_fill(fired, 0.0)
    return spikes, surrogate


def _backward_torch(grad_spikes, surrogate, current_keep, voltage_keep):
    """Tensor-operation version of ``_backward_kernel`` (for GPUs)."""
    grad_voltage = grad_spikes * surrogate
    grad_x = torch.empty_like(grad_spikes)
    voltage_grad = torch.zeros_like(grad_spikes[:, 0])
    current_grad = torch.zeros_like(grad_spikes[:, 0])
    for t in range(grad_spikes.shape[1] - 1, -1, -1):
        voltage_grad = voltage_keep * voltage_grad + grad_voltage[:, t]
        current_grad = current_keep * current_grad + voltage_grad
        grad_x[:, t] = current_grad
    return grad_x


class CubaLIF(torch.nn.Module):
    """A population of CUBA-LIF neurons with shared, fixed parameters.

    Shape: input (N, C, T) currents, output (N, C, T) spikes.
    """

    def __init__(self, params: CubaParams):
        super().__init__()
        self.params = params
        self.rate: torch.Tensor | None = None  # mean firing rate, training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = cuba_lif(x, self.params)
        self.rate = spikes.mean() if self.training else None
        return spikes

    def extra_repr(self) -> str:
        p = self.params
        return (f"threshold={p.threshold}, current_decay={p.current_decay}/4096"
                f", voltage_decay={p.voltage_decay}/4096")
