"""Measure the training throughput of the spiking decoder and its ANN.

Prints one JSON report, whose figures docs/benchmarks.md quotes. It
gives the tokens per second of both models and their ratio, the neuron's
speed against SLAYER's, and the speed of the weight gradient and of the
attention by firing rate.
Options add a profile, a trained checkpoint's step time and full
trainings.

    python benchmarks/train_bench.py                 # throughput, ~1 minute
    python benchmarks/train_bench.py --quality       # + full demo trainings
    python benchmarks/train_bench.py --training      # + both, whole schedule

Throughput alternates blocks of SNN and ANN steps in one process (5 of
one model, then 5 of the other), so that both see the same machine
state, and repeats that in several fresh processes: on a shared machine
one process can run the same model 20 % faster than the next. Blocks
rather than single steps, because a step that follows the other model's
step finds the caches full of that model's tensors, which slowed the
ANN by about 8 %. The median ratio over processes is the figure to
quote; the range shows the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def step_seconds(model, optimizer, x, y) -> float:
    began = time.perf_counter()
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - began


def throughput(spec_name: str, rounds: int, block: int) -> dict:
    """Tokens per second of both architectures in one process: each round
    runs ``block`` SNN steps, then ``block`` ANN steps, and compares the
    medians of the two blocks."""
    from neurodeploy.model import build_model
    from neurodeploy.spec import apply_overrides, load_spec

    spec = load_spec(spec_name)
    batch, context = spec.train.batch_size, spec.model.context
    x = torch.randint(0, 65, (batch, context))
    y = torch.randint(0, 65, (batch, context))
    runs = {}
    for arch in ("snn", "ann"):
        torch.manual_seed(0)
        model = build_model(apply_overrides(spec, [f"arch='{arch}'"]).model,
                            65)
        runs[arch] = (model, torch.optim.AdamW(model.parameters()), [])
        for _ in range(3):  # warm-up, including the kernel compile
            step_seconds(model, runs[arch][1], x, y)

    ratios = []
    for _ in range(rounds):
        medians = {}
        for arch, (model, optimizer, times) in runs.items():
            steps = [step_seconds(model, optimizer, x, y)
                     for _ in range(block)]
            times.extend(steps)
            medians[arch] = statistics.median(steps)
        ratios.append(medians["ann"] / medians["snn"])

    tokens = batch * context
    result = {f"{arch}_tokens_per_second":
              tokens / statistics.median(times)
              for arch, (_, _, times) in runs.items()}
    result["ratio_median"] = statistics.median(ratios)
    return result


def throughput_in_processes(spec_name: str, rounds: int, block: int,
                            processes: int) -> dict:
    """``throughput`` in fresh processes; medians and the ratio range."""
    runs = []
    for _ in range(processes):
        command = [sys.executable, __file__, "--model", spec_name,
                   "--rounds", str(rounds), "--block", str(block),
                   "--single"]
        output = subprocess.run(command, check=True, capture_output=True,
                                text=True).stdout
        runs.append(json.loads(output))
    ratios = sorted(run["ratio_median"] for run in runs)
    return {
        **{key: statistics.median(run[key] for run in runs)
           for key in ("snn_tokens_per_second", "ann_tokens_per_second")},
        "ratio_median": statistics.median(ratios),
        "ratio_range": [ratios[0], ratios[-1]],
        "ratios": ratios,
    }


def neuron_speed(rounds: int) -> dict:
    """Forward + backward time of SLAYER's CUBA neuron and of ours."""
    # lava-dl prints import warnings on stdout, where the report goes.
    with contextlib.redirect_stdout(sys.stderr):
        from lava.lib.dl import slayer

    from neurodeploy.model.neuron import CubaParams, cuba_lif

    x = torch.randn(8192, 4, 128).transpose(1, 2).requires_grad_()
    reference = slayer.neuron.cuba.Neuron(threshold=1.0, current_decay=1.0,
                                          voltage_decay=0.25)
    params = CubaParams(1.0, 1.0, 0.25, 0.01, 10.0)
    linear = torch.nn.Linear(128, 128)
    candidates = {
        "slayer": lambda: reference(x),
        "neurodeploy": lambda: cuba_lif(x, params),
        "linear_128": lambda: linear(x.transpose(1, 2)),
    }
    times = {name: [] for name in candidates}
    for _ in range(rounds + 1):  # the first round is a warm-up
        for name, run in candidates.items():
            began = time.perf_counter()
            run().sum().backward()
            times[name].append(time.perf_counter() - began)
    return {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}


def profile_shares(spec_name: str, steps: int) -> dict:
    """Percent of a spiking training step by part, timed around the parts'
    own functions with perf_counter (torch.profiler's overhead skews the
    shares of short operators)."""
    from neurodeploy.model import build_model, neuron, snn, spike_matmul
    from neurodeploy.spec import load_spec

    parts = {  # part: (autograd function, "forward" or "backward")
        "neuron kernels, forward": (neuron._CubaFunction, "forward"),
        "neuron kernels and fused norms, backward":
            (neuron._CubaFunction, "backward"),
        "int8 products of spikes and weights, forward":
            (spike_matmul._SpikeLinear, "forward"),
        "float32 products, backward": (spike_matmul._SpikeLinear,
                                       "backward"),
        "attention products, forward": (snn._SplitAttention, "forward"),
        "attention products, backward": (snn._SplitAttention, "backward"),
    }
    seconds = dict.fromkeys(parts, 0.0)
    originals = {name: getattr(cls, method)
                 for name, (cls, method) in parts.items()}

    def timed(name, function):
        def run(*args):
            began = time.perf_counter()
            result = function(*args)
            seconds[name] += time.perf_counter() - began
            return result
        return staticmethod(run)

    spec = load_spec(spec_name)
    torch.manual_seed(0)
    model = build_model(spec.model, 65)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 65, (spec.train.batch_size, spec.model.context))
    for _ in range(3):  # warm-up
        step_seconds(model, optimizer, x, x)
    for name, (cls, method) in parts.items():
        setattr(cls, method, timed(name, originals[name]))
    try:
        total = sum(step_seconds(model, optimizer, x, x)
                    for _ in range(steps))
    finally:
        for name, (cls, method) in parts.items():
            setattr(cls, method, staticmethod(originals[name]))

    shares = {name: 100 * value / total for name, value in seconds.items()}
    shares["the rest: output norms with the residual add, optimizer, "
           "Python"] = \
        100 - sum(shares.values())
    shares = {name: round(value, 1) for name, value in shares.items()}
    return {"step_ms": round(1000 * total / steps, 1), "percent": shares}


def weight_grad_speed(rounds: int) -> dict:
    """Milliseconds of the weight gradient G^T S of a (8192, 128) -> 384
    SpikeLinear, dense GEMM against the sparse kernel, by firing rate."""
    from neurodeploy.model.spike_matmul import sparse_weight_grad

    grad = torch.randn(8192, 384)
    result = {}
    for rate in (0.02, 0.05, 0.1, 0.2, 0.3):
        spikes = torch.rand(8192, 128) < rate
        as_float, as_uint8 = spikes.float(), spikes.to(torch.uint8)
        times = {"dense": [], "sparse": []}
        for _ in range(rounds + 1):  # the first round is a warm-up
            for name, run in (("dense", lambda: grad.t() @ as_float),
                              ("sparse", lambda: sparse_weight_grad(
                                  grad, as_uint8))):
                began = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - began)
        result[rate] = {name: 1000 * statistics.median(t[1:])
                        for name, t in times.items()}
    return result


def attention_speed(rounds: int) -> dict:
    """Milliseconds of the spike attention of one demo layer, forward
    plus backward, batched dense products against the sparse kernels,
    by firing rate of Q|K|V."""
    from neurodeploy.model.snn import _SplitAttention

    shape = (3, 32, 4, 4, 64, 32)  # (Q|K|V, B, T, heads, P, D)
    grad = torch.randn(shape[1:])
    result = {}
    for rate in (0.01, 0.03, 0.1, 0.2):
        qkv = (torch.rand(shape) < rate).float().requires_grad_()
        times = {"dense": [], "sparse": []}
        for _ in range(rounds + 1):  # the first round is a warm-up
            # A known rate of 0 forces the sparse kernels, none the dense.
            for name, known in (("dense", None), ("sparse", 0.0)):
                began = time.perf_counter()
                y = _SplitAttention.apply(qkv, 0, True, known)
                torch.autograd.grad(y, qkv, grad)
                times[name].append(time.perf_counter() - began)
        result[rate] = {name: 1000 * statistics.median(t[1:])
                        for name, t in times.items()}
    return result


def trained_step_speed(checkpoint: str, rounds: int) -> dict:
    """Milliseconds per training step (rate penalty included) of a
    trained spiking checkpoint on a batch of random tokens, interleaved:
    with the sparse kernels, with dense attention products, and with no
    sparse kernel at all."""
    from neurodeploy.export import load_trained
    from neurodeploy.model import snn, spike_matmul
    from neurodeploy.train import firing_rate

    payload, model = load_trained(checkpoint)
    spec = payload["spec"]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters())
    generator = torch.Generator().manual_seed(0)
    shape = (spec.train.batch_size, spec.model.context)
    x = torch.randint(0, model.head.out_features, shape, generator=generator)
    y = torch.randint(0, model.head.out_features, shape, generator=generator)
    penalty = spec.train.rate_penalty
    # Thresholds: weight gradient, attention forward, attention backward.
    defaults = (spike_matmul.SPARSE_RATE, snn.SPARSE_FORWARD_RATE,
                snn.SPARSE_BACKWARD_RATE)
    settings = {"sparse": defaults,
                "dense_attention": (defaults[0], 0.0, 0.0),
                "dense": (0.0, 0.0, 0.0)}
    times = {name: [] for name in settings}
    for index in range(rounds + 3):  # three warm-up rounds
        for name, rates in settings.items():
            spike_matmul.SPARSE_RATE, snn.SPARSE_FORWARD_RATE, \
                snn.SPARSE_BACKWARD_RATE = rates
            began = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) \
                + penalty * firing_rate(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if index >= 3:
                times[name].append(time.perf_counter() - began)
    spike_matmul.SPARSE_RATE, snn.SPARSE_FORWARD_RATE, \
        snn.SPARSE_BACKWARD_RATE = defaults
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def quality(spec_name: str) -> dict:
    """Train both architectures with the CLI and return their summaries."""
    results = {}
    for arch in ("snn", "ann"):
        command = [sys.executable, "-m", "neurodeploy.cli", "train",
                   "--model", spec_name, "--arch", arch, "--out",
                   f"runs/bench-{arch}", "--json", "--no-progress"]
        began = time.perf_counter()
        output = subprocess.run(command, check=True, capture_output=True,
                                text=True).stdout
        results[arch] = json.loads(output)
        results[arch]["wall_seconds"] = time.perf_counter() - began
        results[arch]["command"] = " ".join(["neurodeploy"] + command[3:])
    return results


def training_throughput(spec_name: str, window: int = 100) -> dict:
    """Train both architectures on the bundled corpus with the trainer's
    own step (schedule, rate penalty, clipping) through the spec's whole
    schedule: ``window`` SNN steps, then the same ``window`` steps of the
    ANN, and so on. Validation is left out.

    Return tokens per second over the run and the SNN/ANN ratio per
    window. The spiking step's cost follows its firing rates, which
    change as the model trains."""
    from neurodeploy import data
    from neurodeploy.model import build_model
    from neurodeploy.model.neuron import compile_kernels
    from neurodeploy.spec import apply_overrides, load_spec
    from neurodeploy.train import _new_tokenizer, _Run, make_optimizer

    runs = {}
    for arch in ("snn", "ann"):
        spec = apply_overrides(load_spec(spec_name), [f"arch='{arch}'"])
        text, raw = data.read_corpus(None, spec.model.tokenizer)
        tokenizer = _new_tokenizer(spec, text)
        corpus = data.split_corpus(text, raw, tokenizer, spec.model.context,
                                   spec.train.validation_fraction)
        torch.manual_seed(spec.train.seed)
        model = build_model(spec.model, tokenizer.vocab_size)
        model.train()
        runs[arch] = _Run(spec, model, make_optimizer(model, spec), corpus,
                          tokenizer, "cpu", None, [], None)
    compile_kernels()

    times = {arch: [] for arch in runs}
    for first in range(0, spec.train.steps, window):
        for arch, run in runs.items():
            for step in range(first, min(first + window, spec.train.steps)):
                began = time.perf_counter()
                run.step(step)
                times[arch].append(time.perf_counter() - began)

    tokens = spec.train.batch_size * spec.model.context
    snn, ann = times["snn"], times["ann"]
    windows = [sum(ann[i:i + window]) / sum(snn[i:i + window])
               for i in range(0, len(snn), window)]
    return {
        "steps": spec.train.steps,
        "snn_tokens_per_second": tokens * len(snn) / sum(snn),
        "ann_tokens_per_second": tokens * len(ann) / sum(ann),
        "ratio": sum(ann) / sum(snn),
        f"ratio_per_{window}_steps": windows,
    }


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: it must be a positive integer")
    return value


def _check_inputs(parser, args) -> None:
    """Reject a spec or checkpoint that a later stage would fail on,
    before any measurement runs."""
    from neurodeploy.checkpoint import load_checkpoint
    from neurodeploy.errors import NeurodeployError
    from neurodeploy.spec import load_spec

    try:
        load_spec(args.model)
        if args.checkpoint:
            arch = load_checkpoint(args.checkpoint)["spec"].model.arch
            if arch != "snn":
                parser.error(f"--checkpoint {args.checkpoint}: an {arch} "
                             f"checkpoint; give a spiking (snn) one")
    except NeurodeployError as error:
        parser.error(str(error))


def _machine() -> str:
    """Return the CPU model, thread count and PyTorch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch " \
        f"{torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo",
                        help="spec name or path (default: demo)")
    parser.add_argument("--rounds", type=_positive, default=6,
                        help="rounds per process, each of BLOCK SNN steps "
                        "and BLOCK ANN steps (default: 6)")
    parser.add_argument("--block", type=_positive, default=5,
                        help="steps of one model before the other's "
                        "(default: 5)")
    parser.add_argument("--processes", type=_positive, default=5,
                        help="fresh processes; the report gives the median "
                        "of their SNN/ANN ratios (default: 5)")
    parser.add_argument("--quality", action="store_true",
                        help="also run full trainings of both models")
    parser.add_argument("--training", action="store_true",
                        help="also train both models in turn, 100 steps "
                        "at a time, and time the whole run (~5 minutes)")
    parser.add_argument("--single", action="store_true",
                        help="one process's throughput only (internal)")
    parser.add_argument("--profile", action="store_true",
                        help="also time the parts of 20 spiking steps")
    parser.add_argument("--checkpoint",
                        help="also time training steps of this trained "
                        "spiking checkpoint on a batch of random tokens, "
                        "sparse kernels on and off")
    args = parser.parse_args()
    _check_inputs(parser, args)
    # The trainer's heap settings, the same for both models.
    from neurodeploy import heap
    heap_settings = heap.keep_freed_memory()
    if args.single:
        print(json.dumps(throughput(args.model, args.rounds, args.block)))
        return

    report = {
        "machine": _machine(),
        "heap_keeps_freed_memory": heap_settings,
        "throughput": throughput_in_processes(args.model, args.rounds,
                                              args.block, args.processes),
        "neuron_ms": neuron_speed(args.rounds * args.block),
        "weight_grad_ms": weight_grad_speed(10),
        "attention_ms": attention_speed(10),
    }
    if args.profile:
        report["profile"] = profile_shares(args.model, 20)
    if args.checkpoint:
        report["trained_step_ms"] = trained_step_speed(
            args.checkpoint, args.rounds * args.block)
    if args.training:
        report["training"] = training_throughput(args.model)
    if args.quality:
        report["quality"] = quality(args.model)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
