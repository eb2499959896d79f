"""The ``neurodeploy`` command line.

Contract: ``--json`` prints exactly one JSON object on stdout; logs and
progress go to stderr. Exit status 0 on success, 1 on a failed check, 2 on
bad usage or bad input.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from .errors import NeurodeployError

EXIT_BAD_INPUT = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s")


def _report(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        for line in lines:
            click.echo(line)


def _fail(error: Exception, as_json: bool) -> None:
    """Report a bad-input error and exit with status 2."""
    if as_json:
        click.echo(json.dumps({"error": str(error)}))
    click.echo(f"Error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neurodeploy")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train, export, run and profile spiking GPT decoders on Lava."""
    _setup_logging(verbose)


@main.command()
@click.option("--model", "model_name", default="demo", show_default=True,
              help="Named spec from the models/ catalogue, or a .toml path.")
@click.option("--arch", type=click.Choice(["snn", "ann"]),
              help="Train the spiking decoder or the same-size ANN baseline "
              "(overrides the spec).")
@click.option("--corpus", type=click.Path(dir_okay=False),
              help="UTF-8 text file to train on [default: bundled "
              "tiny-Shakespeare].")
@click.option("--steps", type=int, help="Number of optimiser steps "
              "(overrides the spec).")
@click.option("--out", "out_dir", default="runs/demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Output folder; the checkpoint is OUT/checkpoint.pt.")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint.pt.")
@click.option("--seed", type=int, help="Random seed (overrides the spec).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              default=None, help="Device [default: cuda when present, "
              "else cpu].")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field, e.g. --set d_model=64; repeatable.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary on stdout.")
def train(model_name, arch, corpus, steps, out_dir, resume, seed, device,
          overrides, no_progress, as_json):
    """Train a spiking decoder (or its ANN baseline) on a text corpus."""
    from . import spec as specs
    from .train import train as run_training

    try:
        spec = specs.load_spec(model_name)
        assignments = list(overrides)
        for name, value in (("arch", arch), ("steps", steps),
                            ("seed", seed)):
            if value is not None:
                assignments.append(f"{name}={json.dumps(value)}")
        spec = specs.apply_overrides(spec, assignments)
        device = _choose_device(device)
        summary = run_training(spec, corpus, out_dir, resume=resume,
                               device=device, progress=not no_progress)
    except NeurodeployError as error:
        _fail(error, as_json)

    _report(summary, as_json, [
        f"{summary['arch']} decoder {summary['model']!r} after "
        f"{summary['steps']} steps:",
        f"  validation: {summary['val_loss']:.4f} nats/char, "
        f"{summary['val_bpc']:.3f} bits/char, accuracy "
        f"{summary['val_accuracy']:.3f}",
        f"  throughput: {summary['tokens_per_second']:.0f} tokens/s",
        f"  checkpoint: {summary['checkpoint']}",
    ])


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", "out_path", required=True,
              type=click.Path(dir_okay=False),
              help="HDF5 file to write (NetX schema with the neurodeploy "
              "extension).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON report on stdout.")
def export(checkpoint, out_path, as_json):
    """Export a trained spiking decoder to NetX HDF5."""
    from .export import export_checkpoint

    try:
        report = export_checkpoint(checkpoint, out_path)
    except NeurodeployError as error:
        _fail(error, as_json)

    lines = [f"wrote {report['file']}: {report['layers']} layers, "
             f"{report['neurons']} neurons",
             "folding error per synapse (max |w - w_int/64|, relative RMS, "
             "clamped):"]
    for name, error in report["synapses"].items():
        lines.append(f"  {name:<24} {error['max_abs']:.4f}  "
                     f"{error['rms_relative']:.3f}  {error['clamped']}")
    _report(report, as_json, lines)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON description on stdout.")
def inspect(file, as_json):
    """Show the layers of a NetX HDF5 file (ours or lava-dl's)."""
    from .inspect_net import describe, format_table
    from .netx_read import load_network

    try:
        summary = describe(load_network(file))
    except NeurodeployError as error:
        _fail(error, as_json)
    _report(summary, as_json, format_table(summary))


def _choose_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NeurodeployError(
            "--device cuda requested but PyTorch finds no CUDA device; "
            "use --device cpu"
        )
    return device


if __name__ == "__main__":
    main()
