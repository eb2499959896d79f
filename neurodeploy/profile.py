"""Count spikes and operations per layer, time step and token.

Counts come from the spikes of a run (Lava or the Reference), never from
timing, so the same spikes give the same counts on any machine. For one
token and model time step t:

- ``spikes[l, t]``: spikes of layer l (the encoder's too, for its rate).
- ``synaptic_ops[l, t]``: for each input (s, synapse) of layer l,
  ``sum_c fanout[c] * spikes_s[c, t]``, where ``fanout[c]`` is the number
  of non-zero weights in column c of the synapse (1 for an identity).
  The identity from a qkv layer into an attention layer is no synapse
  (Lava connects the two ports directly), so it counts no synaptic ops.
- ``attention_qk[l, t]`` and ``attention_av[l, t]`` for an attention layer
  at query position i, summed over heads h with A[j] = Q_i,h . K_j,h:
  ``qk = sum_{j<=i} A[j]`` (one accumulate per coincident Q and K spike),
  ``av = sum_{j<=i} [A[j] > 0] * |V_j,h|`` (one accumulate of A[j] per V
  spike of a position with a non-zero score).
- ``neuron_updates[l, t]``: the layer's neurons (0 for the encoder and
  other layers without neurons).

Arrays are int64 of shape (tokens, rows, T). ``docs/energy.md`` has the
formulas and what is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NeurodeployError
from .netx_read import Network

COUNTERS = ("spikes", "synaptic_ops", "attention_qk", "attention_av",
            "neuron_updates")


@dataclass
class Row:
    """One row of the counters: a layer of the file, or the external input.

    ``neurons`` is 0 for rows without neurons (encoder, input, flatten),
    whose ``channels`` still emit spikes.
    """

    index: int | None
    name: str
    kind: str
    neurons: int
    channels: int


@dataclass
class Profile:
    """Counts of a run: ``counts[kind]`` is (tokens, rows, T) int64."""

    rows: list[Row]
    time_steps: int
    positions: list[int]
    counts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.positions)

    def total(self, kind: str) -> np.ndarray:
        """Return the counts of ``kind`` summed over tokens and steps: (rows,)."""
        return self.counts[kind].sum(axis=(0, 2))

    def firing_rates(self) -> np.ndarray:
        """Return spikes per channel and time step of each row: (rows,)."""
        slots = np.array([row.channels for row in self.rows], dtype=float) \
            * self.time_steps * max(self.tokens, 1)
        return self.total("spikes") / np.maximum(slots, 1)

    def operation_counts(self, row: int | None = None) -> dict[str, int]:
        """Return totals per energy operation kind, for one row or all rows.

        ``spike`` counts only spikes of neuron layers: encoder and external
        input spikes come from the host.
        """
        def pick(kind):
            totals = self.total(kind)
            return int(totals.sum() if row is None else totals[row])

        fired = self.total("spikes") * np.array(
            [r.kind not in ("encoder", "input") for r in self.rows])
        return {
            "synaptic_op": pick("synaptic_ops"),
            "attention_accumulate": pick("attention_qk")
            + pick("attention_av"),
            "neuron_update": pick("neuron_updates"),
            "spike": int(fired.sum() if row is None else fired[row]),
        }


def fanouts(network: Network) -> dict[str, np.ndarray]:
    """Return the non-zero weights per input column of every synapse."""
    return {name: np.count_nonzero(weight, axis=0).astype(np.int64)
            for name, (weight, _) in network.synapses.items()}


def profile_steps(network: Network, steps) -> Profile:
    """Count the operations of a decoder run from its ``TokenStep``s.

    Every step must hold the spikes (C, T) of every layer, the encoder's
    included (``generate`` adds them). Steps come in generation order: a
    step at position 0 restarts the attention caches.
    """
    if network.kind != "decoder":
        raise NeurodeployError(
            f"{network.path}: profile_steps needs a decoder file; use "
            "profile_chain for plain NetX chains")
    layers = network.layers
    rows = [Row(layer.index, layer.name, layer.kind,
                layer.channels if layer.neuron else 0, layer.channels)
            for layer in layers]
    time_steps = network.time_steps
    columns = fanouts(network)
    counts = {kind: np.zeros((len(steps), len(rows), time_steps), np.int64)
              for kind in COUNTERS}
    caches: dict[int, list[np.ndarray]] = {}

    for number, step in enumerate(steps):
        if step.position == 0:
            caches = {}
        for layer in layers:
            spikes = _spikes_of(step, layer.index, layer.channels, time_steps)
            counts["spikes"][number, layer.index] = spikes.sum(axis=0)
            if layer.neuron:
                counts["neuron_updates"][number, layer.index] = \
                    layer.channels
            if layer.kind == "attention":
                qk, av = _attention_counts(layer, step, caches, time_steps)
                counts["attention_qk"][number, layer.index] = qk
                counts["attention_av"][number, layer.index] = av
                continue
            for source, synapse, _ in layer.inputs:
                incoming = _spikes_of(step, source,
                                      layers[source].channels, time_steps)
                counts["synaptic_ops"][number, layer.index] += \
                    _synaptic_ops(incoming, columns.get(synapse))
    return Profile(rows, time_steps, [step.position for step in steps],
                   counts)


def _spikes_of(step, index: int, channels: int, time_steps: int
               ) -> np.ndarray:
    if index not in step.spikes:
        raise NeurodeployError(
            f"the run recorded no spikes of layer {index}; record every "
            "layer to profile it")
    spikes = np.asarray(step.spikes[index], dtype=np.int64)
    if spikes.shape != (channels, time_steps):
        raise NeurodeployError(
            f"spikes of layer {index} have shape {spikes.shape}, expected "
            f"{(channels, time_steps)}")
    return spikes


def _synaptic_ops(spikes: np.ndarray, fanout: np.ndarray | None
                  ) -> np.ndarray:
    """Return sum_c fanout[c] * spikes[c, t] per step; None is the identity."""
    if fanout is None:
        return spikes.sum(axis=0)
    return fanout @ spikes


def _attention_counts(layer, step, caches, time_steps: int):
    """Return (qk, av) per time step for the attention layer at this step."""
    source = layer.inputs[0][0]
    qkv = np.asarray(step.spikes[source], dtype=np.int64)
    channels = layer.channels
    heads = int(layer.attrs["heads"])
    width = channels // heads
    cache = caches.setdefault(layer.index, [])
    cache.append(qkv)
    if len(cache) != step.position + 1:
        raise NeurodeployError(
            f"token at position {step.position} follows {len(cache) - 1} "
            "cached positions; profile steps in generation order from "
            "position 0")

    stacked = np.stack(cache)  # (P, 3C, T)
    positions = stacked.shape[0]
    query = qkv[:channels].reshape(heads, width, time_steps)
    keys = stacked[:, channels:2 * channels].reshape(
        positions, heads, width, time_steps)
    values = stacked[:, 2 * channels:].reshape(
        positions, heads, width, time_steps)
    scores = np.einsum("hdt,phdt->pht", query, keys)  # A[j] per head, step
    qk = scores.sum(axis=(0, 1))
    av = ((scores > 0) * values.sum(axis=2)).sum(axis=(0, 1))
    return qk, av


def compare_profiles(first: Profile, second: Profile) -> list[dict]:
    """Return every (counter, row) whose counts differ in any token or step.

    Each entry contains the two totals of that row. The totals may be
    equal when only the distribution over tokens or steps differs.
    """
    if first.positions != second.positions:
        return [{"counter": "positions", "row": None,
                 "first": len(first.positions),
                 "second": len(second.positions)}]
    differences = []
    for kind in COUNTERS:
        unequal = (first.counts[kind] != second.counts[kind]).any(axis=(0, 2))
        for row in np.flatnonzero(unequal):
            differences.append({
                "counter": kind, "row": int(row),
                "first": int(first.total(kind)[row]),
                "second": int(second.total(kind)[row])})
    return differences


def profile_chain(network: Network, spikes: np.ndarray) -> Profile:
    """Count a plain NetX chain's operations for one input sample.

    ``spikes`` (C_in, T) of 0 and 1 feed the first layer. Each dense layer
    is computed with ``neurodeploy.netx_dense.reference_dense`` (SLAYER's
    fixed-point CUBA arithmetic, no delay between layers), so output step
    t depends on input steps up to t. ``input`` and ``flatten`` layers pass
    spikes through. Any other layer type raises NeurodeployError.
    """
    from .netx_dense import NEURON_KEYS, reference_dense

    spikes = np.asarray(spikes)
    if spikes.ndim != 2:
        raise NeurodeployError(
            f"input spikes have shape {spikes.shape}; expected (neurons, "
            "time)")
    if not np.isin(spikes, (0, 1)).all():
        raise NeurodeployError("input spikes must be 0 or 1")
    spikes = spikes.astype(np.int64)
    time_steps = spikes.shape[1]

    rows = [Row(None, "input", "input", 0, spikes.shape[0])]
    outputs = [spikes]
    synaptic = [np.zeros(time_steps, np.int64)]
    for layer in network.layers:
        previous = outputs[-1]
        if layer.kind in ("input", "flatten"):
            if layer.kind == "input" and layer.channels != previous.shape[0]:
                raise NeurodeployError(
                    f"layer {layer.index} ({layer.kind}) has "
                    f"{layer.channels} channels, but the input spikes have "
                    f"{previous.shape[0]}")
            rows.append(Row(layer.index, layer.name, layer.kind, 0,
                            previous.shape[0]))
            outputs.append(previous)
            synaptic.append(np.zeros(time_steps, np.int64))
            continue
        if layer.kind != "dense" or not layer.neuron \
                or layer.neuron.get("unsupported"):
            raise NeurodeployError(
                f"{network.path}: layer {layer.index} is {layer.kind!r}; "
                "profile runs chains of dense CUBA layers only")
        weight = np.asarray(layer.weight, dtype=np.int64)
        if weight.shape[1] != previous.shape[0]:
            hint = (f"; give input spikes of shape ({weight.shape[1]}, time "
                    "steps), neurons first" if layer.index == 0 else "")
            raise NeurodeployError(
                f"layer {layer.index} takes {weight.shape[1]} inputs, but "
                f"its source has {previous.shape[0]} channels{hint}")
        neuron = {key: layer.neuron[key] for key in NEURON_KEYS}
        fired = reference_dense(weight, layer.bias, neuron,
                                previous).astype(np.int64)
        rows.append(Row(layer.index, layer.name, layer.kind, layer.channels,
                        layer.channels))
        outputs.append(fired)
        synaptic.append(_synaptic_ops(
            previous, np.count_nonzero(weight, axis=0)))

    counts = {kind: np.zeros((1, len(rows), time_steps), np.int64)
              for kind in COUNTERS}
    for number, row in enumerate(rows):
        counts["spikes"][0, number] = outputs[number].sum(axis=0)
        counts["synaptic_ops"][0, number] = synaptic[number]
        counts["neuron_updates"][0, number] = row.neurons
    return Profile(rows, time_steps, [0], counts)
