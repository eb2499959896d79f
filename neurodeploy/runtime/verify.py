"""Compare a decoder's spikes and tokens on Lava with the Reference's."""

from __future__ import annotations

import numpy as np

from ..netx_read import Network
from ..reference import Reference
from .builder import LavaDecoder
from .generate import (Generation, Sampler, generate, lava_backend,
                       reference_backend)
from .targets import load_target

VERIFY_TARGET = "loihi2-sim"


def verify(network: Network, prompt: list[int], count: int) -> dict:
    """Generate greedily on Lava (loihi2-sim) and on the Reference; compare.

    Spikes are compared for every neuron layer, token and time step while
    both runs see the same window, that is, up to and including the first
    token where the generated tokens differ. Returns a report with
    ``passed`` true only when every spike and every token agree.
    """
    reference = Reference(network)
    layers = [layer.index for layer in network.layers
              if layer.kind != "encoder"]
    decoder = LavaDecoder(network, load_target(VERIFY_TARGET), layers)
    try:
        lava = generate(lava_backend(decoder), reference, prompt, count,
                        Sampler())
        steps_per_token = decoder.steps_per_token
    finally:
        decoder.close()
    expected = generate(reference_backend(reference), reference, prompt,
                        count, Sampler())

    table, divergence = compare_spikes(network, lava, expected)
    tokens_match = lava.tokens == expected.tokens
    decode = network.tokenizer.decode
    return {
        "file": str(network.path),
        "target": VERIFY_TARGET,
        "prompt_tokens": len(prompt),
        "generated_tokens": count,
        "lava_text": decode(lava.tokens),
        "reference_text": decode(expected.tokens),
        "tokens_match": tokens_match,
        "first_token_mismatch": _first_difference(lava.tokens,
                                                  expected.tokens),
        "layers": table,
        "agreement": _percent(sum(row["matching"] for row in table),
                              sum(row["compared"] for row in table)),
        "first_divergence": divergence,
        "passed": tokens_match and divergence is None,
        "steps_per_token": steps_per_token,
        "lava_tokens_per_second": lava.tokens_per_second,
        "reference_tokens_per_second": expected.tokens_per_second,
        "lava_positions_per_second": lava.positions_per_second,
        "reference_positions_per_second": expected.positions_per_second,
    }


def compare_spikes(network: Network, lava: Generation,
                   expected: Generation) -> tuple[list[dict], dict | None]:
    """Count equal spike entries per layer; find the first differing one.

    Both runs feed the same tokens until their generated tokens differ, so
    steps are compared pairwise while their fed tokens agree.
    """
    counts = {layer.index: [0, 0] for layer in network.layers
              if layer.kind != "encoder"}
    divergence = None
    for number, (got, want) in enumerate(zip(lava.steps, expected.steps)):
        if (got.token, got.position) != (want.token, want.position):
            break
        for index, pair in counts.items():
            equal = got.spikes[index] == want.spikes[index]
            pair[0] += int(equal.sum())
            pair[1] += equal.size
            if divergence is None and not equal.all():
                channel, step = np.argwhere(~equal)[0]
                divergence = {"token": number, "layer": index,
                              "name": network.layers[index].name,
                              "time_step": int(step), "channel": int(channel)}
    table = [{"index": index, "name": network.layers[index].name,
              "kind": network.layers[index].kind, "matching": matching,
              "compared": compared,
              "agreement": _percent(matching, compared)}
             for index, (matching, compared) in counts.items()]
    return table, divergence


def _first_difference(first: list[int], second: list[int]) -> int | None:
    for number, (a, b) in enumerate(zip(first, second)):
        if a != b:
            return number
    return None if len(first) == len(second) else min(len(first),
                                                      len(second))


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 100.0
