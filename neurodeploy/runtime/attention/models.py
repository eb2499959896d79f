"""Fixed-point and floating-point ProcessModels of ``SpikeAttention``.

Import this module only after ``neurodeploy.lava_compat.prepare_lava_import``.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Lava's compiler loads this file by its path, outside the package, so the
# import must be absolute.
from neurodeploy.runtime.attention.process import SpikeAttention

DECAY_SHIFT = 12  # decays are fractions of 4096
STATE_SHIFT = 12  # neuron state has 4096 units per unit of current
THRESHOLD_SHIFT = 6  # vThMant is in units of 1/64
# Lava's bit-accurate LIF (lava/proc/lif/models.py, lava-nc 0.10.0) keeps
# u and v in 24 bits: u wraps around and v saturates.
STATE_LIMIT = 1 << 23


def attention_counts(query: np.ndarray, keys: np.ndarray,
                     values: np.ndarray, heads: int) -> np.ndarray:
    """Return the integer counts (Q K^T) V of one query position: (C,).

    ``query`` is (C,) and ``keys`` and ``values`` are (P, C) for the P
    cached positions, all 0 or 1.
    """
    positions, channels = keys.shape
    width = channels // heads
    q = query.reshape(heads, width).astype(np.int64)
    k = keys.reshape(positions, heads, width).astype(np.int64)
    v = values.reshape(positions, heads, width).astype(np.int64)
    scores = np.einsum("hd,phd->hp", q, k)
    return np.einsum("hp,phd->hd", scores, v).reshape(channels)


def attention_shift(position: int, shift: int, position_shift: int) -> int:
    """Return the right shift of A V at a 0-based query position."""
    return shift + position_shift * ((position + 1).bit_length() - 1)


class _AbstractSpikeAttentionModel(PyLoihiProcessModel):
    """Windowing, caching and attention shared by both precisions."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.channels = proc_params["channels"]
        self.heads = proc_params["heads"]
        self.context = proc_params["context"]
        self.time_steps = proc_params["time_steps"]
        self.shift = proc_params["shift"]
        self.position_shift = proc_params["position_shift"]
        self.window_start = proc_params["window_start"]
        self.segment_length = proc_params["segment_length"]

    def run_spk(self):
        spikes = self.s_in.recv()
        step = (self.time_step - 1) % self.segment_length + 1 \
            - self.window_start
        if not 0 <= step < self.time_steps:
            self.s_out.send(np.zeros(self.channels))
            return

        position = int(self.position[0])
        if position >= self.context:
            raise RuntimeError(
                f"attention position {position} is outside the context of "
                f"{self.context}; set position to 0 to start a new context")
        if step == 0:
            self.u[:] = 0
            self.v[:] = 0

        c = self.channels
        self.k_cache[position, :, step] = spikes[c:2 * c]
        self.v_cache[position, :, step] = spikes[2 * c:]
        counts = attention_counts(spikes[:c],
                                  self.k_cache[:position + 1, :, step],
                                  self.v_cache[:position + 1, :, step],
                                  self.heads)
        shift = attention_shift(position, self.shift, self.position_shift)
        fired = self.integrate(counts, shift)
        if step == self.time_steps - 1:
            self.position[0] = position + 1
        self.s_out.send(fired)

    def integrate(self, counts: np.ndarray, shift: int) -> np.ndarray:
        raise NotImplementedError


@implements(proc=SpikeAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PySpikeAttentionModelFixed(_AbstractSpikeAttentionModel):
    """Integer model, bit-accurate with neurodeploy's PyTorch Reference.

    Y enters the current as ``counts << (12 - s)``, exactly, because the
    spec limits s to 12. The neuron follows Lava's bit-accurate LIF,
    including its 24-bit limits on u and v (which the Reference does not
    model).
    """

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    k_cache: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=1)
    v_cache: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=1)
    position: np.ndarray = LavaPyType(np.ndarray, np.int32)
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    i_decay: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    v_decay: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    v_th: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=17)

    def integrate(self, counts, shift):
        drive = counts << (STATE_SHIFT - shift)
        current = _decay(self.u.astype(np.int64),
                         (1 << DECAY_SHIFT) - int(self.i_decay[0])) + drive
        current = np.where(current >= STATE_LIMIT,
                           current - 2 * STATE_LIMIT, current)
        current = np.where(current < -STATE_LIMIT,
                           current + 2 * STATE_LIMIT, current)
        voltage = _decay(self.v.astype(np.int64),
                         (1 << DECAY_SHIFT) - int(self.v_decay[0])) + current
        voltage = np.clip(voltage, -STATE_LIMIT + 1, STATE_LIMIT - 1)
        fired = voltage > (int(self.v_th[0]) << THRESHOLD_SHIFT)
        voltage[fired] = 0
        self.u[:] = current
        self.v[:] = voltage
        return fired.astype(np.int32)


@implements(proc=SpikeAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeAttentionModelFloat(_AbstractSpikeAttentionModel):
    """Floating-point model: the same equations without rounding."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    k_cache: np.ndarray = LavaPyType(np.ndarray, float)
    v_cache: np.ndarray = LavaPyType(np.ndarray, float)
    position: np.ndarray = LavaPyType(np.ndarray, int)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    i_decay: np.ndarray = LavaPyType(np.ndarray, float)
    v_decay: np.ndarray = LavaPyType(np.ndarray, float)
    v_th: np.ndarray = LavaPyType(np.ndarray, float)

    def integrate(self, counts, shift):
        drive = counts * 2.0 ** -shift
        unity = float(1 << DECAY_SHIFT)
        self.u[:] = self.u * (1 - self.i_decay[0] / unity) + drive
        self.v[:] = self.v * (1 - self.v_decay[0] / unity) + self.u
        fired = self.v > self.v_th[0] / (1 << THRESHOLD_SHIFT)
        self.v[fired] = 0
        return fired.astype(float)


def _decay(state: np.ndarray, keep: int) -> np.ndarray:
    """Multiply by keep / 4096 and round towards zero, as Lava's LIF does."""
    product = state * keep
    return np.sign(product) * (np.abs(product) >> DECAY_SHIFT)
