"""Profiling: operation counts by hand, energy models, reports and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from neurodeploy.cli import main
from neurodeploy.energy import (ann_macs, energy_model_names,
                                load_energy_model, parse_energy_model)
from neurodeploy.errors import NeurodeployError
from neurodeploy.netx_dense import reference_dense, write_dense_layer
from neurodeploy.netx_read import NetLayer, Network
from neurodeploy.profile import compare_profiles, profile_chain, profile_steps
from neurodeploy.profile_report import build_report, write_csv, write_plots
from neurodeploy.runtime.generate import TokenStep
from neurodeploy.runtime.targets import target_names
from neurodeploy.spec import ModelSpec

from conftest import TINY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHAIN_NEURON = {"iDecay": 4096, "vDecay": 1024, "vThMant": 32}
NEURON = {"type": "CUBA", **CHAIN_NEURON}


def hand_network() -> Network:
    """Encoder (4) -> dense (3) -> qkv (6) -> attention (2 heads of 1) ->
    fanin (4) fed by the encoder (identity) and the attention (synapse)."""
    first = np.array([[2, 0, 0, 4], [0, 0, 0, 2], [2, 0, 0, 0]])
    out = np.array([[2, 2], [2, 0], [2, 0], [2, 0]])
    synapses = {"first": (first, np.zeros(3, np.int64)),
                "qkv": (np.full((6, 3), 2), np.zeros(6, np.int64)),
                "out": (out, np.zeros(4, np.int64))}
    layers = [
        NetLayer(0, "encoder", (4,), "encoder"),
        NetLayer(1, "dense", (3,), "first", NEURON, inputs=[(0, "first", 0)]),
        NetLayer(2, "dense", (6,), "qkv", NEURON, inputs=[(1, "qkv", 0)]),
        NetLayer(3, "attention", (2,), "attention", NEURON,
                 inputs=[(2, "identity", 0)], attrs={"heads": 2}),
        NetLayer(4, "fanin", (4,), "sum", NEURON,
                 inputs=[(0, "identity", 0), (3, "out", 0)]),
    ]
    return Network(Path("hand.net"), "decoder", layers, synapses,
                   time_steps=2)


def hand_steps() -> list[TokenStep]:
    """Two tokens at positions 0 and 1; arrays are (channels, T = 2)."""
    encoder = [[1, 1], [1, 0], [0, 0], [0, 1]]
    first = [[1, 0], [0, 1], [0, 0]]
    # qkv rows: Q head 0, Q head 1, K head 0, K head 1, V head 0, V head 1
    qkv0 = [[1, 1], [0, 1], [1, 0], [1, 1], [1, 1], [0, 1]]
    qkv1 = [[1, 0], [1, 1], [1, 1], [0, 1], [0, 1], [1, 1]]
    steps = []
    for position, qkv, attention, fanin in (
            (0, qkv0, [[0, 1], [0, 0]], np.zeros((4, 2))),
            (1, qkv1, [[1, 0], [1, 1]], [[1, 0], [0, 0], [0, 0], [0, 0]])):
        spikes = {0: encoder, 1: first, 2: qkv, 3: attention, 4: fanin}
        steps.append(TokenStep(position, 7, {
            index: np.array(value, np.int8) for index, value in
            spikes.items()}))
    return steps


def test_hand_counts_synaptic_ops():
    profile = profile_steps(hand_network(), hand_steps())
    ops = profile.counts["synaptic_ops"]
    # Column fan-outs of 'first' are [2, 0, 0, 2]: encoder channels 0, 1
    # fire at t0 and channels 0, 3 at t1.
    assert ops[0, 1].tolist() == [2, 4]
    assert ops[1, 1].tolist() == [2, 4]
    # One spike per step into 6 non-zero weights per column.
    assert ops[0, 2].tolist() == [6, 6]
    # No synapse between qkv and attention.
    assert ops[:, 3].sum() == 0
    # Fanin: encoder identity (2 spikes per step) plus 'out' fan-outs [4, 1].
    assert ops[0, 4].tolist() == [2, 2 + 4]
    assert ops[1, 4].tolist() == [2 + 5, 2 + 1]
    assert ops[:, 0].sum() == 0


def test_hand_counts_attention():
    profile = profile_steps(hand_network(), hand_steps())
    qk = profile.counts["attention_qk"][:, 3]
    av = profile.counts["attention_av"][:, 3]
    # Position 0: one coincidence per step, each with one V spike.
    assert qk[0].tolist() == [1, 1]
    assert av[0].tolist() == [1, 1]
    # Position 1, t0: head 0 scores [1, 1] over V spikes [1, 0]; head 1
    # scores [1, 0] over V spikes [0, 1]. t1: head 1 scores [1, 1] over
    # V spikes [1, 1].
    assert qk[1].tolist() == [3, 2]
    assert av[1].tolist() == [1, 2]
    assert profile.counts["attention_qk"][:, [0, 1, 2, 4]].sum() == 0


def test_hand_counts_spikes_and_updates():
    profile = profile_steps(hand_network(), hand_steps())
    assert profile.counts["spikes"][0, 0].tolist() == [2, 2]
    assert profile.counts["spikes"][1, 2].tolist() == [4, 5]
    assert profile.counts["neuron_updates"][0, :, 0].tolist() == [0, 3, 6,
                                                                  2, 4]
    assert profile.firing_rates()[0] == pytest.approx(8 / 16)
    assert profile.operation_counts() == {
        "synaptic_op": 54, "attention_accumulate": 12, "neuron_update": 60,
        "spike": 27}


def test_steps_out_of_order_rejected():
    steps = hand_steps()
    with pytest.raises(NeurodeployError, match="generation order"):
        profile_steps(hand_network(), steps[1:])


def test_compare_profiles_finds_row():
    first = profile_steps(hand_network(), hand_steps())
    steps = hand_steps()
    steps[1].spikes[1][2, 0] = 1  # one extra spike in layer 1
    second = profile_steps(hand_network(), steps)
    assert compare_profiles(first, first) == []
    differences = compare_profiles(first, second)
    assert {"counter": "spikes", "row": 1, "first": 4,
            "second": 5} in differences
    changed = {(entry["counter"], entry["row"]) for entry in differences}
    assert ("synaptic_ops", 2) in changed


def test_energy_model_costs():
    assert energy_model_names() == ["45nm", "loihi"]
    cmos = load_energy_model("45nm")
    assert cmos.costs["synaptic_op"] == pytest.approx(0.9)
    assert cmos.costs["attention_accumulate"] == pytest.approx(0.9)
    assert cmos.costs["neuron_update"] == pytest.approx(2 * 3.7 + 3 * 0.9)
    assert cmos.costs["spike"] == 0
    assert cmos.costs["ann_mac"] == pytest.approx(4.6)
    loihi = load_energy_model("loihi")
    assert loihi.costs["synaptic_op"] == pytest.approx(23.6)
    assert loihi.costs["attention_accumulate"] == pytest.approx(23.6)
    assert loihi.costs["neuron_update"] == pytest.approx(52.0)
    assert loihi.costs["spike"] == pytest.approx(1.7)
    assert not loihi.has_ann


@pytest.mark.parametrize("name", ["45nm", "loihi"])
def test_energy_model_arithmetic(name):
    model = load_energy_model(name)
    for constant in model.constants.values():
        assert constant["source"].strip()
    report = build_report(profile_steps(hand_network(), hand_steps()),
                          [model])
    # Two tokens: 54 synaptic ops, 12 accumulates, 60 updates, 27 spikes.
    expected = {"45nm": (54 * 0.9 + 12 * 0.9 + 60 * 10.1) / 2,
                "loihi": (54 * 23.6 + 12 * 23.6 + 60 * 52 + 27 * 1.7) / 2}
    energy = report["energy"][model.name]
    assert energy["snn_pj_per_token"] == pytest.approx(expected[name])
    layer_sum = sum(row["energy_pj_per_token"][model.name]["total"]
                    for row in report["layers"])
    assert layer_sum == pytest.approx(expected[name])
    assert energy["ann_pj_per_token"] is None


def test_energy_model_from_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\ndescription = "test model"\n'
        '[constants.add]\npicojoules = 2.0\nsource = "made up for a test"\n'
        '[operations]\nsynaptic_op = { add = 1 }\n'
        'attention_accumulate = { add = 0.5 }\nneuron_update = { add = 3 }\n'
        'spike = {}\nann_mac = { add = 2 }\n', encoding="utf-8")
    model = load_energy_model(str(path))
    assert model.costs == {"synaptic_op": 2.0, "attention_accumulate": 1.0,
                           "neuron_update": 6.0, "spike": 0,
                           "ann_mac": 4.0}
    assert model.energy_pj({"synaptic_op": 3, "neuron_update": 1}) == 12.0


VALID = ('name = "bad"\ndescription = "d"\n'
         '[constants.add]\npicojoules = 1.0\nsource = "s"\n'
         '[operations]\nsynaptic_op = { add = 1 }\n'
         'attention_accumulate = { add = 1 }\nneuron_update = { add = 1 }\n'
         'spike = {}\n')


@pytest.mark.parametrize("old, new, field", [
    ('source = "s"\n', "", "constants.add.source"),
    ("picojoules = 1.0", "picojoules = -1.0", "constants.add.picojoules"),
    ("picojoules = 1.0", 'picojoules = "one"', "constants.add.picojoules"),
    ("synaptic_op = { add = 1 }", "synaptic_op = { mult = 1 }",
     "operations.synaptic_op.mult"),
    ("spike = {}\n", "", "operations.spike"),
    ("spike = {}", "spike = {}\nflops = {}", "operations.flops"),
    ('name = "bad"\n', "", "name"),
])
def test_malformed_energy_model(tmp_path, old, new, field):
    assert old in VALID
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace(old, new), encoding="utf-8")
    with pytest.raises(NeurodeployError) as error:
        load_energy_model(str(path))
    assert str(path) in str(error.value)
    assert f"'{field}'" in str(error.value)


def test_malformed_toml_names_file():
    with pytest.raises(NeurodeployError, match="broken.toml: invalid TOML"):
        parse_energy_model("name = ", "broken.toml")


def test_energy_files_not_run_targets():
    assert target_names() == ["cpu", "loihi2", "loihi2-sim"]


def test_ann_macs_by_hand():
    model = ModelSpec(context=16, d_model=32, d_position=8, n_layers=1,
                      n_heads=2, d_mlp=64)
    rows = dict(ann_macs(model, vocab_size=10, position=3))
    assert rows == {"embedding": 0, "block0.attn.qkv": 3 * 32 * 32,
                    "block0.attn.scores": 32 * 4,
                    "block0.attn.values": 32 * 4,
                    "block0.attn.out": 32 * 32, "block0.mlp.up": 32 * 64,
                    "block0.mlp.down": 64 * 32, "head": 32 * 10}


def test_plots_and_csv_written(tmp_path):
    profile = profile_steps(hand_network(), hand_steps())
    report = build_report(profile, [load_energy_model("45nm")])
    paths = write_plots(report, tmp_path / "plots")
    assert sorted(Path(path).name for path in paths) == [
        "energy_by_layer.png", "firing_rate.png"]
    for path in paths:
        assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    write_csv(profile, tmp_path / "counts.csv")
    lines = (tmp_path / "counts.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 5 * 2  # header, tokens x rows x steps
    assert lines[0].startswith("token,position,layer,name,kind,time_step")


def chain_file(path):
    """An input layer of 3 and a dense CUBA layer of 2, by hand."""
    weight = np.array([[64, 0, 2], [0, 0, -4]])  # column fan-outs 1, 0, 2
    write_dense_layer(path, weight, None, CHAIN_NEURON)
    return weight


def test_chain_counts_by_hand(tmp_path):
    from neurodeploy.netx_read import load_network

    weight = chain_file(tmp_path / "chain.net")
    spikes = np.array([[1, 1], [1, 0], [0, 1]])
    profile = profile_chain(load_network(tmp_path / "chain.net"), spikes)
    assert [row.kind for row in profile.rows] == ["input", "input", "dense"]
    assert profile.counts["synaptic_ops"][0, 2].tolist() == [1, 1 + 2]
    assert profile.counts["neuron_updates"][0, 2].tolist() == [2, 2]
    expected = reference_dense(weight, None, CHAIN_NEURON, spikes)
    assert profile.counts["spikes"][0, 2].tolist() == \
        expected.sum(axis=0).tolist()
    assert profile.counts["spikes"][0, 0].tolist() == [2, 2]


def test_profile_chain_cli(tmp_path):
    chain_file(tmp_path / "chain.net")
    np.save(tmp_path / "in.npy", np.array([[1, 1], [1, 0], [0, 1]]))
    result = CliRunner().invoke(main, [
        "profile", str(tmp_path / "chain.net"), "--input",
        str(tmp_path / "in.npy"), "--energy-model", "45nm", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "netx"
    assert report["totals"]["synaptic_ops"] == 4
    assert "ann" not in report
    assert report["energy"]["45nm"]["ann_pj_per_token"] is None

    result = CliRunner().invoke(main, [
        "profile", str(tmp_path / "chain.net"), "--json"])
    assert result.exit_code == 2
    assert "--input" in result.stderr


def test_profile_bad_energy_model_exits_2(tmp_path):
    chain_file(tmp_path / "chain.net")
    result = CliRunner().invoke(main, [
        "profile", str(tmp_path / "chain.net"), "--energy-model", "nope"])
    assert result.exit_code == 2
    assert "unknown energy model 'nope'" in result.stderr


ACTIVE = ["token_shift=1", "attention_shift=0",
          "attention_position_shift=true", "threshold=0.5"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, shakespeare):
    """A tiny one-block decoder, trained for 6 steps and exported."""
    from neurodeploy.export import export_checkpoint
    from neurodeploy.spec import Spec, apply_overrides
    from neurodeploy.train import train

    folder = tmp_path_factory.mktemp("profile")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare[:20000], encoding="utf-8")
    spec = apply_overrides(Spec(name="tiny"), TINY + ACTIVE + ["steps=6"])
    train(spec, str(corpus), folder, progress=False)
    export_checkpoint(folder / "checkpoint.pt", folder / "model.net")
    return folder / "model.net"


@pytest.mark.timeout(120)
def test_profile_cli_lava_equals_reference(tiny_file, tmp_path):
    result = CliRunner().invoke(main, [
        "profile", str(tiny_file), "--prompt", "First", "--tokens", "2",
        "--csv", str(tmp_path / "p.csv"), "--plots", str(tmp_path / "plots"),
        "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts_match_reference"] is True
    assert report["count_differences"] == []
    assert report["tokens_run"] == 5 + 1  # prompt, then one fed-back token
    assert report["totals"]["synaptic_ops"] > 0
    assert report["totals"]["attention_qk"] > 0
    cmos = report["energy"]["45nm"]
    assert cmos["ann_pj_per_token"] == pytest.approx(
        report["ann"]["macs_per_token"] * 4.6)
    assert cmos["reduction_percent"] == pytest.approx(
        100 * (1 - cmos["snn_pj_per_token"] / cmos["ann_pj_per_token"]))
    assert report["energy"]["loihi"]["ann_pj_per_token"] is None
    assert (tmp_path / "p.csv").is_file()
    for name in ("firing_rate.png", "energy_by_layer.png", "snn_vs_ann.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.timeout(150)
def test_pipeline_tiny(tmp_path, shakespeare):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare[:20000], encoding="utf-8")
    overrides = []
    for assignment in TINY + ACTIVE:
        overrides += ["--set", assignment]
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "pipeline", "--model", "demo", "--corpus", str(corpus), "--out",
        str(out), "--steps", "4", "--tokens", "2", "--prompt", "First",
        *overrides, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    for number, stage in enumerate(
            ["train", "export", "verify", "generate", "profile"], 1):
        assert f"[{number}/5] {stage}:" in result.stderr
    for name in ("checkpoint.pt", "train.json", "model.net", "export.json",
                 "verify.json", "generated.txt", "profile.json",
                 "profile.csv", "plots/snn_vs_ann.png"):
        assert (out / name).is_file(), name
    profile = json.loads((out / "profile.json").read_text())
    assert profile["counts_match_reference"] is True
