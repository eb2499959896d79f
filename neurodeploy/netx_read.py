"""Load and validate NetX HDF5 files: ours and plain lava-dl chains.

The loader reads datasets into numpy arrays and JSON strings only: nothing
in the file is executed or unpickled. Every problem raises one
NeurodeployError that names the file and the part at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .data import tokenizer_from_dict
from .errors import NeurodeployError
from .netx_write import FORMAT, FORMAT_VERSION
from .spec import Spec

# Layer types that lava-dl 0.6.0's NetX loader (netx/hdf5.py) recognises.
# It raises NotImplementedError for pool, convT, unpool, average and concat.
NETX_TYPES = {"input", "dense", "dense_rec", "dense_comp", "conv", "flatten",
              "pool", "convT", "unpool", "average", "concat"}
EXTENSION_TYPES = {"encoder", "fanin", "attention"}
RUNNABLE_TYPES = {"input", "dense", "flatten", "encoder", "fanin",
                  "attention"}
KIND_NAMES = {"i": "a signed integer type", "u": "an unsigned integer type",
              "f": "a floating-point type", "S": "a byte string"}
NEURON_RANGES = {"iDecay": (0, 4096), "vDecay": (0, 4096),
                 "vThMant": (0, (1 << 17) - 1)}


@dataclass
class NetLayer:
    """One layer as read from the file; arrays are numpy."""

    index: int
    kind: str
    shape: tuple[int, ...]
    name: str
    neuron: dict | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    inputs: list[tuple[int, str, int]] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Network:
    """A loaded file: ``kind`` is 'decoder' (ours) or 'netx' (plain)."""

    path: Path
    kind: str
    layers: list[NetLayer]
    synapses: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict)
    readout: dict = field(default_factory=dict)
    spec: Spec | None = None
    tokenizer: object = None
    time_steps: int = 0
    format_version: int = 0


class _Invalid(Exception):
    """A validation failure inside the file; turned into NeurodeployError."""


def load_network(path: str | Path) -> Network:
    """Open, read and validate a NetX file; raise NeurodeployError if bad."""
    path = Path(path)
    if not path.is_file():
        raise NeurodeployError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as file:
            return _read(file, path)
    except _Invalid as error:
        raise NeurodeployError(f"{path}: {error}") from None
    except OSError as error:
        raise NeurodeployError(
            f"{path}: not a readable HDF5 file (truncated or another "
            f"format): {error}") from None


def _read(file: h5py.File, path: Path) -> Network:
    ours = file.attrs.get("format") == FORMAT
    if ours:
        version = int(file.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise _Invalid(
                f"format version {version} is newer than this neurodeploy "
                f"reads ({FORMAT_VERSION}); upgrade neurodeploy")
        if version < 1:
            raise _Invalid(f"invalid format version {version}")
    if "layer" not in file or not isinstance(file["layer"], h5py.Group):
        raise _Invalid("missing group 'layer': not a NetX network file")

    group = file["layer"]
    count = len(group)
    if count == 0:
        raise _Invalid("group 'layer' is empty")
    if sorted(group.keys(), key=_as_index) != [str(i) for i in range(count)]:
        raise _Invalid(f"layer groups must be named 0..{count - 1}, found "
                       f"{sorted(group.keys())}")

    network = Network(path, "decoder" if ours else "netx", [])
    if ours:
        _read_meta(file, network)
        network.synapses = _read_synapses(file)
    for index in range(count):
        network.layers.append(_read_layer(group[str(index)], index, ours,
                                          network))
    if ours:
        _check_graph(network)
        network.readout = _read_readout(file, network)
    return network


def _as_index(key: str):
    return (0, int(key)) if key.isdigit() else (1, key)


def _read_meta(file: h5py.File, network: Network) -> None:
    try:
        network.spec = Spec.from_dict(json.loads(file.attrs["spec"]), "spec")
        network.tokenizer = tokenizer_from_dict(
            json.loads(file.attrs["tokenizer"]))
        network.time_steps = int(file.attrs["time_steps"])
    except KeyError as error:
        raise _Invalid(f"missing root attribute {error}") from None
    except (json.JSONDecodeError, NeurodeployError) as error:
        raise _Invalid(f"invalid model metadata: {error}") from None
    network.format_version = int(file.attrs["format_version"])
    if network.time_steps != network.spec.model.time_steps:
        raise _Invalid(f"time_steps={network.time_steps} disagrees with the "
                       f"spec ({network.spec.model.time_steps})")


def _dataset(group: h5py.Group, key: str, kinds: str, ndim: int | None = None,
             required: bool = True):
    """Read a dataset, checking its dtype kind ('iu', 'f', 'S') and rank."""
    if key not in group:
        if required:
            raise _Invalid(f"{group.name}: missing dataset '{key}'")
        return None
    item = group[key]
    if not isinstance(item, h5py.Dataset):
        raise _Invalid(f"{group.name}/{key}: expected a dataset")
    if item.dtype.kind not in kinds:
        expected = " or ".join(KIND_NAMES[kind] for kind in kinds)
        raise _Invalid(f"{group.name}/{key}: invalid dtype {item.dtype}, "
                       f"expected {expected}; export the model again")
    value = item[()]
    if ndim is not None and np.ndim(value) != ndim:
        raise _Invalid(f"{group.name}/{key}: invalid shape "
                       f"{np.shape(value)}, expected {ndim} dimensions")
    return value


def _string(group: h5py.Group, key: str) -> str:
    if key not in group:
        raise _Invalid(f"{group.name}: missing dataset '{key}'")
    value = group[key][()]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise _Invalid(f"{group.name}/{key}: expected one string")
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise _Invalid(f"{group.name}/{key}: expected a string")
    return value


def _read_layer(group: h5py.Group, index: int, ours: bool,
                network: Network) -> NetLayer:
    kind = _string(group, "type")
    known = NETX_TYPES | (EXTENSION_TYPES if ours else set())
    if kind not in known:
        raise _Invalid(f"layer {index}: unknown layer type {kind!r}; "
                       f"known types are {sorted(known)}")
    shape = tuple(int(v) for v in np.atleast_1d(
        _dataset(group, "shape", "iu", required=kind != "flatten")
        if "shape" in group or kind != "flatten" else []))
    if any(v <= 0 for v in shape):
        raise _Invalid(f"layer {index}: invalid shape {shape}")

    layer = NetLayer(index, kind, shape, str(group.attrs.get(
        "name", f"layer{index}")), attrs=dict(group.attrs))
    if "neuron" in group:
        layer.neuron = _read_neuron(group["neuron"], index)
    if kind in ("dense", "dense_rec", "conv"):
        layer.weight = _dataset(group, "weight", "iuf")
        _check_range(layer.weight, -256, 254, f"layer {index} weight")
    if "bias" in group:
        layer.bias = _dataset(group, "bias", "iuf", 1)
    if ours:
        layer.inputs = _read_inputs(group, f"layer {index}", network)
    if kind == "encoder":
        layer.arrays["token_code"] = _dataset(group, "token_code", "u", 2)
        layer.arrays["position_code"] = _dataset(group, "position_code",
                                                 "u", 2)
        for key, value in layer.arrays.items():
            _check_range(value, 0, 1, f"layer {index} {key}")
    _check_layer_shapes(layer)
    return layer


def _read_neuron(group: h5py.Group, index: int) -> dict:
    neuron = {"type": _string(group, "type")}
    if neuron["type"] not in ("CUBA", "LOIHI"):
        neuron["unsupported"] = True
        return neuron
    for key, (low, high) in NEURON_RANGES.items():
        value = _dataset(group, key, "iuf", 0)
        _check_range(value, low, high, f"layer {index} neuron/{key}")
        neuron[key] = int(value)
    return neuron


def _check_range(values, low, high, what: str) -> None:
    values = np.asarray(values)
    if values.size and (values.min() < low or values.max() > high):
        raise _Invalid(f"{what}: values [{values.min()}, {values.max()}] "
                       f"outside the valid range [{low}, {high}]")


def _read_inputs(group: h5py.Group, what: str, network: Network):
    layers = _dataset(group, "input_layer", "iu", 1)
    synapses = _dataset(group, "input_synapse", "S", 1)
    delays = _dataset(group, "input_delay", "iu", 1)
    if not len(layers) == len(synapses) == len(delays):
        raise _Invalid(f"{what}: input_layer, input_synapse and input_delay "
                       "differ in length")
    inputs = []
    for source, synapse, delay in zip(layers, synapses, delays):
        name = synapse.decode("ascii", errors="replace")
        if name != "identity" and name not in network.synapses:
            raise _Invalid(f"{what}: input synapse {name!r} not found in "
                           "group 'synapse'")
        if delay < 0:
            raise _Invalid(f"{what}: negative input delay {delay}")
        inputs.append((int(source), name, int(delay)))
    return inputs


def _read_synapses(file: h5py.File) -> dict:
    if "synapse" not in file:
        raise _Invalid("missing group 'synapse'")
    synapses = {}
    for name, group in file["synapse"].items():
        weight = _dataset(group, "weight", "iu", 2)
        bias = _dataset(group, "bias", "iu", 1)
        _check_range(weight, -256, 254, f"synapse {name} weight")
        _check_range(bias, -4096, 4095, f"synapse {name} bias")
        if bias.shape[0] != weight.shape[0]:
            raise _Invalid(f"synapse {name}: bias has {bias.shape[0]} "
                           f"entries for {weight.shape[0]} outputs")
        synapses[name] = (weight.astype(np.int64), bias.astype(np.int64))
    return synapses


def _check_layer_shapes(layer: NetLayer) -> None:
    if layer.kind == "dense" and layer.weight is not None:
        if layer.weight.ndim != 2 or layer.weight.shape[0] != layer.channels:
            raise _Invalid(
                f"layer {layer.index}: weight shape {layer.weight.shape} "
                f"does not match {layer.channels} output channels")
    if layer.bias is not None and layer.bias.shape[0] != layer.channels:
        raise _Invalid(f"layer {layer.index}: bias has {layer.bias.shape[0]}"
                       f" entries for {layer.channels} channels")


def _check_graph(network: Network) -> None:
    """Check that every connection is acyclic and its sizes agree."""
    for layer in network.layers:
        if layer.kind != "encoder" and not layer.inputs:
            raise _Invalid(f"layer {layer.index}: has no inputs")
        if layer.kind != "encoder" and layer.neuron is None:
            raise _Invalid(f"layer {layer.index}: missing group 'neuron'")
        for source, synapse, _ in layer.inputs:
            _check_connection(network, layer, source, synapse)
    encoders = [layer for layer in network.layers if layer.kind == "encoder"]
    if len(encoders) != 1 or encoders[0].index != 0:
        raise _Invalid("a decoder file needs exactly one encoder, layer 0")
    encoder = encoders[0]
    width = encoder.arrays["token_code"].shape[1] * (
        1 + int(encoder.attrs.get("token_shift", 0))) \
        + int(encoder.attrs.get("padding", 0)) \
        + encoder.arrays["position_code"].shape[1]
    if width != encoder.channels:
        raise _Invalid(f"layer 0: encoder codes give {width} channels, "
                       f"shape says {encoder.channels}")


def _check_connection(network, layer, source: int, synapse: str) -> None:
    if not 0 <= source < layer.index:
        raise _Invalid(f"layer {layer.index}: input from layer {source} is "
                       "not an earlier layer")
    source_channels = network.layers[source].channels
    expected = layer.channels * (3 if layer.kind == "attention" else 1)
    if synapse == "identity":
        if source_channels != expected:
            raise _Invalid(f"layer {layer.index}: identity input from layer "
                           f"{source} has {source_channels} channels, "
                           f"expected {expected}")
        return
    weight, _ = network.synapses[synapse]
    if weight.shape != (layer.channels, source_channels):
        raise _Invalid(f"layer {layer.index}: synapse {synapse!r} has shape "
                       f"{weight.shape}, expected "
                       f"{(layer.channels, source_channels)}")


def _read_readout(file: h5py.File, network: Network) -> dict:
    if "readout" not in file:
        raise _Invalid("missing group 'readout'")
    group = file["readout"]
    readout = {"inputs": _read_inputs(group, "readout", network)}
    for key, ndim in (("norm_scale", 1), ("norm_shift", 1),
                      ("head_weight", 2), ("head_bias", 1)):
        readout[key] = _dataset(group, key, "f", ndim).astype(np.float32)
    vocab = network.tokenizer.vocab_size
    channels = network.layers[0].channels
    if readout["head_weight"].shape != (vocab, channels):
        raise _Invalid(f"readout head_weight has shape "
                       f"{readout['head_weight'].shape}, expected "
                       f"{(vocab, channels)}")
    return readout
