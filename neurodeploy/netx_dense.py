"""One Dense + CUBA-LIF layer in lava-dl's NetX HDF5 schema, run on Lava.

``write_dense_layer`` writes the layer as SLAYER's block ``export_hdf5``
does, ``reference_dense`` computes its spikes with SLAYER's fixed-point
CUBA arithmetic (as ``neurodeploy.model.neuron`` does) and
``run_netx_dense`` runs the file through ``lava.lib.dl.netx.hdf5.Network``
on ``Loihi2SimCfg(select_tag="fixed_pt")``. ``tests/test_netx_dense.py``
checks that the two agree spike for spike.

How lava-nc 0.10.0 and lava-dl 0.6.0 compute the layer at Lava time steps
t = 1, 2, ..., with state in units of 4096 per unit of float current, and
with ``>> 12`` dividing by 4096 and rounding towards zero as in SLAYER::

    a[t] = sum_j weight[i, j] * s_j[t - 1]    (a[1] = 0)
    u[t] = ((u[t-1] * (4096 - iDecay)) >> 12) + 64 * a[t]
    v[t] = ((v[t-1] * (4096 - vDecay)) >> 12) + u[t] + 64 * bias
    spike where v[t] > 64 * vThMant, then v[t] = 0

Weights reach the neuron at SLAYER's scale because NetX shifts them left by
``s`` bits and Lava's Dense shifts the sum right by ``s`` again. NetX
passes ``du = iDecay - 1`` and Lava's LIF adds 1 back. The bias also has
SLAYER's scale, but Lava adds it to the voltage, where SLAYER adds it to
the current, so ``write_dense_layer`` accepts a bias only with
iDecay = 4096. Lava's Dense adds one step of latency, and during that step
the neuron integrates the bias alone. ``run_netx_dense`` compensates for
both.
"""

from __future__ import annotations

from os import PathLike

import h5py
import numpy as np

from .errors import NeurodeployError
from .lava_compat import prepare_lava_import

WEIGHT_MIN = -256  # SLAYER's quantize_8bit(w, descale=True) range
WEIGHT_MAX = 254
# lava/proc/lif/models.py (lava-nc 0.10.0) documents a signed 13-bit
# bias_mant and an unsigned 17-bit vth, but its Python models do not
# check them.
BIAS_MIN = -(1 << 12)
BIAS_MAX = (1 << 12) - 1
THRESHOLD_MAX = (1 << 17) - 1
DECAY_UNITY = 1 << 12  # iDecay and vDecay are fractions of 4096
STATE_SHIFT = 6  # u, v and the threshold carry 6 more bits than a weight
NEURON_KEYS = ("iDecay", "vDecay", "vThMant")

# Time steps by which Lava's Dense delays its input: PyDenseModelBitAcc
# (lava/proc/dense/models.py) sends the sum it buffered one step earlier.
LAVA_LATENCY = 1


def write_dense_layer(path: str | PathLike, weight: np.ndarray,
                      bias: np.ndarray | None, neuron: dict) -> None:
    """Write a NetX file with an input layer and one Dense + CUBA layer.

    ``weight`` (C_out, C_in) and ``bias`` (C_out,) hold SLAYER's integer
    mantissas, 64 times the float values, so the layer adds
    ``(weight @ s + bias) / 64`` to the CUBA current. ``neuron`` maps
    ``iDecay`` and ``vDecay`` (0 to 4096) and ``vThMant`` to ints.
    The layout follows lava-dl 0.6.0's ``slayer/block/base.py``.
    ``layer/0`` has ``type`` b"input" and ``shape`` [C_in]. ``layer/1`` has
    ``type`` b"dense", ``shape`` [C_out], ``weight``, ``bias`` unless it is
    None, and ``neuron/`` with ``type`` "CUBA", the three ``neuron`` values,
    ``refDelay`` 1 and ``gradedSpike`` False.

    Raises NeurodeployError for an invalid value and for a layer that Lava
    would not run exactly as SLAYER does: an all-zero weight matrix, weights
    that Lava's Dense would change, or a non-zero bias with iDecay < 4096.
    """
    weight = _weight_matrix(weight)
    bias = _bias_vector(bias, weight.shape[0])
    neuron = _neuron_params(neuron)
    _check_lava_weight(weight)

    # NetX (lava/lib/dl/netx/hdf5.py) hands the bias to LIF as bias_mant
    # with bias_exp 6, which LIF adds to the voltage every step. SLAYER adds
    # it to the current, and the two agree only when the current keeps
    # nothing from one step to the next.
    if bias is not None and bias.any() and neuron["iDecay"] != DECAY_UNITY:
        raise NeurodeployError(
            f"a non-zero bias needs iDecay={DECAY_UNITY}, got "
            f"iDecay={neuron['iDecay']}: NetX adds the bias to the voltage "
            "and SLAYER adds it to the current, so Lava would compute "
            "different spikes. Train with current_decay=1.0 or drop the bias"
        )

    with h5py.File(path, "w") as file:
        layers = file.create_group("layer")

        # No neuron in the input layer, so NetX creates no process for it
        # and connects the network's input port straight to the Dense.
        input_layer = layers.create_group("0")
        input_layer.create_dataset("type", (1,), "S10", [b"input"])
        input_layer.create_dataset("shape", data=np.array([weight.shape[1]]))

        dense = layers.create_group("1")
        dense.create_dataset("type", (1,), "S10", [b"dense"])
        dense.create_dataset("shape", data=np.array([weight.shape[0]]))
        dense.create_dataset("weight", data=weight.astype(np.int16))
        if bias is not None:
            dense.create_dataset("bias", data=bias.astype(np.int16))

        dense.create_dataset("neuron/type", data="CUBA")
        for key in NEURON_KEYS:
            dense.create_dataset(f"neuron/{key}", data=neuron[key])
        # SLAYER's CUBA device_params fix these two, and NetX reads neither.
        dense.create_dataset("neuron/refDelay", data=1)
        dense.create_dataset("neuron/gradedSpike", data=False)


def reference_dense(weight: np.ndarray, bias: np.ndarray | None,
                    neuron: dict, spikes: np.ndarray) -> np.ndarray:
    """Compute the layer's output spikes with SLAYER's CUBA arithmetic.

    Takes the arguments of ``write_dense_layer`` and input ``spikes``
    (C_in, T) of 0 and 1, and returns int8 spikes (C_out, T). Output step t
    depends on input steps up to t, with no delay.

    NOTE: the state is int64 in units of 4096 per unit of current. Lava
    wraps u and clips v at 24 bits (lava/proc/lif/models.py), so the two
    agree only while |u| and |v| stay below 2**23.
    """
    weight = _weight_matrix(weight)
    bias = _bias_vector(bias, weight.shape[0])
    neuron = _neuron_params(neuron)
    spikes = _spike_matrix(spikes, weight.shape[1])

    # 4096 * x[t] with x = (weight @ s + bias) / 64, exact in integers.
    synaptic = weight @ spikes
    if bias is not None:
        synaptic += bias[:, None]
    drive = synaptic << STATE_SHIFT

    current_keep = DECAY_UNITY - neuron["iDecay"]
    voltage_keep = DECAY_UNITY - neuron["vDecay"]
    threshold = neuron["vThMant"] << STATE_SHIFT

    current = np.zeros(weight.shape[0], dtype=np.int64)
    voltage = np.zeros(weight.shape[0], dtype=np.int64)
    output = np.zeros((weight.shape[0], spikes.shape[1]), dtype=np.int8)
    for t in range(spikes.shape[1]):
        current = _decay(current, current_keep) + drive[:, t]
        voltage = _decay(voltage, voltage_keep) + current
        fired = voltage > threshold
        output[:, t] = fired
        voltage[fired] = 0
    return output


def run_netx_dense(path: str | PathLike, spikes: np.ndarray,
                   steps: int | None = None) -> np.ndarray:
    """Run a ``write_dense_layer`` file on Lava and return its output spikes.

    Feeds ``spikes[:, :steps]`` of 0 and 1 through
    ``lava.proc.io.source.RingBuffer`` into ``netx.hdf5.Network`` on
    ``Loihi2SimCfg(select_tag="fixed_pt")``, where ``spikes`` is (C_in, T)
    and ``steps`` defaults to T. Returns int8 spikes (C_out, steps),
    aligned with ``reference_dense``.

    Lava's Dense delays its input by one step (``LAVA_LATENCY``), so this
    runs ``steps + 1`` Lava steps, with no input in the last one, and drops
    the first output step. In that first step LIF integrates only its bias,
    may spike, and would carry the voltage into the next step. To stop
    that, this passes reset_offset=1 to NetX, which then builds the neuron
    as LIFReset and zeroes u and v once, at the start of Lava step 2. From
    there on, Lava step t + 2 computes reference step t (t from 0).
    """
    # Importing lava.lib.dl.netx takes seconds, so only callers that use
    # Lava pay for it.
    prepare_lava_import()
    from lava.lib.dl.netx.hdf5 import Network
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as SinkBuffer
    from lava.proc.io.source import RingBuffer as SourceBuffer

    spikes = _spike_matrix(spikes)
    if steps is None:
        steps = spikes.shape[1]
    if not 1 <= steps <= spikes.shape[1]:
        raise NeurodeployError(
            f"invalid steps={steps}; it must be between 1 and the "
            f"{spikes.shape[1]} time steps of the input spikes"
        )
    lava_steps = steps + LAVA_LATENCY

    # Lava's source RingBuffer sends column t - 1 at time step t (1-based)
    # and wraps around, so the extra last step gets a column of zeros.
    drive = np.zeros((spikes.shape[0], lava_steps), dtype=np.int32)
    drive[:, :steps] = spikes[:, :steps]

    # NetX gives the first layer with a neuron the offset reset_offset + 1,
    # so reset_offset=1 resets at time step 2. LIFReset (lava/proc/lif/
    # models.py) resets where time_step % reset_interval equals that offset.
    # An interval above lava_steps makes step 2 the only reset.
    network = Network(net_config=str(path), reset_interval=lava_steps + 1,
                      reset_offset=1)
    try:
        if network.inp.shape != (spikes.shape[0],):
            raise NeurodeployError(
                f"input spikes have {spikes.shape[0]} channels but {path} "
                f"expects {network.inp.shape[0]}"
            )
        source = SourceBuffer(data=drive)
        sink = SinkBuffer(shape=network.out.shape, buffer=lava_steps)
        source.s_out.connect(network.inp)
        network.out.connect(sink.a_in)

        network.run(condition=RunSteps(num_steps=lava_steps),
                    run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        output = sink.data.get()
    finally:
        network.stop()
        network.net_config.f.close()

    return output[:, LAVA_LATENCY:].astype(np.int8)


def _decay(state: np.ndarray, keep: int) -> np.ndarray:
    """Multiply by keep / 4096 and round towards zero, as SLAYER and Lava do."""
    product = state * keep
    return np.sign(product) * (np.abs(product) >> 12)


def _check_lava_weight(weight: np.ndarray) -> None:
    """Raise unless Lava's Dense sums exactly ``weight``, in SLAYER's scale.

    Replays what NetX (lava/lib/dl/netx/utils.py, optimize_weight_bits)
    and Lava's fixed-point Dense (lava/proc/dense/models.py,
    PyDenseModelBitAcc.run_spk) do to the weights. NetX shifts them left by
    s bits and sets weight_exp = -s. Lava clips and truncates them, and
    shifts each sum right by s. The result is exact when the clipped and
    truncated weights still equal ``weight << s``.
    """
    prepare_lava_import()
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import (clip_weights, determine_sign_mode,
                                        truncate_weights)

    # optimize_weight_bits divides by the largest weight, so an all-zero
    # matrix ends in OverflowError (lava-dl 0.6.0).
    if not weight.any():
        raise NeurodeployError(
            "the weight matrix is all zero, which NetX cannot load"
        )

    with np.errstate(divide="ignore"):  # 127 / 0 when no weight is positive
        shifted, weight_bits, weight_exp, _ = optimize_weight_bits(weight)
    sign_mode = determine_sign_mode(shifted)
    lava_weight = clip_weights(shifted, sign_mode, num_bits=8)
    lava_weight = truncate_weights(lava_weight, sign_mode, weight_bits)

    # NOTE: when no weight is positive, lava-nc 0.10.0's clip_weights caps
    # magnitudes at 255. NetX shifts a minimum of minus a power of two to
    # -256, so Lava runs a different layer and this check rejects it.
    if weight_exp > 0 or not np.array_equal(
            lava_weight, weight << -weight_exp):
        changed = np.argwhere(lava_weight != weight << max(-weight_exp, 0))
        raise NeurodeployError(
            "Lava's Dense would change these weights (row, column): "
            f"{changed[:5].tolist()}; this happens in lava-nc 0.10.0 when "
            "no weight is positive and the minimum is minus a power of two"
        )


def _weight_matrix(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.size == 0:
        raise NeurodeployError(
            f"expected a weight matrix of shape (C_out, C_in), got shape "
            f"{weight.shape}"
        )
    return _mantissas(weight, "weights", WEIGHT_MIN, WEIGHT_MAX)


def _bias_vector(bias: np.ndarray | None, channels: int) -> np.ndarray | None:
    if bias is None:
        return None
    bias = np.asarray(bias)
    if bias.shape != (channels,):
        raise NeurodeployError(
            f"expected a bias of shape ({channels},), got shape {bias.shape}"
        )
    return _mantissas(bias, "the bias", BIAS_MIN, BIAS_MAX)


def _mantissas(values: np.ndarray, what: str, low: int,
               high: int) -> np.ndarray:
    """Check integer mantissas (64 times the float values) in [low, high]."""
    if not np.array_equal(values, np.round(values)):
        raise NeurodeployError(
            f"{what} must be integer mantissas (64 times the float values), "
            f"got {values[values != np.round(values)][0]}"
        )
    values = values.astype(np.int64)
    if values.min() < low or values.max() > high:
        raise NeurodeployError(
            f"{what} must lie in [{low}, {high}], got "
            f"[{values.min()}, {values.max()}]"
        )
    return values


def _neuron_params(neuron: dict) -> dict:
    if set(neuron) != set(NEURON_KEYS):
        raise NeurodeployError(
            f"neuron must have exactly the keys {list(NEURON_KEYS)}, got "
            f"{sorted(neuron)}"
        )
    params = {}
    for key in NEURON_KEYS:
        value = neuron[key]
        if isinstance(value, bool) or int(value) != value:
            raise NeurodeployError(
                f"invalid neuron {key}={value!r}; expected an int"
            )
        params[key] = int(value)

    for key in ("iDecay", "vDecay"):
        if not 0 <= params[key] <= DECAY_UNITY:
            raise NeurodeployError(
                f"invalid {key}={params[key]}; it must be between 0 and "
                f"{DECAY_UNITY}"
            )
    if not 0 <= params["vThMant"] <= THRESHOLD_MAX:
        raise NeurodeployError(
            f"invalid vThMant={params['vThMant']}; it must be between 0 and "
            f"{THRESHOLD_MAX}"
        )
    return params


def _spike_matrix(spikes: np.ndarray, channels: int | None = None
                  ) -> np.ndarray:
    spikes = np.asarray(spikes)
    if spikes.ndim != 2 or spikes.shape[1] == 0:
        raise NeurodeployError(
            f"expected spikes of shape (C_in, T) with T >= 1, got shape "
            f"{spikes.shape}"
        )
    if channels is not None and spikes.shape[0] != channels:
        raise NeurodeployError(
            f"spikes have {spikes.shape[0]} channels but the weight matrix "
            f"has {channels} inputs"
        )
    if not np.isin(spikes, (0, 1)).all():
        raise NeurodeployError("spikes must contain only 0 and 1")
    return spikes.astype(np.int64)
