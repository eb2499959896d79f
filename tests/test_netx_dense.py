"""A NetX Dense + CUBA layer run on Lava against SLAYER's arithmetic."""

import h5py
import numpy as np
import pytest

from neurodeploy.errors import NeurodeployError
from neurodeploy.netx_dense import (_decay, reference_dense, run_netx_dense,
                                    write_dense_layer)

C_IN, C_OUT, STEPS = 12, 8, 20


def random_layer(seed, with_bias):
    """Return even weights in [-256, 254], a bias or None, and input spikes."""
    rng = np.random.default_rng(seed)
    weight = 2 * rng.integers(-128, 128, size=(C_OUT, C_IN))
    bias = rng.integers(-40, 120, size=C_OUT) if with_bias else None
    spikes = (rng.random((C_IN, STEPS)) < 0.4).astype(np.int8)
    return weight, bias, spikes


# Files and reference arithmetic, without Lava.

def test_writer_schema(tmp_path):
    weight, bias, _ = random_layer(0, with_bias=True)
    neuron = {"iDecay": 4096, "vDecay": 1024, "vThMant": 150}
    path = tmp_path / "layer.net"

    write_dense_layer(path, weight, bias, neuron)

    with h5py.File(path, "r") as file:
        assert sorted(file["layer"]) == ["0", "1"]
        assert list(file["layer/0/type"][()]) == [b"input"]
        assert list(file["layer/0/shape"][()]) == [C_IN]
        assert sorted(file["layer/0"]) == ["shape", "type"]

        dense = file["layer/1"]
        assert list(dense["type"][()]) == [b"dense"]
        assert list(dense["shape"][()]) == [C_OUT]
        assert np.issubdtype(dense["weight"].dtype, np.integer)
        assert np.array_equal(dense["weight"][()], weight)
        assert np.array_equal(dense["bias"][()], bias)
        assert dense["neuron/type"][()] == b"CUBA"
        assert dense["neuron/iDecay"][()] == 4096
        assert dense["neuron/vDecay"][()] == 1024
        assert dense["neuron/vThMant"][()] == 150
        assert dense["neuron/refDelay"][()] == 1
        assert not dense["neuron/gradedSpike"][()]


def test_writer_omits_missing_bias(tmp_path):
    weight, _, _ = random_layer(0, with_bias=False)
    path = tmp_path / "layer.net"

    write_dense_layer(path, weight, None,
                      {"iDecay": 1024, "vDecay": 128, "vThMant": 100})

    with h5py.File(path, "r") as file:
        assert "bias" not in file["layer/1"]


def test_decay_rounds_towards_zero():
    state = np.array([-5, 5, -4097, 4097], dtype=np.int64)

    assert _decay(state, 2048).tolist() == [-2, 2, -2048, 2048]


def test_reference_current_decay_by_hand():
    # The drive is 64 * 64 at t=0, u halves each step and v integrates u
    # without leak: v = 4096, 6144, 7168 > 100 * 64 (spike, reset), 512.
    neuron = {"iDecay": 2048, "vDecay": 0, "vThMant": 100}
    spikes = np.array([[1, 0, 0, 0]])

    output = reference_dense(np.array([[64]]), None, neuron, spikes)

    assert output.tolist() == [[0, 0, 1, 0]]


def test_reference_bias_by_hand():
    # With no input spikes, bias 100 sets u = 6400 each step and v leaks a
    # quarter per step: v = 6400, 11200 > 150 * 64 (spike, reset), 6400.
    neuron = {"iDecay": 4096, "vDecay": 1024, "vThMant": 150}
    spikes = np.zeros((3, 6), dtype=np.int8)

    output = reference_dense(np.array([[2, -2, 4]]), np.array([100]), neuron,
                             spikes)

    assert output.tolist() == [[0, 1, 0, 1, 0, 1]]


@pytest.mark.parametrize("weight, bias, neuron, message", [
    (np.array([[2, 4]]), np.array([1]),
     {"iDecay": 1024, "vDecay": 128, "vThMant": 10}, "needs iDecay=4096"),
    (np.zeros((2, 3)), None,
     {"iDecay": 4096, "vDecay": 128, "vThMant": 10}, "all zero"),
    (np.array([[-4, -2], [-2, 0]]), None,
     {"iDecay": 4096, "vDecay": 128, "vThMant": 10}, "would change"),
    (np.array([[256, 0]]), None,
     {"iDecay": 4096, "vDecay": 128, "vThMant": 10}, r"\[-256, 254\]"),
    (np.array([[2.5, 0]]), None,
     {"iDecay": 4096, "vDecay": 128, "vThMant": 10}, "integer mantissas"),
    (np.array([[2, 0]]), None,
     {"iDecay": 4097, "vDecay": 128, "vThMant": 10}, "invalid iDecay"),
    (np.array([[2, 0]]), None,
     {"iDecay": 4096, "vThMant": 10}, "exactly the keys"),
], ids=["bias-current-decay", "all-zero", "non-positive", "range",
        "fraction", "decay", "missing-key"])
def test_writer_rejects_invalid_layer(tmp_path, weight, bias, neuron,
                                      message):
    path = tmp_path / "layer.net"

    with pytest.raises(NeurodeployError, match=message):
        write_dense_layer(path, weight, bias, neuron)

    assert not path.exists()


def test_writer_accepts_mixed_signs_with_minimum(tmp_path):
    # Mixed signs keep -256; only matrices with no positive weight lose it.
    weight = np.array([[-256, 254], [2, -2]])
    path = tmp_path / "layer.net"

    write_dense_layer(path, weight, None,
                      {"iDecay": 4096, "vDecay": 4096, "vThMant": 0})

    with h5py.File(path, "r") as file:
        assert np.array_equal(file["layer/1/weight"][()], weight)


# Lava runs. Each starts Lava's runtime, which can hang.

def reference_and_lava(tmp_path, weight, bias, neuron, spikes):
    """Output spikes of one layer from the reference and from Lava."""
    path = tmp_path / "layer.net"
    write_dense_layer(path, weight, bias, neuron)
    return (reference_dense(weight, bias, neuron, spikes),
            run_netx_dense(path, spikes, STEPS))


@pytest.mark.timeout(120)
def test_lava_matches_reference_with_bias(tmp_path):
    weight, bias, spikes = random_layer(1, with_bias=True)
    neuron = {"iDecay": 4096, "vDecay": 1024, "vThMant": 150}

    expected, actual = reference_and_lava(tmp_path, weight, bias, neuron,
                                          spikes)

    assert expected.sum() > 0
    assert expected.sum() < expected.size
    assert actual.shape == (C_OUT, STEPS)
    assert np.array_equal(actual, expected)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("i_decay, v_decay", [
    (1024, 128), (3500, 40), (0, 4096),
])
def test_lava_matches_reference_decays(tmp_path, i_decay, v_decay):
    weight, _, spikes = random_layer(2, with_bias=False)
    neuron = {"iDecay": i_decay, "vDecay": v_decay, "vThMant": 150}

    expected, actual = reference_and_lava(tmp_path, weight, None, neuron,
                                          spikes)

    assert expected.sum() > 0
    assert expected.sum() < expected.size
    assert np.array_equal(actual, expected)


@pytest.mark.timeout(120)
def test_lava_bias_first_step(tmp_path):
    # Lava's first step integrates the bias alone. Without the reset at
    # step 2 this neuron would spike at t = 0, 2, 4 instead of 1, 3, 5.
    weight = np.array([[2, -2, 4]])
    bias = np.array([100])
    neuron = {"iDecay": 4096, "vDecay": 1024, "vThMant": 150}
    spikes = np.zeros((3, 6), dtype=np.int8)
    path = tmp_path / "layer.net"
    write_dense_layer(path, weight, bias, neuron)

    actual = run_netx_dense(path, spikes)

    assert actual.tolist() == [[0, 1, 0, 1, 0, 1]]


@pytest.mark.timeout(120)
def test_lava_runs_fewer_steps(tmp_path):
    weight, bias, spikes = random_layer(3, with_bias=True)
    neuron = {"iDecay": 4096, "vDecay": 2048, "vThMant": 120}
    path = tmp_path / "layer.net"
    write_dense_layer(path, weight, bias, neuron)

    expected = reference_dense(weight, bias, neuron, spikes)[:, :7]
    actual = run_netx_dense(path, spikes, 7)

    assert expected.sum() > 0
    assert actual.shape == (C_OUT, 7)
    assert np.array_equal(actual, expected)


@pytest.mark.timeout(120)
def test_lava_rejects_wrong_channels(tmp_path):
    weight, _, spikes = random_layer(0, with_bias=False)
    path = tmp_path / "layer.net"
    write_dense_layer(path, weight, None,
                      {"iDecay": 4096, "vDecay": 128, "vThMant": 100})

    with pytest.raises(NeurodeployError, match="expects 12"):
        run_netx_dense(path, spikes[:5], STEPS)
