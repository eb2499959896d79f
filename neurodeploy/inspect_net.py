"""Summaries of a loaded NetX file for ``neurodeploy inspect``."""

from __future__ import annotations

import numpy as np

from .netx_read import RUNNABLE_TYPES, Network, NetLayer


def describe(network: Network) -> dict:
    """Return a JSON-ready description: one row per layer and totals."""
    rows = [_row(network, layer) for layer in network.layers]
    summary = {
        "file": str(network.path),
        "kind": network.kind,
        "format_version": network.format_version or None,
        "time_steps": network.time_steps or None,
        "layers": rows,
        "totals": {
            "layers": len(rows),
            "neurons": sum(r["neurons"] for r in rows),
            "synapses": sum(r["synapses"] for r in rows),
            "not_runnable": [r["index"] for r in rows if not r["runnable"]],
        },
    }
    if network.spec is not None:
        summary["model"] = network.spec.to_dict()["model"]
        summary["vocab_size"] = network.tokenizer.vocab_size
    return summary


def _row(network: Network, layer: NetLayer) -> dict:
    # A plain NetX chain: each weighted layer reads the layer before it, and
    # the first one reads the network's input (source -1).
    inputs = layer.inputs or ([(layer.index - 1, "weight", 0)]
                              if layer.weight is not None else [])
    synapses = 0
    for source, synapse, _ in inputs:
        if synapse == "identity":
            synapses += network.layers[source].channels
        elif source < 0 or synapse == "weight":
            synapses += int(np.count_nonzero(layer.weight))
        else:
            synapses += int(np.count_nonzero(network.synapses[synapse][0]))
    if layer.kind == "attention":
        synapses = 0  # coincidence counts, not synapses: see the profiler

    neuron = layer.neuron or {}
    runnable = layer.kind in RUNNABLE_TYPES and not neuron.get("unsupported")
    row = {
        "index": layer.index,
        "name": layer.name,
        "type": layer.kind,
        "shape": list(layer.shape),
        "neurons": layer.channels if layer.neuron else 0,
        "synapses": synapses,
        "weight_bits": 8 if synapses and layer.kind != "encoder" else None,
        "inputs": [
            {"layer": source, "synapse": synapse, "delay": delay}
            for source, synapse, delay in inputs],
        "runnable": runnable,
    }
    if "vThMant" in neuron:
        row["neuron"] = {
            "type": neuron["type"],
            "threshold": neuron["vThMant"] / 64,
            "current_decay": neuron["iDecay"] / 4096,
            "voltage_decay": neuron["vDecay"] / 4096,
            "vThMant": neuron["vThMant"], "iDecay": neuron["iDecay"],
            "vDecay": neuron["vDecay"],
        }
    if layer.kind == "attention":
        row["attention"] = {k: int(layer.attrs[k]) for k in
                            ("heads", "shift", "position_shift", "causal")}
    return row


def format_table(summary: dict) -> list[str]:
    """Render the description as terminal lines."""
    lines = [f"{summary['file']}: {summary['kind']} network, "
             f"{summary['totals']['layers']} layers"]
    header = (f"{'#':>3} {'name':<24} {'type':<10} {'shape':>9} "
              f"{'neurons':>8} {'synapses':>9} {'wbits':>5}  "
              f"{'threshold (vThMant)':<20} {'iDecay/vDecay':<14} inputs")
    lines += [header, "-" * len(header)]
    for row in summary["layers"]:
        neuron = row.get("neuron")
        threshold = (f"{neuron['threshold']:g} ({neuron['vThMant']})"
                     if neuron else "-")
        decays = f"{neuron['iDecay']}/{neuron['vDecay']}" if neuron else "-"
        inputs = ", ".join(
            f"{i['layer'] if i['layer'] >= 0 else 'input'}:{i['synapse']}"
            + (f"+{i['delay']}"
                                             if i["delay"] else "")
            for i in row["inputs"]) or "-"
        kind = row["type"] + ("" if row["runnable"] else " (!)")
        lines.append(
            f"{row['index']:>3} {row['name'][:24]:<24} {kind:<10} "
            f"{'x'.join(map(str, row['shape'])):>9} {row['neurons']:>8} "
            f"{row['synapses']:>9} {row['weight_bits'] or '-':>5}  "
            f"{threshold:<20} {decays:<14} {inputs}")
    totals = summary["totals"]
    lines.append(f"total: {totals['neurons']} neurons, {totals['synapses']} "
                 "synapses")
    if totals["not_runnable"]:
        lines.append(f"(!) layers {totals['not_runnable']} have a type or "
                     "neuron this toolchain cannot run")
    return lines
