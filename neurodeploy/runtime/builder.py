"""Build a Lava process graph from a loaded decoder and run it per token.

Each token gets one segment of ``segment_length`` Lava time steps. Within
a segment, the host's encoder spikes enter at steps 1..T, and every layer
computes its T model time steps in a window of T consecutive steps that
starts where its inputs arrive (``plan_schedule``). Each neuron population
is a LIFReset that zeroes u and v at the first step of its window, so each
token starts from a zero state, as in the Reference. Spikes a layer emits
outside its window (its bias alone can make it fire) reach every
downstream layer outside that layer's window, so they change nothing.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import NeurodeployError
from ..lava_compat import prepare_lava_import
from ..netx_dense import LAVA_LATENCY, _check_lava_weight
from ..netx_read import NetLayer, Network
from .targets import Target

# The attention Process reads Q, K and V straight from the qkv neurons'
# OutPort, with no Dense in between. It folds in its own neuron, so its
# spikes leave in the Lava step in which Q, K and V arrive.
ATTENTION_LATENCY = 0
IDENTITY_WEIGHT = 64  # weight 1.0 in SLAYER's 1/64 units
BIAS_EXP = 6  # Lava's LIF adds bias_mant << 6, SLAYER's 64 * bias
# Loihi 2 delays are 6 bits (lava/proc/dense/models.py, DelayDense).
MAX_DELAY = 63


@dataclass
class Schedule:
    """When each layer runs within a segment, and the delays that align it.

    ``starts`` maps a layer index to the 1-based Lava step of the segment
    in which the layer computes model time step 0. ``delays`` maps
    (layer index, input number) to the extra steps that connection waits.
    """

    starts: dict[int, int]
    delays: dict[tuple[int, int], int]
    segment_length: int
    file_delays: dict[tuple[int, int], int] = field(default_factory=dict)


def plan_schedule(network: Network) -> Schedule:
    """Place every layer's window of T steps after its slowest input.

    On Lava, a Dense hop takes ``LAVA_LATENCY`` steps (1) and the attention
    Process ``ATTENTION_LATENCY`` (0). The delays are recomputed here from
    those latencies; ``file_delays`` keeps the file's ``input_delay``
    values, which the exporter derives from the same latencies.
    """
    starts = {0: 1}  # the source sends encoder column 0 at step 1
    delays = {}
    file_delays = {}
    for layer in network.layers[1:]:
        latency = (ATTENTION_LATENCY if layer.kind == "attention"
                   else LAVA_LATENCY)
        arrivals = [starts[source] + latency
                    for source, _, _ in layer.inputs]
        starts[layer.index] = max(arrivals)
        for number, arrival in enumerate(arrivals):
            delay = starts[layer.index] - arrival
            if delay > MAX_DELAY:
                raise NeurodeployError(
                    f"layer {layer.index} ({layer.name}) needs a delay of "
                    f"{delay} steps on input {number}; Loihi 2 allows at "
                    f"most {MAX_DELAY}")
            delays[(layer.index, number)] = delay
            file_delays[(layer.index, number)] = layer.inputs[number][2]
    segment_length = max(starts.values()) + network.time_steps - 1
    return Schedule(starts, delays, segment_length, file_delays)


class LavaDecoder:
    """A decoder file as a Lava process graph, run one token at a time.

    ``record`` lists the neuron layers whose spikes come back to the host
    after each token. Call ``close`` (or use ``with``) to stop Lava's
    runtime and its worker processes.
    """

    def __init__(self, network: Network, target: Target,
                 record: list[int]):
        if network.kind != "decoder":
            raise NeurodeployError(
                f"{network.path}: a plain NetX file, not a neurodeploy "
                "decoder; only decoder files run on this runtime")
        target.check_available()
        prepare_lava_import()
        # lava-dl 0.6.0 prints a warning about a missing optional dataset
        # toolbox to stdout on first import, which would break --json.
        with contextlib.redirect_stdout(sys.stderr):
            import lava.lib.dl.netx.utils  # noqa: F401
        from lava.proc.io.sink import RingBuffer as SinkBuffer
        from lava.proc.io.source import RingBuffer as SourceBuffer

        self.network = network
        self.target = target
        self.schedule = plan_schedule(network)
        self.time_steps = network.time_steps
        self.context = network.spec.model.context
        length = self.schedule.segment_length

        encoder = network.layers[0]
        self.source = SourceBuffer(data=np.zeros((encoder.channels, length)))
        outputs = {0: self.source.s_out}
        self.attention = []
        for layer in network.layers[1:]:
            if layer.kind == "attention":
                process = self._attention(layer)
                outputs[layer.inputs[0][0]].connect(process.s_in)
                self.attention.append(process)
            else:
                process = self._neurons(layer)
                for number, (source, synapse, _) in enumerate(layer.inputs):
                    delay = self.schedule.delays[(layer.index, number)]
                    dense = self._synapse(layer, source, synapse, delay)
                    outputs[source].connect(dense.s_in)
                    dense.a_out.connect(process.a_in)
            outputs[layer.index] = process.s_out

        self.sinks = {}
        for index in record:
            if index == 0:
                continue  # the host computes the encoder's spikes
            channels = network.layers[index].channels
            sink = SinkBuffer(shape=(channels,), buffer=length)
            outputs[index].connect(sink.a_in)
            self.sinks[index] = sink
        self.run_config = target.make_run_config()
        self.started = False
        self.next_position = 0

    @property
    def steps_per_token(self) -> int:
        return self.schedule.segment_length

    def _neurons(self, layer: NetLayer):
        from lava.proc.lif.process import LIFReset

        neuron = layer.neuron
        bias = self._layer_bias(layer)
        start = self.schedule.starts[layer.index]
        length = self.schedule.segment_length
        if self.target.fixed_point:
            # Lava's fixed-point LIF decays u by du + 1 and v by dv.
            # NOTE: iDecay = 0 gives du = -1, which is right only while Lava
            # keeps du a Python int, not its declared uint16 (untested).
            params = dict(du=neuron["iDecay"] - 1, dv=neuron["vDecay"],
                          vth=neuron["vThMant"], bias_mant=bias,
                          bias_exp=BIAS_EXP)
        else:
            params = dict(du=neuron["iDecay"] / 4096,
                          dv=neuron["vDecay"] / 4096,
                          vth=neuron["vThMant"] / 64, bias_mant=bias / 64,
                          bias_exp=0)
        return LIFReset(shape=(layer.channels,), reset_interval=length,
                        reset_offset=start % length, name=layer.name,
                        **params)

    def _layer_bias(self, layer: NetLayer) -> np.ndarray:
        """Sum the biases of the layer's synapses: 1/64 units, (C,)."""
        bias = np.zeros(layer.channels, dtype=np.int64)
        for _, synapse, _ in layer.inputs:
            if synapse != "identity":
                bias += self.network.synapses[synapse][1]
        return bias

    def _synapse(self, layer: NetLayer, source: int, synapse: str,
                 delay: int):
        from lava.proc.dense.process import DelayDense, Dense

        if synapse == "identity":
            weight = IDENTITY_WEIGHT * np.eye(layer.channels, dtype=np.int64)
        else:
            weight = self.network.synapses[synapse][0]
        name = f"{layer.name}<-{self.network.layers[source].name}"

        if self.target.fixed_point:
            from lava.lib.dl.netx.utils import optimize_weight_bits

            # The same scaling NetX applies; _check_lava_weight raises
            # where Lava's Dense would not sum exactly ``weight``.
            _check_lava_weight(weight)
            with np.errstate(divide="ignore"):
                weights, bits, exponent, _ = optimize_weight_bits(weight)
            params = dict(weights=weights, weight_exp=int(exponent),
                          num_weight_bits=int(bits))
        else:
            params = dict(weights=weight / 64)
        if delay == 0:
            return Dense(name=name, **params)
        return DelayDense(delays=np.full(weight.shape, delay), name=name,
                          **params)

    def _attention(self, layer: NetLayer):
        from .attention.process import SpikeAttention

        attrs = layer.attrs
        return SpikeAttention(
            channels=layer.channels, heads=int(attrs["heads"]),
            context=self.context, time_steps=self.time_steps,
            shift=int(attrs["shift"]),
            position_shift=int(attrs["position_shift"]),
            i_decay=layer.neuron["iDecay"], v_decay=layer.neuron["vDecay"],
            v_th=layer.neuron["vThMant"],
            window_start=self.schedule.starts[layer.index],
            segment_length=self.schedule.segment_length, name=layer.name)

    def run_token(self, encoder_row: np.ndarray, position: int
                  ) -> dict[int, np.ndarray]:
        """Run one token's segment; return recorded spikes {layer: (C, T)}.

        ``encoder_row`` is the encoder's (C,) spike vector for the token and
        ``position`` its 0-based position in the context. Tokens must come in
        order: position 0 starts a new context (the KV caches restart),
        any other position must follow the previous one.
        """
        from lava.magma.core.run_conditions import RunSteps

        if position not in (0, self.next_position):
            raise NeurodeployError(
                f"token position {position} does not follow the previous "
                f"token; expected 0 or {self.next_position}")
        if position >= self.context:
            raise NeurodeployError(
                f"token position {position} is outside the context of "
                f"{self.context} tokens")
        length = self.schedule.segment_length
        drive = np.zeros((encoder_row.shape[0], length))
        drive[:, :self.time_steps] = encoder_row[:, None]
        if not self.started:
            self.source.data.init = drive
            self.source.run(condition=RunSteps(num_steps=length),
                            run_cfg=self.run_config)
            self.started = True
        else:
            self.source.data.set(drive)
            if position == 0:
                for process in self.attention:
                    process.position.set(np.zeros(1))
            self.source.run(condition=RunSteps(num_steps=length))
        self.next_position = position + 1

        spikes = {}
        for index, sink in self.sinks.items():
            start = self.schedule.starts[index]
            data = sink.data.get()
            spikes[index] = data[:, start - 1:start - 1 + self.time_steps] \
                .astype(np.int8)
        return spikes

    def close(self) -> None:
        """Stop Lava's runtime if it was started."""
        if self.started:
            self.source.stop()
            self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
