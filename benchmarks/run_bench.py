"""Generation speed of an exported decoder: Lava targets against the
PyTorch reference, in one run, and Lava's cost per token by position.

    python benchmarks/run_bench.py runs/bench-snn/model.net --tokens 32

Every backend generates greedily from the same prompt. The position sweep
runs single tokens through Lava at increasing positions of one context.
With the spike KV cache, its time per token should not grow with position.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from neurodeploy.netx_read import load_network
from neurodeploy.reference import Reference
from neurodeploy.runtime.builder import LavaDecoder
from neurodeploy.runtime.generate import (
    Sampler, encoder_row, generate, lava_backend, prompt_tokens,
    readout_sources, reference_backend)
from neurodeploy.runtime.targets import load_target


def speed(network, reference, prompt, tokens, target_name=None) -> dict:
    """Tokens per second (prompt tokens included) of one backend."""
    if target_name is None:
        result = generate(reference_backend(reference), reference, prompt,
                          tokens, Sampler())
        return {"tokens_per_second": result.tokens_per_second,
                "positions_per_second": result.positions_per_second,
                "text_tokens": result.tokens}
    with LavaDecoder(network, load_target(target_name),
                     readout_sources(network)) as decoder:
        result = generate(lava_backend(decoder), reference, prompt, tokens,
                          Sampler())
        return {"tokens_per_second": result.tokens_per_second,
                "positions_per_second": result.positions_per_second,
                "steps_per_token": decoder.steps_per_token,
                "text_tokens": result.tokens}


def position_sweep(network, reference, positions: int) -> dict:
    """Seconds per token at each position of one context on loihi2-sim."""
    prefix = [0] * positions
    seconds = []
    with LavaDecoder(network, load_target("loihi2-sim"),
                     readout_sources(network)) as decoder:
        for position in range(positions):
            row = encoder_row(reference, prefix[:position + 1])
            began = time.perf_counter()
            decoder.run_token(row, position)
            seconds.append(time.perf_counter() - began)
    quarter = max(1, positions // 4)
    return {"first_quarter_ms": 1000 * statistics.median(
                seconds[1:quarter + 1]),
            "last_quarter_ms": 1000 * statistics.median(seconds[-quarter:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    network = load_network(args.file)
    reference = Reference(network)
    prompt = prompt_tokens(network, args.prompt)
    report = {name: speed(network, reference, prompt, args.tokens, target)
              for name, target in (("reference", None),
                                   ("loihi2-sim", "loihi2-sim"),
                                   ("cpu", "cpu"))}
    report["same_text_on_loihi2_sim"] = (
        report["reference"]["text_tokens"]
        == report["loihi2-sim"]["text_tokens"])
    report["position_sweep"] = position_sweep(
        network, reference, network.spec.model.context)
    for entry in ("reference", "loihi2-sim", "cpu"):
        report[entry].pop("text_tokens")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
