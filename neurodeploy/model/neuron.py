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
layer of the same size (docs/benchmarks.md). Here the neuron is one
compiled (numba) pass over memory each way on the CPU
(``neuron_kernels.py``), and the same arithmetic in tensor operations
elsewhere. Both give SLAYER's spikes bit for bit (``tests/test_neuron.py``
checks). In training, the kernels also count spikes for a firing-rate
penalty and can apply the batch norm of the Linear layer before them, so
that neither needs a pass of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from . import neuron_kernels as kernels
from .batch_norm import batch_statistics, gradient_sums, norm_backward
from .spike_matmul import SPIKE_COUNT, SPIKES_UINT8

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

    @property
    def odd_keep(self) -> int:
        """Largest odd factor of the two decays' keep numerators
        (4096 - decay), at least 1: the compiled kernels' test for exact
        float32 state arithmetic needs it."""
        keeps = (DECAY_SCALE - self.current_decay,
                 DECAY_SCALE - self.voltage_decay)
        return max(1, *(keep >> _trailing_zeros(keep) for keep in keeps))

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


def _trailing_zeros(value: int) -> int:
    return (value & -value).bit_length() - 1 if value else 0


def _quantize_decay(decay: float) -> int:
    # SLAYER stores p_scale * decay as float32 and rounds half to even.
    scaled = torch.tensor([DECAY_SCALE * decay], dtype=torch.float32)
    return int(torch.round(scaled).clamp(0, DECAY_SCALE).item())


def cuba_lif(x: torch.Tensor, params: CubaParams) -> torch.Tensor:
    """Return the spikes of a CUBA-LIF population driven by input ``x``.

    ``x`` has shape (N, C, T), time last; the result has the same shape and
    is 0.0 or 1.0. State starts at zero. Differentiable in ``x``.
    """
    return cuba_lif_count(x, params)[0]


def cuba_lif_count(x: torch.Tensor, params: CubaParams,
                   norm: tuple | None = None, heads: tuple | None = None,
                   with_uint8: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the spikes and their total count, a scalar that is
    differentiable like the spikes (for a firing-rate penalty).

    ``x`` is (N, C, T), or an attention output (B, T, H, P, D), which is
    read where it lies. The spikes are (N, C, T), or, with ``heads =
    (batch, n_heads, parts)``, split for attention: (parts, B, T, H, P, D).

    With ``norm = (weight, bias, mean, invstd)``, the neurons are driven
    by the batch norm ``(x - mean) * invstd * weight + bias`` of (N, C, T)
    ``x`` with batch statistics ``mean`` and ``invstd``, computed in the
    neuron kernel and differentiable in ``x``, ``weight`` and ``bias`` as
    ``torch.nn.BatchNorm1d`` in training mode.

    With ``with_uint8`` on a CPU, (N, C, T) spikes carry a uint8 copy,
    (N, T, C), as the attribute ``SPIKES_UINT8`` (see ``spike_matmul``),
    written by the same kernel pass, and their count as ``SPIKE_COUNT``.
    """
    if x.dim() == 3:
        n, c, t = x.shape
        # (N, C, T) -> (N, T, C): time-major rows are contiguous, and a
        # Linear layer's output viewed as (N, C, T) already has this layout.
        x6 = x.transpose(1, 2).contiguous().view(1, n, t, 1, 1, c)
    elif x.dim() == 5 and norm is None:
        b, t, h, p, d = x.shape
        n, c = b * p, h * d
        x6 = x.contiguous().unsqueeze(0)
    else:
        raise ValueError(
            f"expected input of shape (N, C, T), or (B, T, H, P, D) without "
            f"a norm, got {tuple(x.shape)}"
        )
    if heads is None:
        out_shape = (1, n, t, 1, 1, c)
    else:
        batch, n_heads, parts = heads
        out_shape = (parts, batch, t, n_heads, n // batch,
                     c // parts // n_heads)
    weight, bias, mean, invstd = norm if norm is not None \
        else (None, None, None, None)

    spikes_u8 = x.new_empty(
        (n, t, c) if with_uint8 and heads is None and kernels.use_kernels(x)
        else 0,
        dtype=torch.uint8)
    spikes, count = _CubaFunction.apply(x6, weight, bias, mean, invstd,
                                        params, out_shape, spikes_u8)
    if heads is None:
        spikes = spikes.view(n, t, c).transpose(1, 2)
        if spikes_u8.numel():
            setattr(spikes, SPIKES_UINT8, spikes_u8)
            setattr(spikes, SPIKE_COUNT, int(count))
    return spikes, count


def as_rows(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes of either layout of ``cuba_lif_count`` as (N, C, T)."""
    if spikes.dim() == 3:
        return spikes
    return _rows(spikes).transpose(1, 2)


class _CubaFunction(torch.autograd.Function):
    """6-D input (see ``neuron_kernels``) -> (6-D spikes of ``out_shape``,
    spike count), with an optional fused batch norm."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, params, out_shape,
                spikes_u8):
        if weight is None:
            scale = x.new_ones(x.shape[0] * x.shape[3] * x.shape[5])
            shift = torch.zeros_like(scale)
        else:
            scale = weight.detach() * invstd
            shift = bias.detach() - mean * scale
        ctx.save_for_backward(x, scale, shift, weight, mean, invstd)
        ctx.params = params

        if not kernels.use_kernels(x):
            spikes, _ = _forward_torch(_rows(x) * scale + shift, params,
                                       False)
            return _unrows(spikes, out_shape), spikes.sum()
        spikes = x.new_empty(out_shape)
        counts = np.zeros(kernels.row_blocks(x.shape[1] * x.shape[4]),
                          np.int64)
        current_keep, voltage_keep, threshold_state = \
            params.kernel_args()[:3]
        kernels.forward_kernel(
            x.numpy().ravel(), tuple(x.shape), spikes.numpy().ravel(),
            tuple(out_shape), spikes_u8.numpy().ravel(), scale.numpy(),
            shift.numpy(), counts, current_keep, voltage_keep,
            threshold_state, params.odd_keep)
        return spikes, torch.tensor(float(counts.sum()), dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_spikes, grad_count):
        x, scale, shift, weight, mean, invstd = ctx.saved_tensors
        grad_spikes = grad_spikes.contiguous()
        with_norm = weight is not None

        if not kernels.use_kernels(x):
            rows = _rows(x)
            grad_rows = _backward_torch(_rows(grad_spikes) + grad_count,
                                        rows * scale + shift, ctx.params)
            sums = gradient_sums(grad_rows, rows)
            grad_x = _unrows(grad_rows, x.shape)
        else:
            grad_x, sums = _backward_cpu(grad_spikes, grad_count, x, scale,
                                         shift, with_norm, ctx.params)
        if not with_norm:
            return grad_x, None, None, None, None, None, None, None
        # In place: grad_x becomes the gradient of the norm's input.
        _, grad_weight, grad_bias = norm_backward(
            _rows(grad_x), sums, _rows(x), weight, mean, invstd,
            out=_rows(grad_x))
        return (grad_x, grad_weight, grad_bias, None, None, None, None,
                None)


def _rows(array6: torch.Tensor) -> torch.Tensor:
    """(S, B, T, H, P, D) -> (N, T, C) rows, a view for plain layouts."""
    s, b, t, h, p, d = array6.shape
    return array6.permute(1, 4, 2, 0, 3, 5).reshape(b * p, t, s * h * d)


def _unrows(rows: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Inverse of ``_rows``: (N, T, C) -> contiguous ``shape``."""
    s, b, t, h, p, d = shape
    split = rows.reshape(b, p, t, s, h, d)
    return split.permute(3, 0, 2, 4, 1, 5).contiguous()


def _backward_cpu(grad_spikes, grad_count, x, scale, shift, with_norm,
                  params):
    grad_x = torch.empty_like(x)
    n_blocks = kernels.row_blocks(x.shape[1] * x.shape[4])
    sums = np.zeros((n_blocks if with_norm else 0, 2, scale.shape[0]))
    current_keep, voltage_keep, threshold_state, threshold, tau_rho, \
        rho_peak = params.kernel_args()
    kernels.backward_kernel(
        grad_spikes.numpy().ravel(), tuple(grad_spikes.shape),
        float(grad_count),
        x.numpy().ravel(), tuple(x.shape), scale.numpy(), shift.numpy(),
        grad_x.numpy().ravel(), sums, n_blocks, current_keep, voltage_keep,
        threshold_state, params.odd_keep, threshold, 1.0 / tau_rho,
        rho_peak)
    return grad_x, torch.from_numpy(sums.sum(axis=0))


def _forward_torch(x, params, need_grad):
    """Tensor-operation version of the forward kernel (for GPUs).

    Returns the spikes and, with ``need_grad``, the surrogate derivative.
    """
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


def _backward_torch(grad_spikes, y, params):
    """Tensor-operation version of the backward kernel (for GPUs)."""
    _, surrogate = _forward_torch(y, params, True)
    current_keep, voltage_keep = params.kernel_args()[:2]
    grad_voltage = grad_spikes * surrogate
    grad_y = torch.empty_like(grad_spikes)
    voltage_grad = torch.zeros_like(grad_spikes[:, 0])
    current_grad = torch.zeros_like(grad_spikes[:, 0])
    for t in range(grad_spikes.shape[1] - 1, -1, -1):
        voltage_grad = voltage_keep * voltage_grad + grad_voltage[:, t]
        current_grad = current_keep * current_grad + voltage_grad
        grad_y[:, t] = current_grad
    return grad_y


class CubaLIF(torch.nn.Module):
    """A population of CUBA-LIF neurons with shared, fixed parameters.

    Shape: input (N, C, T) currents, output (N, C, T) spikes.
    """

    def __init__(self, params: CubaParams, feeds_linear: bool = False):
        super().__init__()
        self.params = params
        # Spikes for a SpikeLinear carry a uint8 copy for its integer GEMM.
        self.feeds_linear = feeds_linear
        self.rate: torch.Tensor | None = None  # mean firing rate, training

    def forward(self, x: torch.Tensor,
                norm: torch.nn.BatchNorm1d | None = None,
                heads: tuple | None = None) -> torch.Tensor:
        """Return the spikes of the population driven by ``x``, or by
        ``norm(x)``.

        A norm given here runs inside the neuron kernel; it must be a
        BatchNorm1d in training mode with running statistics. Layouts of
        ``x`` and ``heads`` as in ``cuba_lif_count``.
        """
        fused = None
        if norm is not None:
            fused = batch_statistics(norm, x.transpose(1, 2))
        spikes, count = cuba_lif_count(x, self.params, fused, heads,
                                       self.feeds_linear and self.training)
        self.rate = count / spikes.numel() if self.training else None
        return spikes

    def extra_repr(self) -> str:
        p = self.params
        return (f"threshold={p.threshold}, current_decay={p.current_decay}/4096"
                f", voltage_decay={p.voltage_decay}/4096")


def compile_kernels() -> None:
    """Compile the CPU kernels, or load them from numba's cache, on tiny
    inputs of the types training passes, so that no training step pays
    for it (16 s the first time, 0.3 s from the cache, on 2 cores)."""
    params = CubaParams(1.0, 1.0, 0.25)
    norm = torch.nn.BatchNorm1d(6)
    x = torch.zeros(2, 6, 2, requires_grad=True)  # (N, C, T)
    y = torch.zeros(1, 2, 1, 2, 6, requires_grad=True)  # (B, T, H, P, D)

    statistics = batch_statistics(norm, x.detach().transpose(1, 2))
    split, split_count = cuba_lif_count(x, params, statistics,
                                        heads=(1, 1, 3))
    plain, plain_count = cuba_lif_count(y, params, with_uint8=True)
    (split.sum() + split_count + plain.sum() + plain_count).backward()
