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


def _interrupted_message(stop, spec) -> str:
    """Return the message for Ctrl-C during training: the step reached,
    the checkpoint's step and whether ``--resume`` can continue."""
    if stop.checkpoint_step is None:
        return (f"interrupted after step {stop.step}, before the first "
                f"checkpoint (one every {spec.train.checkpoint_interval} "
                f"steps); nothing to resume, so rerun without --resume")
    lost = stop.step - stop.checkpoint_step
    return (f"interrupted after step {stop.step}; the checkpoint "
            f"{stop.checkpoint} is from step {stop.checkpoint_step} ({lost} "
            f"steps earlier): rerun the same command with --resume to "
            f"continue from there")


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
    """Train, export, inspect, run and verify spiking GPT decoders on Lava."""
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
    from .train import TrainingInterrupted, loss_unit
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
    except TrainingInterrupted as stop:
        click.echo(_interrupted_message(stop, spec), err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted outside the training steps; no step was "
                   "lost", err=True)
        sys.exit(130)

    unit = loss_unit(spec)
    _report(summary, as_json, [
        f"{summary['arch']} decoder {summary['model']!r} after "
        f"{summary['steps']} steps:",
        f"  validation: {summary['val_loss']:.4f} nats/{unit}, "
        f"{summary['val_bpc']:.3f} bits/{unit}, accuracy "
        f"{summary['val_accuracy']:.3f}",
        f"  throughput: {summary['tokens_per_second']:.0f} tokens/s"
        if summary["train_seconds"] else "  throughput: no step trained",
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


def _load_decoder(file: str):
    """Load and validate a decoder file; raise NeurodeployError if unusable."""
    from .netx_read import load_network

    network = load_network(file)
    if network.kind != "decoder":
        raise NeurodeployError(
            f"{file}: a plain NetX file, not a neurodeploy decoder; run "
            "and verify need a file written by neurodeploy export")
    return network


def _check_token_count(tokens: int) -> None:
    if tokens <= 0:
        raise NeurodeployError(
            f"invalid --tokens {tokens}; give a positive number of tokens "
            "to generate")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--tokens", "count", required=True, type=int,
              help="Number of tokens to generate.")
@click.option("--target", "target_name", default="loihi2-sim",
              show_default=True,
              help="Lava target: cpu, loihi2-sim or loihi2 (targets/*.toml).")
@click.option("--temperature", default=0.0, show_default=True, type=float,
              help="Sampling temperature; 0 picks the most likely token.")
@click.option("--top-k", default=0, show_default=True, type=int,
              help="Sample only among the K most likely tokens; 0 is off.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the sampler's random generator.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary on stdout instead of the text.")
def run(file, prompt, count, target_name, temperature, top_k, seed,
        as_json):
    """Generate text with a decoder file on Lava.

    Streams the generated text to stdout as it is produced. A prompt longer
    than the model's context keeps only its last CONTEXT tokens and logs
    how many it dropped.
    """
    from .reference import Reference
    from .runtime.builder import LavaDecoder
    from .runtime.generate import (Sampler, generate, lava_backend,
                                   prompt_tokens, readout_sources)
    from .runtime.targets import load_target

    try:
        _check_token_count(count)
        target = load_target(target_name)
        network = _load_decoder(file)
        tokens = prompt_tokens(network, prompt)
        sampler = Sampler(temperature, top_k, seed)
        target.check_available()
    except NeurodeployError as error:
        _fail(error, as_json)

    def stream(token: int) -> None:
        if not as_json:
            click.echo(network.tokenizer.decode([token]), nl=False)

    reference = Reference(network)
    try:
        decoder = LavaDecoder(network, target, readout_sources(network))
    except NeurodeployError as error:
        _fail(error, as_json)
    try:
        result = generate(lava_backend(decoder), reference, tokens, count,
                          sampler, on_token=stream)
        steps_per_token = decoder.steps_per_token
    finally:
        decoder.close()

    summary = {"file": file, "target": target_name,
               "prompt_tokens": len(tokens),
               "text": network.tokenizer.decode(result.tokens),
               "tokens": result.tokens,
               "tokens_per_second": result.tokens_per_second,
               "positions_per_second": result.positions_per_second,
               "steps_per_token": steps_per_token,
               "seconds": result.seconds}
    if as_json:
        _report(summary, True, [])
    else:
        click.echo()
        click.echo(f"{len(result.tokens)} tokens generated in "
                   f"{result.seconds:.1f} s ({result.tokens_per_second:.2f} "
                   f"tokens/s; {len(result.steps)} positions run, "
                   f"{steps_per_token} Lava steps each)", err=True)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--tokens", "count", required=True, type=int,
              help="Number of tokens to generate greedily.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON report on stdout.")
def verify(file, prompt, count, as_json):
    """Check that Lava (loihi2-sim) reproduces the Reference bit for bit.

    Generates greedily on both, compares the spikes of every layer at every
    time step of every token, and the generated tokens. Exits 1 on any
    mismatch. A prompt longer than the model's context keeps only its last
    CONTEXT tokens and logs how many it dropped.
    """
    from .runtime.generate import prompt_tokens
    from .runtime.verify import verify as run_verify

    try:
        _check_token_count(count)
        network = _load_decoder(file)
        tokens = prompt_tokens(network, prompt)
        report = run_verify(network, tokens, count)
    except NeurodeployError as error:
        _fail(error, as_json)

    lines = [f"{'layer':<6}{'name':<26}{'kind':<10}{'agreement':>10}"
             f"{'values compared':>17}"]
    for row in report["layers"]:
        lines.append(f"{row['index']:<6}{row['name']:<26}{row['kind']:<10}"
                     f"{row['agreement']:>9.2f}%{row['compared']:>17}")
    divergence = report["first_divergence"]
    if divergence is None:
        lines.append("first divergence: none")
    else:
        lines.append(f"first divergence: token {divergence['token']}, "
                     f"layer {divergence['layer']} ({divergence['name']}), "
                     f"time step {divergence['time_step']}, channel "
                     f"{divergence['channel']}")
    lines.append(f"tokens: Lava {report['lava_text']!r}, Reference "
                 f"{report['reference_text']!r}"
                 + ("" if report["tokens_match"] else "  MISMATCH"))
    lines.append("PASSED" if report["passed"] else "FAILED")
    _report(report, as_json, lines)
    if not report["passed"]:
        sys.exit(1)



@main.command()
@click.argument("file", type=click.Path())
@click.option("--prompt", help="Text to continue (decoder files).")
@click.option("--tokens", "count", type=int,
              help="Number of tokens to generate (decoder files).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="Input spikes for a plain NetX chain: a .npy array of 0 "
              "and 1, shape (neurons, time steps).")
@click.option("--target", "target_name", default="loihi2-sim",
              show_default=True,
              help="Lava target that generates the spikes: cpu, loihi2-sim "
              "or loihi2.")
@click.option("--energy-model", "energy_models", multiple=True,
              metavar="NAME|PATH",
              help="Energy model: a bundled name (targets/energy-NAME.toml) "
              "or a .toml path; repeatable [default: every bundled model].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write every counter per token, layer and time step to "
              "this CSV file.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write PNG plots to this folder.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON report on stdout.")
def profile(file, prompt, count, input_path, target_name, energy_models,
            csv_path, plots_dir, as_json):
    """Count spikes, synaptic operations and energy per layer and token.

    For a decoder file, generates greedily on Lava while recording every
    layer, counts the same run on the PyTorch Reference, and compares the
    energy per token with the same-size ANN's. Exits 1 when a bit-accurate
    target's counts differ from the Reference's. For a plain NetX chain,
    counts one sample of --input spikes with SLAYER's fixed-point
    arithmetic, with no Lava run and no ANN comparison.
    """
    from .energy import energy_model_names, load_energy_model
    from .netx_read import load_network
    from .profile import profile_chain
    from .profile_report import (build_report, format_table,
                                 profile_decoder, write_csv, write_plots)

    try:
        names = list(energy_models) or energy_model_names()
        models = [load_energy_model(name) for name in names]
        network = load_network(file)
        if network.kind == "decoder":
            report, run_profile, failed = _profile_decoder_file(
                network, file, prompt, count, input_path, target_name,
                models, profile_decoder)
        else:
            run_profile = profile_chain(network,
                                        _load_input_spikes(input_path))
            report = build_report(run_profile, models)
            report.update({"file": file, "kind": "netx",
                           "input": input_path})
            failed = False
        if csv_path:
            write_csv(run_profile, csv_path)
            report["csv"] = csv_path
        if plots_dir:
            report["plots"] = write_plots(report, plots_dir)
    except NeurodeployError as error:
        _fail(error, as_json)

    _report(report, as_json, format_table(report))
    if failed:
        click.echo("Lava's counts differ from the Reference's: "
                   f"{report['count_differences'][:5]}", err=True)
        sys.exit(1)


def _profile_decoder_file(network, file, prompt, count, input_path,
                          target_name, models, profile_decoder):
    """Profile a decoder file; return (report, Lava profile, failed)."""
    from .profile_report import build_report
    from .runtime.generate import Sampler, prompt_tokens
    from .runtime.targets import load_target

    if input_path:
        raise NeurodeployError(
            f"{file}: --input is for plain NetX chains; a decoder file "
            "takes --prompt and --tokens")
    if prompt is None or count is None:
        raise NeurodeployError(
            f"{file}: a decoder file needs --prompt TEXT and --tokens N")
    _check_token_count(count)
    target = load_target(target_name)
    target.check_available()
    tokens = prompt_tokens(network, prompt)
    run = profile_decoder(network, tokens, count, target, Sampler())
    report = build_report(run["lava"], models, network)
    match = not run["differences"]
    report = {"file": file, "kind": "decoder", "target": target_name,
              "prompt_tokens": len(tokens), "generated_tokens": count,
              "text": network.tokenizer.decode(run["generation"].tokens),
              "steps_per_token": run["steps_per_token"],
              "counts_match_reference": match,
              "count_differences": run["differences"], **report}
    return report, run["lava"], target.bit_accurate and not match


def _load_input_spikes(path):
    import numpy as np

    if path is None:
        raise NeurodeployError(
            "a plain NetX chain needs --input SPIKES.npy, an array of 0 and "
            "1 with shape (neurons, time steps)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise NeurodeployError(
            f"{path}: not a readable .npy array: {error}") from None


@main.command()
@click.option("--model", "model_name", default="demo", show_default=True,
              help="Named spec from the models/ catalogue, or a .toml path.")
@click.option("--corpus", type=click.Path(dir_okay=False),
              help="UTF-8 text file to train on [default: bundled "
              "tiny-Shakespeare].")
@click.option("--out", "out_dir", default="runs/demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Output folder for every artefact.")
@click.option("--steps", type=int, help="Number of optimiser steps "
              "(overrides the spec).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field, e.g. --set d_model=64; repeatable.")
@click.option("--prompt", default="ROMEO:", show_default=True,
              help="Prompt for verify, generate and profile.")
@click.option("--tokens", "count", default=32, show_default=True, type=int,
              help="Tokens to generate in verify and in generate.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              default=None, help="Training device [default: cuda when "
              "present, else cpu].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary on stdout.")
def pipeline(model_name, corpus, out_dir, steps, overrides, prompt, count,
             device, as_json):
    """Train, export, verify, generate and profile in one run.

    Logs one line per stage on stderr and writes every artefact to OUT.
    Exits 1 when Lava (loihi2-sim) and the Reference disagree.
    """
    from . import spec as specs
    from .pipeline import STAGES, run_pipeline

    def stage(name: str, message: str) -> None:
        number = STAGES.index(name) + 1
        click.echo(f"[{number}/{len(STAGES)}] {name}: {message}", err=True)

    try:
        _check_token_count(count)
        spec = specs.load_spec(model_name)
        assignments = list(overrides)
        if steps is not None:
            assignments.append(f"steps={json.dumps(steps)}")
        spec = specs.apply_overrides(spec, assignments)
        summary = run_pipeline(spec, corpus, out_dir, prompt, count,
                               device=_choose_device(device), stage=stage)
    except NeurodeployError as error:
        _fail(error, as_json)

    lines = [f"artefacts in {summary['out']}",
             f"verify: {'PASSED' if summary['verify_passed'] else 'FAILED'} "
             f"({summary['agreement']:.2f} % spike agreement)",
             f"generated: {summary['text']!r}"]
    for name, energy in summary["energy"].items():
        line = f"energy ({name}): SNN {energy['snn_pj_per_token']:.1f} pJ/token"
        if energy["ann_pj_per_token"] is not None:
            line += (f", ANN {energy['ann_pj_per_token']:.1f} pJ/token, "
                     f"reduction {energy['reduction_percent']:.1f} %")
        lines.append(line)
    _report(summary, as_json, lines)
    if not summary["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
