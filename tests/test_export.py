"""Export -> load -> reference round trips, Lava per layer, bad files."""

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy.cli import main
from neurodeploy.errors import NeurodeployError
from neurodeploy.export import deploy, export_checkpoint, load_trained
from neurodeploy.model.neuron import CubaLIF, as_rows
from neurodeploy.netx_read import load_network
from neurodeploy.reference import Reference
from neurodeploy.spec import Spec, apply_overrides
from neurodeploy.train import train

from conftest import TINY

ACTIVE = ["token_shift=1", "attention_shift=0",
          "attention_position_shift=true", "threshold=0.5", "steps=6"]


def trained(tmp_path, corpus_file, extra=()):
    spec = apply_overrides(Spec(name="tiny"), TINY + ACTIVE + list(extra))
    train(spec, str(corpus_file), tmp_path, progress=False)
    return tmp_path / "checkpoint.pt"


def model_spikes(model, tokens):
    """Spikes of every LIF of the deployed model, in graph order."""
    recorded = []
    hooks = [module.register_forward_hook(
        lambda _m, _i, out: recorded.append(as_rows(out)))
        for module in model.modules() if isinstance(module, CubaLIF)]
    logits = model(tokens)
    for hook in hooks:
        hook.remove()
    return logits, recorded


@pytest.mark.parametrize("variant", [
    [], ["residual='spike'"], ["readout='spikes'"], ["norm='power'"]],
    ids=["membrane", "spike-residual", "spike-readout", "powernorm"])
def test_round_trip_spikes_bit_exact(tmp_path, corpus_file, variant):
    checkpoint = trained(tmp_path, corpus_file, variant)
    export_checkpoint(checkpoint, tmp_path / "model.net")
    network = load_network(tmp_path / "model.net")
    _, model = load_trained(checkpoint)
    deploy(model)
    tokens = torch.randint(0, network.tokenizer.vocab_size, (2, 16),
                           generator=torch.Generator().manual_seed(0))

    logits, expected = model_spikes(model, tokens)
    reference_logits, spikes = Reference(network).run(tokens)

    neuron_layers = [layer.index for layer in network.layers
                     if layer.kind != "encoder"]
    assert len(neuron_layers) == len(expected)
    for index, model_layer_spikes in zip(neuron_layers, expected):
        assert torch.equal(spikes[index], model_layer_spikes), \
            network.layers[index].name
    assert sum(s.sum() for s in expected) > 0
    assert torch.allclose(reference_logits, logits, atol=1e-5)


def test_qkv_layer_alone_matches_lava(tmp_path, corpus_file):
    from neurodeploy.netx_dense import run_netx_dense, write_dense_layer

    checkpoint = trained(tmp_path, corpus_file)
    export_checkpoint(checkpoint, tmp_path / "model.net")
    network = load_network(tmp_path / "model.net")
    tokens = torch.randint(0, network.tokenizer.vocab_size, (1, 16),
                           generator=torch.Generator().manual_seed(1))
    _, spikes = Reference(network).run(tokens)
    layer = next(l for l in network.layers if l.name.endswith(".qkv"))
    source = layer.inputs[0][0]

    # Extract the layer into a plain NetX file (input + dense) and run it.
    with h5py.File(tmp_path / "model.net") as file:
        group = file[f"layer/{layer.index}"]
        weight, bias = group["weight"][()], group["bias"][()]
    neuron = {key: layer.neuron[key] for key in ("iDecay", "vDecay", "vThMant")}
    write_dense_layer(tmp_path / "qkv.net", weight, bias, neuron)
    for position in (3, 9, 15):
        inputs = spikes[source][position].numpy().astype(np.int8)  # (C, T)
        output = run_netx_dense(tmp_path / "qkv.net", inputs)
        assert np.array_equal(output, spikes[layer.index][position].numpy())


test_qkv_layer_alone_matches_lava = pytest.mark.timeout(300)(
    test_qkv_layer_alone_matches_lava)


@pytest.mark.parametrize("extra,message", [
    (["residual='float'"], "residual=float: set residual=membrane"),
    (["norm='layer'"], "norm=layer: set norm=batch or norm=power"),
    (["current_decay=0.5"], "train with current_decay=1.0"),
    (["arch='ann'"], "ANN baseline"),
])
def test_not_deployable_models_rejected(tmp_path, corpus_file, extra,
                                        message):
    checkpoint = trained(tmp_path, corpus_file, extra)
    with pytest.raises(NeurodeployError, match=message):
        export_checkpoint(checkpoint, tmp_path / "model.net")
    assert not (tmp_path / "model.net").exists()


@pytest.fixture
def exported(tmp_path, corpus_file):
    checkpoint = trained(tmp_path, corpus_file)
    export_checkpoint(checkpoint, tmp_path / "model.net")
    return tmp_path / "model.net"


def test_loaded_file_contents(exported):
    network = load_network(exported)
    assert network.kind == "decoder"
    assert network.time_steps == 4
    assert [layer.kind for layer in network.layers] == [
        "encoder", "fanin", "dense", "attention", "fanin", "dense"]
    mlp_entry = network.layers[4]
    # Encoder spikes wait 2 steps to meet the attention output's current:
    # entry, qkv and the out synapse take a step each, attention none.
    assert mlp_entry.inputs == [(0, "identity", 2),
                                (3, "block0.attn.out", 0)]


def corrupt(path, edit):
    with h5py.File(path, "r+") as file:
        edit(file)


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.attrs.__setitem__("format_version", 7), "version 7 is newer"),
    (lambda f: f.__delitem__("readout"), "missing group 'readout'"),
    (lambda f: f.__delitem__("layer/2/neuron/vThMant"),
     "missing dataset 'vThMant'"),
    (lambda f: (f.__delitem__("synapse/block0.mlp.up/weight"),
                f.create_dataset("synapse/block0.mlp.up/weight",
                                 data=np.zeros((32, 32), np.float32))),
     "invalid dtype float32"),
    (lambda f: (f.__delitem__("synapse/block0.mlp.up/weight"),
                f.create_dataset("synapse/block0.mlp.up/weight",
                                 data=np.zeros((32, 31), np.int16))),
     r"has shape \(32, 31\), expected \(32, 32\)"),
    (lambda f: (f.__delitem__("layer/3/type"),
                f.create_dataset("layer/3/type", (1,), "S10", [b"softmax"])),
     "unknown layer type 'softmax'"),
    (lambda f: f["layer/2/neuron/vDecay"].write_direct(np.array(5000)),
     r"neuron/vDecay: values \[5000, 5000\] outside"),
], ids=["newer-version", "missing-group", "missing-dataset", "wrong-dtype",
        "wrong-shape", "unknown-type", "out-of-range"])
def test_loader_rejects_bad_files(exported, edit, message):
    corrupt(exported, edit)
    with pytest.raises(NeurodeployError, match=message):
        load_network(exported)


def test_loader_rejects_truncated_file(exported):
    data = exported.read_bytes()
    exported.write_bytes(data[: len(data) // 2])
    with pytest.raises(NeurodeployError, match="not a readable HDF5 file"):
        load_network(exported)


def test_loader_rejects_non_hdf5_file(tmp_path):
    path = tmp_path / "notes.net"
    path.write_text("hello")
    with pytest.raises(NeurodeployError, match="not a readable HDF5 file"):
        load_network(path)


def test_loader_rejects_foreign_hdf5(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("images", data=np.zeros(3))
    with pytest.raises(NeurodeployError, match="missing group 'layer'"):
        load_network(path)


def slayer_network_file(path):
    """A plain NetX chain written by lava-dl's own block export_hdf5."""
    from lava.lib.dl import slayer

    params = {"threshold": 1.25, "current_decay": 0.25,
              "voltage_decay": 0.03}
    blocks = torch.nn.ModuleList([
        slayer.block.cuba.Dense(params, 10, 16),
        slayer.block.cuba.Dense(params, 16, 4)])
    x = torch.rand(1, 10, 8)
    for block in blocks:  # the first forward pass fixes the neuron shapes
        x = block(x)
    with h5py.File(path, "w") as file:
        layers = file.create_group("layer")
        for index, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(str(index)))


def test_inspect_plain_slayer_file(tmp_path):
    path = tmp_path / "slayer.net"
    slayer_network_file(path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "netx"
    assert [row["type"] for row in summary["layers"]] == ["dense", "dense"]
    assert summary["layers"][0]["neuron"]["vThMant"] == 80
    assert summary["layers"][0]["neuron"]["iDecay"] == 1024
    assert summary["totals"]["neurons"] == 20
    with h5py.File(path) as file:
        first_weights = np.count_nonzero(file["layer/0/weight"][()])
    assert summary["layers"][0]["synapses"] == first_weights
    assert summary["layers"][0]["inputs"] == [
        {"layer": -1, "synapse": "weight", "delay": 0}]


def test_inspect_and_export_commands(exported, tmp_path):
    checkpoint = exported.parent / "checkpoint.pt"
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "-o", str(tmp_path / "b.net"),
               "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["synapses"]) == {
        "block0.attn.qkv", "block0.attn.out", "block0.mlp.up",
        "block0.mlp.down"}

    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "b.net")])
    assert result.exit_code == 0
    assert "block0.attn.attention" in result.stdout
    assert "attention" in result.stdout


def test_inspect_bad_file_exits_2(tmp_path):
    path = tmp_path / "bad.net"
    path.write_bytes(b"\x89HDF\r\n")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "not a readable HDF5 file" in result.stderr
    assert "Traceback" not in result.stderr
