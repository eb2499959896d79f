"""Write a decoder graph as NetX HDF5 with the neurodeploy extension.

The layout is specified in docs/netx-format.md. Dense + CUBA layers use
lava-dl's NetX layer schema (``type``, ``shape``, ``weight``, ``bias``,
``neuron/*``). Everything NetX cannot express goes into extension keys of
the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .checkpoint import write_atomic
from .graph import IDENTITY, Graph, Layer

FORMAT = "neurodeploy-netx"
FORMAT_VERSION = 1


def write_network(path: str | Path, graph: Graph, encoder: dict,
                  meta: dict) -> None:
    """Write ``graph`` to ``path`` atomically.

    ``encoder`` contains ``token_code`` (V, d_token) and ``position_code``
    (context, d_position) as 0/1 arrays plus ``token_shift`` and
    ``padding``. ``meta`` contains the ``spec`` and ``tokenizer``
    dictionaries and ``time_steps``.
    """
    def write(handle):
        with h5py.File(handle, "w") as file:
            file.attrs["format"] = FORMAT
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["time_steps"] = int(meta["time_steps"])
            file.attrs["spec"] = json.dumps(meta["spec"])
            file.attrs["tokenizer"] = json.dumps(meta["tokenizer"])

            synapses = file.create_group("synapse")
            for name, synapse in graph.synapses.items():
                group = synapses.create_group(name)
                group.create_dataset("weight", data=synapse.weight)
                group.create_dataset("bias", data=synapse.bias)

            layers = file.create_group("layer")
            for index, layer in enumerate(graph.layers):
                group = layers.create_group(str(index))
                _write_layer(group, layer, graph, file)
                if layer.kind == "encoder":
                    _write_encoder(group, encoder)

            readout = file.create_group("readout")
            _write_inputs(readout, graph.readout["inputs"], graph)
            for key in ("norm_scale", "norm_shift", "head_weight",
                        "head_bias"):
                readout.create_dataset(key, data=graph.readout[key])

    write_atomic(Path(path), write)


def _write_layer(group: h5py.Group, layer: Layer, graph: Graph,
                 file: h5py.File) -> None:
    group.create_dataset("type", (1,), "S10", [layer.kind.encode()])
    group.create_dataset("shape", data=np.array([layer.channels]))
    group.attrs["name"] = layer.name
    group.attrs["depth"] = layer.depth
    for key, value in layer.attrs.items():
        group.attrs[key] = value

    if layer.neuron is not None:
        for key, value in layer.neuron.items():
            group.create_dataset(f"neuron/{key}", data=value)
    if layer.kind == "dense":
        # NetX's schema: the single synapse's weight and bias in the layer
        # itself, as hard links to the shared synapse datasets.
        name = layer.inputs[0].synapse
        group["weight"] = file[f"synapse/{name}/weight"]
        group["bias"] = file[f"synapse/{name}/bias"]
    elif layer.kind == "fanin":
        bias = sum(graph.synapses[c.synapse].bias for c in layer.inputs
                   if c.synapse != IDENTITY)
        group.create_dataset("bias", data=np.asarray(
            bias if not np.isscalar(bias) else np.zeros(layer.channels),
            dtype=np.int32))
    _write_inputs(group, layer.inputs, graph)


def _write_inputs(group: h5py.Group, inputs, graph: Graph) -> None:
    group.create_dataset("input_layer", data=np.array(
        [c.source for c in inputs], dtype=np.int32))
    group.create_dataset("input_synapse", data=np.array(
        [c.synapse.encode() for c in inputs], dtype="S64"))
    group.create_dataset("input_delay", data=np.array(
        [c.delay for c in inputs], dtype=np.int32))


def _write_encoder(group: h5py.Group, encoder: dict) -> None:
    group.create_dataset("token_code", data=encoder["token_code"].astype(
        np.uint8))
    group.create_dataset("position_code", data=encoder[
        "position_code"].astype(np.uint8))
    group.attrs["token_shift"] = int(encoder["token_shift"])
    group.attrs["padding"] = int(encoder["padding"])
