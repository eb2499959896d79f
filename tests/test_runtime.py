"""Exported decoders on Lava: spikes against the Reference, KV cache, CLI."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy.cli import main
from neurodeploy.errors import NeurodeployError
from neurodeploy.export import export_checkpoint
from neurodeploy.model.neuron import cuba_lif
from neurodeploy.model.snn import attend
from neurodeploy.netx_read import load_network
from neurodeploy.reference import Reference, neuron_params
from neurodeploy.runtime.generate import Sampler, prompt_tokens
from neurodeploy.runtime.targets import load_target, target_names
from neurodeploy.spec import Spec, apply_overrides
from neurodeploy.train import train

from conftest import TINY

ACTIVE = ["token_shift=1", "attention_shift=0",
          "attention_position_shift=true", "threshold=0.5", "steps=6"]
PROMPT = "First"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, shakespeare):
    """A tiny one-block decoder (d_model 32, T 4, context 16), exported."""
    folder = tmp_path_factory.mktemp("runtime")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare[:20000], encoding="utf-8")
    spec = apply_overrides(Spec(name="tiny"), TINY + ACTIVE)
    train(spec, str(corpus), folder, progress=False)
    export_checkpoint(folder / "checkpoint.pt", folder / "model.net")
    return folder / "model.net"


def test_schedule_uses_lava_latencies(model_file):
    from neurodeploy.runtime.builder import plan_schedule

    network = load_network(model_file)
    schedule = plan_schedule(network)
    # encoder, attn entry, qkv, attention, mlp entry, mlp hidden
    assert schedule.starts == {0: 1, 1: 2, 2: 3, 3: 3, 4: 4, 5: 5}
    # The attention Process adds no step, so the encoder's residual input
    # to the MLP entry waits 2 steps, as the exported file records.
    assert schedule.delays[(4, 0)] == 2
    assert schedule.file_delays == schedule.delays
    assert schedule.delays[(4, 1)] == 0
    assert schedule.segment_length == 5 + network.time_steps - 1


@pytest.mark.timeout(120)
def test_lava_spikes_equal_reference(model_file):
    from neurodeploy.runtime.builder import LavaDecoder
    from neurodeploy.runtime.generate import generate, lava_backend

    network = load_network(model_file)
    reference = Reference(network)
    layers = [layer.index for layer in network.layers[1:]]
    tokens = prompt_tokens(network, PROMPT)
    decoder = LavaDecoder(network, load_target("loihi2-sim"), layers)
    try:
        result = generate(lava_backend(decoder), reference, tokens, 3,
                          Sampler())
    finally:
        decoder.close()

    fed = tokens + result.tokens[:-1]
    assert [step.token for step in result.steps] == fed
    _, expected = reference.run(torch.tensor([fed]))
    total = 0
    for position, step in enumerate(result.steps):
        assert step.position == position
        for index in layers:
            want = expected[index][position].numpy().astype(np.int8)
            assert np.array_equal(step.spikes[index], want), \
                f"token {position}, layer {index}"
            total += int(want.sum())
    assert total > 0


def run_attention_on_lava(spikes, heads, shift, position_shift, neuron,
                          time_steps):
    """Feed (P, 3C, T) spikes to SpikeAttention, one position per segment."""
    from neurodeploy.lava_compat import prepare_lava_import

    prepare_lava_import()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as SinkBuffer
    from lava.proc.io.source import RingBuffer as SourceBuffer

    from neurodeploy.runtime.attention.process import SpikeAttention

    positions, width, _ = spikes.shape
    channels = width // 3
    segment = time_steps + 1  # one idle step between positions
    data = np.zeros((width, positions * segment))
    for position in range(positions):
        start = position * segment
        data[:, start:start + time_steps] = spikes[position]
    source = SourceBuffer(data=data)
    attention = SpikeAttention(
        channels=channels, heads=heads, context=positions,
        time_steps=time_steps, shift=shift, position_shift=position_shift,
        i_decay=neuron["iDecay"], v_decay=neuron["vDecay"],
        v_th=neuron["vThMant"], window_start=1, segment_length=segment)
    sink = SinkBuffer(shape=(channels,), buffer=positions * segment)
    source.s_out.connect(attention.s_in)
    attention.s_out.connect(sink.a_in)
    try:
        source.run(condition=RunSteps(num_steps=positions * segment),
                   run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        output = sink.data.get()
        cached_position = int(attention.position.get()[0])
    finally:
        source.stop()
    rows = [output[:, p * segment:p * segment + time_steps]
            for p in range(positions)]
    return np.stack(rows).astype(np.int8), cached_position


@pytest.mark.timeout(60)
def test_attention_cache_equals_full_context():
    positions, channels, heads, time_steps = 6, 8, 2, 3
    neuron = {"iDecay": 4096, "vDecay": 1024, "vThMant": 40}
    generator = torch.Generator().manual_seed(3)
    spikes = (torch.rand(positions, 3 * channels, time_steps,
                         generator=generator) < 0.5).float()

    output, cached_position = run_attention_on_lava(
        spikes.numpy(), heads, 0, 1, neuron, time_steps)

    # The Reference recomputes attention over the whole context at once.
    drive = attend(spikes, 1, heads, 0, True)
    expected = cuba_lif(drive, neuron_params(neuron)).numpy()
    assert expected.sum() > 0
    assert cached_position == positions
    for position in range(positions):
        assert np.array_equal(output[position], expected[position]), \
            f"position {position}"


@pytest.mark.timeout(120)
def test_verify_cli_reports_full_agreement(model_file):
    result = CliRunner().invoke(main, [
        "verify", str(model_file), "--prompt", PROMPT, "--tokens", "2",
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["tokens_match"] is True
    assert report["agreement"] == 100.0
    assert report["first_divergence"] is None
    assert [row["agreement"] for row in report["layers"]] == [100.0] * 5


@pytest.mark.timeout(120)
def test_run_cli_json_summary(model_file):
    result = CliRunner().invoke(main, [
        "run", str(model_file), "--prompt", PROMPT, "--tokens", "3",
        "--temperature", "0.8", "--top-k", "5", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["tokens"]) == 3
    assert len(summary["text"]) == 3
    assert summary["steps_per_token"] == 8
    assert summary["tokens_per_second"] > 0


@pytest.mark.parametrize("arguments,message", [
    (["--prompt", "Fir~t§", "--tokens", "2"],
     r"characters outside the vocabulary: \['~', '§'\]"),
    (["--prompt", "", "--tokens", "2"], "the prompt is empty"),
    (["--prompt", "First", "--tokens", "0"], "invalid --tokens 0"),
    (["--prompt", "First", "--tokens", "-3"], "invalid --tokens -3"),
], ids=["outside-vocabulary", "empty-prompt", "zero-tokens",
        "negative-tokens"])
@pytest.mark.parametrize("command", ["run", "verify"])
def test_bad_input_exits_2(model_file, command, arguments, message):
    result = CliRunner().invoke(main, [command, str(model_file)] + arguments
                                + ["--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"]
    assert re.search(message, result.stderr), result.stderr


def test_unknown_target_exits_2(model_file):
    result = CliRunner().invoke(main, [
        "run", str(model_file), "--prompt", PROMPT, "--tokens", "2",
        "--target", "gpu"])
    assert result.exit_code == 2
    assert "unknown target 'gpu'; choose one of ['cpu', 'loihi2', " \
        "'loihi2-sim']" in result.stderr


def test_loihi2_without_extension_exits_2(model_file):
    result = CliRunner().invoke(main, [
        "run", str(model_file), "--prompt", PROMPT, "--tokens", "2",
        "--target", "loihi2"])
    assert result.exit_code == 2
    assert "needs the lava-loihi extension" in result.stderr
    assert "--target loihi2-sim" in result.stderr


@pytest.mark.parametrize("command", ["run", "verify"])
def test_invalid_file_exits_2(tmp_path, command):
    path = tmp_path / "notes.net"
    path.write_text("hello")
    result = CliRunner().invoke(main, [
        command, str(path), "--prompt", PROMPT, "--tokens", "2"])
    assert result.exit_code == 2
    assert "not a readable HDF5 file" in result.stderr


def test_long_prompt_keeps_last_context_tokens(model_file, caplog):
    network = load_network(model_file)
    context = network.spec.model.context
    text = "First Citizen: Before we proceed any further"
    with caplog.at_level("INFO"):
        tokens = prompt_tokens(network, text)
    assert tokens == network.tokenizer.encode(text[-context:])
    assert f"keeping the last {context}" in caplog.text


def test_targets_bundled():
    assert target_names() == ["cpu", "loihi2", "loihi2-sim"]
    assert load_target("loihi2-sim").fixed_point
    assert not load_target("cpu").fixed_point
    with pytest.raises(NeurodeployError, match="unknown target 'tpu'"):
        load_target("tpu")


def test_sampler_greedy_and_seeded():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    assert Sampler()(logits) == 1
    first = [Sampler(1.0, 2, seed=5)(logits) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed draws the same token
    draws = {Sampler(1.0, 2, seed=seed)(logits) for seed in range(20)}
    assert draws == {1, 2}  # top-2 keeps only tokens 1 and 2
