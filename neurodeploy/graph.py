"""The deployable graph of a trained spiking decoder.

Every neuron population is a layer. Every connection names its source
layer, a synapse (a folded integer weight matrix with bias, or the
identity) and a delay in time steps. This is what the exporter writes and
what the loader, the PyTorch reference and the Lava runtime read back.

Delays: a synaptic connection takes one time step, as Lava's Dense does;
the attention operation reads the spikes of its qkv layer in the same
step. A layer's depth is the step at which its window of T steps starts,
counted from the encoder; a connection with latency l from depth d_s into
depth d_t waits d_t - d_s - l extra steps, so the contributions of one
model time step arrive together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import NeurodeployError
from .model.layers import SpikeLinear, norm_affine, quantize_weight
from .model.snn import SpikingDecoder, neuron_params

IDENTITY = "identity"


@dataclass
class Synapse:
    """Integer weight and bias mantissas, 1/64 units: (C_out, C_in), (C_out,)."""

    weight: np.ndarray
    bias: np.ndarray
    error: dict = field(default_factory=dict)


@dataclass
class Connection:
    source: int
    synapse: str  # a key of Graph.synapses, or IDENTITY
    delay: int = 0


@dataclass
class Layer:
    """A population: its kind, size, neuron parameters and inputs.

    ``kind`` is 'encoder', 'dense' (one synapse, NetX's schema), 'fanin'
    (a sum of several connections) or 'attention'.
    """

    name: str
    kind: str
    channels: int
    neuron: dict | None = None
    inputs: list[Connection] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    depth: int = 0


@dataclass
class Graph:
    layers: list[Layer]
    synapses: dict[str, Synapse]
    readout: dict


def neuron_dict(params) -> dict:
    """Loihi CUBA parameters in lava-dl's HDF5 keys."""
    return {"type": "CUBA", "iDecay": params.current_decay,
            "vDecay": params.voltage_decay,
            "vThMant": int(round(params.threshold * 64)),
            "refDelay": 1, "gradedSpike": False}


def fold_synapse(linear: SpikeLinear) -> Synapse:
    """Fold a trained synapse and measure the folding error."""
    weight, bias = linear.fold()
    with torch.no_grad():
        scale, shift = norm_affine(linear.norm, linear.weight.shape[0])
        exact = scale[:, None] * quantize_weight(linear.weight)
        error = (exact - weight / 64).abs()
        clamped = int(((exact * 64).abs() > 256).sum()
                      + ((shift * 64).abs() > 4096).sum())
    return Synapse(
        weight=weight.numpy().astype(np.int16),
        bias=bias.numpy().astype(np.int32),
        error={"max_abs": float(error.max()),
               "rms_relative": float(error.pow(2).mean().sqrt()
                                     / exact.pow(2).mean().sqrt().clamp_min(1e-12)),
               "clamped": clamped})


def build_graph(model: SpikingDecoder) -> Graph:
    """Describe a trained decoder as layers, synapses and a readout."""
    spec = model.spec
    parts = spec.not_deployable_parts()
    if parts:
        raise NeurodeployError(
            "this model cannot run on Lava: " + "; ".join(parts)
            + " (retrain with --set to change these fields)")

    return _Builder(model).build()


class _Builder:
    def __init__(self, model: SpikingDecoder):
        self.model = model
        self.spec = model.spec
        self.layers: list[Layer] = []
        self.synapses: dict[str, Synapse] = {}
        self.neuron = neuron_dict(neuron_params(self.spec))

    def add(self, layer: Layer) -> int:
        latency = 0 if layer.kind == "attention" else 1
        arrivals = [self.layers[c.source].depth + latency
                    for c in layer.inputs]
        layer.depth = max(arrivals) if arrivals else 0
        for connection, arrival in zip(layer.inputs, arrivals):
            connection.delay = layer.depth - arrival
        self.layers.append(layer)
        return len(self.layers) - 1

    def synapse(self, name: str, linear: SpikeLinear) -> str:
        self.synapses[name] = fold_synapse(linear)
        return name

    def build(self) -> Graph:
        spec = self.spec
        encoder = self.add(Layer("encoder", "encoder", spec.d_model))
        # Connections that make up the residual stream so far.
        stream = [Connection(encoder, IDENTITY)]
        for index, branch in enumerate(self.model.branches):
            kind = "attn" if index % 2 == 0 else "mlp"
            prefix = f"block{index // 2}.{kind}"
            if spec.residual == "membrane":
                entry = self.add(Layer(f"{prefix}.entry", "fanin",
                                       spec.d_model, self.neuron,
                                       [Connection(c.source, c.synapse)
                                        for c in stream]))
            else:
                entry = stream[0].source
            out = self.branch(prefix, kind, branch.body, entry)
            if spec.residual == "membrane":
                stream.append(out)
            else:
                residual = self.add(Layer(
                    f"{prefix}.residual", "fanin", spec.d_model, self.neuron,
                    [Connection(stream[0].source, IDENTITY), out]))
                stream = [Connection(residual, IDENTITY)]

        if spec.readout == "spikes":
            last = self.add(Layer("readout.lif", "fanin", spec.d_model,
                                  self.neuron, [Connection(c.source, c.synapse)
                                                for c in stream]))
            stream = [Connection(last, IDENTITY)]
        return Graph(self.layers, self.synapses, self.readout(stream))

    def branch(self, prefix: str, kind: str, body, entry: int) -> Connection:
        """Add one branch's layers; return the connection of its output."""
        if kind == "attn":
            qkv = self.add(Layer(
                f"{prefix}.qkv", "dense", 3 * self.spec.d_model, self.neuron,
                [Connection(entry, self.synapse(f"{prefix}.qkv", body.qkv))]))
            attention = self.add(Layer(
                f"{prefix}.attention", "attention", self.spec.d_model,
                self.neuron, [Connection(qkv, IDENTITY)],
                attrs={"heads": self.spec.n_heads,
                       "shift": self.spec.attention_shift,
                       "position_shift": int(
                           self.spec.attention_position_shift),
                       "causal": 1}))
            return Connection(attention, self.synapse(f"{prefix}.out",
                                                      body.out))
        hidden = self.add(Layer(
            f"{prefix}.hidden", "dense", self.spec.d_mlp, self.neuron,
            [Connection(entry, self.synapse(f"{prefix}.up", body.up))]))
        return Connection(hidden, self.synapse(f"{prefix}.down", body.down))

    def readout(self, stream: list[Connection]) -> dict:
        """Readout: mean over T of the summed sources, a norm and a head."""
        model = self.model
        with torch.no_grad():
            scale, shift = norm_affine(model.readout_norm, self.spec.d_model)
        return {
            "inputs": [Connection(c.source, c.synapse) for c in stream],
            "norm_scale": scale.detach().numpy().astype(np.float32),
            "norm_shift": shift.detach().numpy().astype(np.float32),
            "head_weight": model.head.weight.detach().numpy().astype(
                np.float32),
            "head_bias": model.head.bias.detach().numpy().astype(np.float32),
        }
