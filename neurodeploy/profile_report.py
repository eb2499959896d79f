"""Run a decoder for profiling, and report its counts and energy.

``profile_decoder`` generates on Lava while recording every layer, runs the
same prompt on the Reference, and checks that both give equal counts.
``build_report`` turns a ``Profile`` into the JSON report of
``neurodeploy profile``; ``format_table``, ``write_csv`` and
``write_plots`` render it.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .energy import ANN_OPERATION, SNN_OPERATIONS, EnergyModel, ann_macs
from .netx_read import Network
from .profile import COUNTERS, Profile, compare_profiles, profile_steps

log = logging.getLogger(__name__)


def profile_decoder(network: Network, prompt: list[int], count: int,
                    target, sampler) -> dict:
    """Generate ``count`` tokens on Lava and on the Reference; count both.

    Returns the Lava generation, both profiles and the differences between
    them (empty when every counter of every token and step agrees).
    """
    from .reference import Reference
    from .runtime.builder import LavaDecoder
    from .runtime.generate import generate, lava_backend, reference_backend

    reference = Reference(network)
    layers = [layer.index for layer in network.layers[1:]]
    decoder = LavaDecoder(network, target, layers)
    try:
        lava = generate(lava_backend(decoder), reference, prompt, count,
                        sampler)
        steps_per_token = decoder.steps_per_token
    finally:
        decoder.close()
    lava_profile = profile_steps(network, lava.steps)

    # The Reference picks the tokens Lava generated, so both runs see the
    # same windows whatever the sampler.
    chosen = iter(lava.tokens)
    expected = generate(reference_backend(reference), reference, prompt,
                        count, lambda _logits: next(chosen))
    reference_profile = profile_steps(network, expected.steps)
    return {"generation": lava, "lava": lava_profile,
            "reference": reference_profile,
            "differences": compare_profiles(lava_profile, reference_profile),
            "steps_per_token": steps_per_token}


def build_report(profile: Profile, models: list[EnergyModel],
                 network: Network | None = None) -> dict:
    """Summarise counts and energy; add the ANN comparison for decoders.

    Energies are per token run through the network: the mean over the
    profile's tokens, in picojoules.
    """
    tokens = max(profile.tokens, 1)
    rates = profile.firing_rates()
    layers = []
    for number, row in enumerate(profile.rows):
        entry = {"index": row.index, "name": row.name, "kind": row.kind,
                 "neurons": row.neurons,
                 "firing_rate": float(rates[number])}
        for kind in COUNTERS:
            entry[kind] = int(profile.total(kind)[number])
        operations = profile.operation_counts(number)
        entry["energy_pj_per_token"] = {
            model.name: _energy_by_kind(model, operations, tokens)
            for model in models}
        layers.append(entry)

    operations = profile.operation_counts()
    report = {
        "tokens_run": profile.tokens,
        "time_steps": profile.time_steps,
        "layers": layers,
        "totals": {kind: int(profile.total(kind).sum()) for kind in COUNTERS},
        "operations_per_token": {kind: value / tokens
                                 for kind, value in operations.items()},
        "per_time_step": {kind: profile.counts[kind].sum(axis=(0, 1))
                          .tolist() for kind in COUNTERS},
        "per_token": _per_token(profile, models),
    }
    ann = _ann_counts(profile, network) if network is not None \
        and network.kind == "decoder" else None
    if ann is not None:
        report["ann"] = ann
    report["energy"] = {model.name: _energy_summary(model, operations,
                                                    tokens, ann)
                        for model in models}
    return report


def _energy_by_kind(model: EnergyModel, operations: dict, tokens: int
                    ) -> dict:
    energy = {kind: operations[kind] * model.costs[kind] / tokens
              for kind in SNN_OPERATIONS}
    energy["total"] = sum(energy.values())
    return energy


def _per_token(profile: Profile, models: list[EnergyModel]) -> list[dict]:
    entries = []
    fired = np.array([row.kind not in ("encoder", "input")
                      for row in profile.rows])
    for number, position in enumerate(profile.positions):
        counts = {kind: profile.counts[kind][number].sum(axis=1)
                  for kind in COUNTERS}
        operations = {
            "synaptic_op": int(counts["synaptic_ops"].sum()),
            "attention_accumulate": int(counts["attention_qk"].sum()
                                        + counts["attention_av"].sum()),
            "neuron_update": int(counts["neuron_updates"].sum()),
            "spike": int((counts["spikes"] * fired).sum()),
        }
        entries.append({"position": position, **operations,
                        "energy_pj": {model.name: model.energy_pj(operations)
                                      for model in models}})
    return entries


def _ann_counts(profile: Profile, network: Network) -> dict:
    """Count the same-size ANN's MACs per token at the profile's positions."""
    model = network.spec.model
    vocab = network.tokenizer.vocab_size
    totals: dict[str, int] = {}
    for position in profile.positions:
        for name, macs in ann_macs(model, vocab, position):
            totals[name] = totals.get(name, 0) + macs
    tokens = max(profile.tokens, 1)
    rows = [{"name": name, "macs_per_token": macs / tokens}
            for name, macs in totals.items()]
    return {"layers": rows,
            "macs_per_token": sum(row["macs_per_token"] for row in rows),
            "head_macs_per_token": totals.get("head", 0) / tokens}


def _energy_summary(model: EnergyModel, operations: dict, tokens: int,
                    ann: dict | None) -> dict:
    snn = _energy_by_kind(model, operations, tokens)
    summary = {"description": model.description, "file": model.source_file,
               "costs_pj": dict(model.costs),
               "snn_pj_per_token": snn["total"],
               "snn_by_operation_pj_per_token": {
                   kind: snn[kind] for kind in SNN_OPERATIONS},
               "ann_pj_per_token": None,
               "reduction_percent": None}
    if ann is None:
        return summary
    if not model.has_ann:
        summary["ann_note"] = (
            f"energy model {model.name!r} prices no {ANN_OPERATION}, so it "
            "gives no ANN energy")
        return summary
    cost = model.costs[ANN_OPERATION]
    ann_energy = ann["macs_per_token"] * cost
    without_head = (ann["macs_per_token"] - ann["head_macs_per_token"]) * cost
    summary.update({
        "ann_pj_per_token": ann_energy,
        "ann_without_head_pj_per_token": without_head,
        "reduction_percent": _reduction(snn["total"], ann_energy),
        # The SNN's readout head runs on the host and is not counted, so
        # this is the like-for-like figure.
        "reduction_without_head_percent": _reduction(snn["total"],
                                                     without_head),
    })
    return summary


def _reduction(snn: float, ann: float) -> float | None:
    return 100.0 * (1.0 - snn / ann) if ann else None


def format_table(report: dict) -> list[str]:
    """Render the per-layer counts and energy as terminal lines."""
    models = list(report["energy"])
    tokens = max(report["tokens_run"], 1)
    header = (f"{'layer':<6}{'name':<26}{'kind':<10}{'rate':>7}"
              f"{'spikes/tok':>12}{'synops/tok':>12}{'attn acc/tok':>13}"
              f"{'updates/tok':>12}")
    header += "".join(f"{'pJ/tok ' + name:>16}" for name in models)
    lines = [header]

    for row in report["layers"]:
        index = "-" if row["index"] is None else str(row["index"])
        line = (f"{index:<6}{row['name'][:25]:<26}{row['kind']:<10}"
                f"{row['firing_rate']:>7.3f}" + _count_columns(row, tokens))
        line += "".join(f"{row['energy_pj_per_token'][name]['total']:>16.1f}"
                        for name in models)
        lines.append(line)

    totals = report["totals"]
    line = f"{'total':<42}{'':>7}" + _count_columns(totals, tokens)
    line += "".join(f"{report['energy'][name]['snn_pj_per_token']:>16.1f}"
                    for name in models)
    lines.append(line)
    return lines + _summary_lines(report)


def _count_columns(counts: dict, tokens: int) -> str:
    """Per-token spikes, synaptic ops, attention accumulates, updates."""
    attention = counts["attention_qk"] + counts["attention_av"]
    return (f"{counts['spikes'] / tokens:>12.1f}"
            f"{counts['synaptic_ops'] / tokens:>12.1f}"
            f"{attention / tokens:>13.1f}"
            f"{counts['neuron_updates'] / tokens:>12.1f}")


def _summary_lines(report: dict) -> list[str]:
    """Render the energy per token of each model and the Reference check."""
    lines = []
    for name, energy in report["energy"].items():
        text = (f"energy model {name}: SNN {energy['snn_pj_per_token']:.1f} "
                "pJ/token")
        if energy.get("ann_pj_per_token") is not None:
            text += (f", ANN {energy['ann_pj_per_token']:.1f} pJ/token, "
                     f"reduction {energy['reduction_percent']:.1f} % "
                     f"({energy['reduction_without_head_percent']:.1f} % "
                     "without the ANN's head)")
        elif "ann_note" in energy:
            text += f"; {energy['ann_note']}"
        lines.append(text)
    if "counts_match_reference" in report:
        lines.append("counts on Lava equal the Reference's: "
                     + ("yes" if report["counts_match_reference"] else "NO"))
    return lines


def write_csv(profile: Profile, path: str | Path) -> None:
    """Write one row per token, layer and time step with every counter."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["token", "position", "layer", "name", "kind",
                         "time_step", *COUNTERS])
        for number, position in enumerate(profile.positions):
            for row_number, row in enumerate(profile.rows):
                for step in range(profile.time_steps):
                    writer.writerow([
                        number, position,
                        "" if row.index is None else row.index, row.name,
                        row.kind, step,
                        *(int(profile.counts[kind][number, row_number, step])
                          for kind in COUNTERS)])


def write_plots(report: dict, folder: str | Path) -> list[str]:
    """Write PNG plots with matplotlib's Agg backend; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [row["name"] for row in report["layers"]]
    written = []

    figure, axis = plt.subplots(figsize=(8, 4))
    axis.bar(range(len(names)),
             [row["firing_rate"] for row in report["layers"]])
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right",
                    fontsize=7)
    axis.set_ylabel("spikes per neuron per time step")
    axis.set_title("Firing rate per layer")
    written.append(_save(figure, folder / "firing_rate.png"))

    models = list(report["energy"])
    figure, axes = plt.subplots(1, max(len(models), 1), squeeze=False,
                                figsize=(6 * max(len(models), 1), 4))
    for axis, model in zip(axes[0], models):
        bottom = np.zeros(len(names))
        for kind in SNN_OPERATIONS:
            values = np.array([row["energy_pj_per_token"][model][kind]
                               for row in report["layers"]])
            axis.bar(range(len(names)), values, bottom=bottom, label=kind)
            bottom += values
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right",
                        fontsize=7)
        axis.set_ylabel("pJ per token")
        axis.set_title(f"Energy per token by layer ({model})")
        axis.legend(fontsize=7)
    written.append(_save(figure, folder / "energy_by_layer.png"))

    compared = [name for name in models
                if report["energy"][name]["ann_pj_per_token"] is not None]
    if compared:
        figure, axis = plt.subplots(figsize=(6, 4))
        positions = np.arange(len(compared))
        axis.bar(positions - 0.2, [report["energy"][name]["snn_pj_per_token"]
                                   for name in compared], 0.4, label="SNN")
        axis.bar(positions + 0.2, [report["energy"][name]["ann_pj_per_token"]
                                   for name in compared], 0.4, label="ANN")
        axis.set_xticks(positions, compared)
        # A linear axis from zero, so bar heights compare as the energies do.
        axis.set_ylim(bottom=0)
        axis.set_ylabel("pJ per token")
        for position, name in zip(positions, compared):
            reduction = report["energy"][name]["reduction_percent"]
            axis.annotate(f"-{reduction:.1f} %", (position - 0.2, report[
                "energy"][name]["snn_pj_per_token"]), ha="center",
                va="bottom")
        axis.set_title("Spiking decoder vs same-size ANN")
        axis.legend()
        written.append(_save(figure, folder / "snn_vs_ann.png"))
    return written


def _save(figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return str(path)
