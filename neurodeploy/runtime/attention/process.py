"""A Lava Process for the ``attention`` layer, with a spike KV cache.

Import this module only after ``neurodeploy.lava_compat.prepare_lava_import``.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var


class SpikeAttention(AbstractProcess):
    """Causal softmax-free spike attention with its CUBA neuron folded in.

    ``s_in`` receives 3C spikes per time step (Q, K and V, in that order)
    and ``s_out`` sends C spikes. The Process serves one token per segment
    of ``segment_length`` Lava time steps. Its window is the ``time_steps``
    steps from ``window_start`` (1-based, within the segment). In each of
    them it stores the token's K and V spikes in the caches at row
    ``position`` and computes per head ``Y = (Q K^T) V * 2**-s`` over the
    cached rows 0..position. Its CUBA neuron, zeroed at the window's first
    step, integrates Y and sends the spikes. Outside the window it sends
    zeros. After the window,
    ``position`` advances by one; the host sets it to 0 to start a new
    context.

    ``i_decay``, ``v_decay`` and ``v_th`` use the file's units: iDecay and
    vDecay out of 4096, and vThMant in units of 1/64.
    ``s = shift + position_shift * floor(log2(position + 1))``.
    """

    def __init__(self, *, channels: int, heads: int, context: int,
                 time_steps: int, shift: int, position_shift: int,
                 i_decay: int, v_decay: int, v_th: int, window_start: int,
                 segment_length: int, name: str | None = None) -> None:
        if channels % heads:
            raise ValueError(f"channels={channels} is not a multiple of "
                             f"heads={heads}")
        if not 1 <= window_start <= segment_length - time_steps + 1:
            raise ValueError(
                f"the window of {time_steps} steps from step {window_start} "
                f"does not fit a segment of {segment_length} steps")
        super().__init__(channels=channels, heads=heads, context=context,
                         time_steps=time_steps, shift=shift,
                         position_shift=position_shift,
                         window_start=window_start,
                         segment_length=segment_length, name=name)
        self.s_in = InPort(shape=(3 * channels,))
        self.s_out = OutPort(shape=(channels,))
        cache_shape = (context, channels, time_steps)
        self.k_cache = Var(shape=cache_shape, init=np.zeros(cache_shape))
        self.v_cache = Var(shape=cache_shape, init=np.zeros(cache_shape))
        self.position = Var(shape=(1,), init=0)
        self.u = Var(shape=(channels,), init=0)
        self.v = Var(shape=(channels,), init=0)
        self.i_decay = Var(shape=(1,), init=i_decay)
        self.v_decay = Var(shape=(1,), init=v_decay)
        self.v_th = Var(shape=(1,), init=v_th)
