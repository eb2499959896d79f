"""Generate text with a decoder on Lava or on the PyTorch Reference.

Both backends share one loop, one readout and one sampler, so with equal
spikes they produce equal logits and equal tokens. The context policy:
a prompt longer than the context keeps its last ``context`` tokens. Once
the window is full, each new token drops the oldest one, and because every
position's encoder code then changes, the whole window is run again from
position 0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NeurodeployError
from ..netx_read import Network
from ..reference import Reference

log = logging.getLogger(__name__)

# A backend maps (window prefix, encoder row (C,), position) to the spikes
# {layer index: (C, T)} of the prefix's last token.
Backend = Callable[[list[int], np.ndarray, int], dict[int, np.ndarray]]


@dataclass
class TokenStep:
    """One token run through the decoder: its window position and spikes."""

    position: int
    token: int
    spikes: dict[int, np.ndarray]


@dataclass
class Generation:
    """The result of ``generate``."""

    tokens: list[int]
    steps: list[TokenStep] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second, the prompt's time included."""
        return len(self.tokens) / self.seconds if self.seconds else 0.0

    @property
    def positions_per_second(self) -> float:
        """Tokens run through the decoder (prompt, fed-back tokens and
        window reruns) per second."""
        return len(self.steps) / self.seconds if self.seconds else 0.0


class Sampler:
    """Pick the next token from logits: greedy at temperature 0.

    Otherwise it samples from softmax(logits / temperature), restricted to
    the ``top_k`` largest logits when top_k > 0, with a seeded generator.
    """

    def __init__(self, temperature: float = 0.0, top_k: int = 0,
                 seed: int = 0):
        if temperature < 0:
            raise NeurodeployError(
                f"invalid temperature {temperature}; use 0 (greedy) or a "
                "positive value")
        if top_k < 0:
            raise NeurodeployError(
                f"invalid top-k {top_k}; use 0 (off) or a positive count")
        self.temperature = temperature
        self.top_k = top_k
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
            return int(torch.argmax(logits))
        scaled = logits.double() / self.temperature
        if 0 < self.top_k < scaled.numel():
            cutoff = torch.topk(scaled, self.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < cutoff, float("-inf"))
        probabilities = torch.softmax(scaled, dim=0)
        return int(torch.multinomial(probabilities, 1,
                                     generator=self.generator))


def prompt_tokens(network: Network, prompt: str) -> list[int]:
    """Tokenize a prompt and keep its last ``context`` tokens.

    Raises NeurodeployError for an empty prompt or characters outside the
    vocabulary, and logs how many tokens were dropped.
    """
    if not prompt:
        raise NeurodeployError("the prompt is empty; give at least one "
                               "character with --prompt")
    tokens = network.tokenizer.encode(prompt)
    context = network.spec.model.context
    if len(tokens) > context:
        log.info("prompt has %d tokens but the context is %d; keeping the "
                 "last %d", len(tokens), context, context)
        tokens = tokens[-context:]
    return tokens


def readout_sources(network: Network) -> list[int]:
    """Return the layers whose spikes the readout needs, encoder excluded."""
    return sorted({source for source, _, _ in network.readout["inputs"]}
                  - {0})


def readout_logits(reference: Reference,
                   spikes: dict[int, np.ndarray]) -> torch.Tensor:
    """Compute one token's logits (V,) from its spikes, as Reference does."""
    tensors = {index: torch.from_numpy(np.asarray(value, np.float32))[None]
               for index, value in spikes.items()}
    stream = reference.drive(reference.network.readout["inputs"], tensors)
    rate = stream.mean(dim=-1)
    normed = rate * reference.readout["norm_scale"] \
        + reference.readout["norm_shift"]
    logits = F.linear(normed, reference.readout["head_weight"],
                      reference.readout["head_bias"])
    return logits[0]


def encoder_row(reference: Reference, prefix: list[int]) -> np.ndarray:
    """Return the encoder's (C,) spikes for the last token of ``prefix``."""
    encoder = reference.network.layers[0]
    rows = reference.encode(encoder, torch.tensor([prefix]))
    return rows[-1, :, 0].numpy().astype(np.int8)


def reference_backend(reference: Reference) -> Backend:
    """Return a backend that reruns the Reference on the whole prefix."""
    def run(prefix, _row, _position):
        _, spikes = reference.run(torch.tensor([prefix]))
        return {index: value[-1].numpy().astype(np.int8)
                for index, value in spikes.items() if index != 0}
    return run


def lava_backend(decoder) -> Backend:
    """Return a backend that runs one token on a ``LavaDecoder``."""
    def run(_prefix, row, position):
        return decoder.run_token(row, position)
    return run


def generate(backend: Backend, reference: Reference, prompt: list[int],
             count: int, sampler: Sampler,
             on_token: Callable[[int], None] | None = None) -> Generation:
    """Run the prompt, then generate ``count`` tokens.

    Spikes of layer 0 (the encoder) are added to every step's record.
    """
    if count <= 0:
        raise NeurodeployError(f"invalid token count {count}; it must be "
                               "positive")
    context = reference.network.spec.model.context
    window = list(prompt[-context:])
    result = Generation(tokens=[])
    started = time.perf_counter()

    def feed(position: int) -> torch.Tensor:
        prefix = window[:position + 1]
        row = encoder_row(reference, prefix)
        spikes = backend(prefix, row, position)
        spikes[0] = np.repeat(row[:, None], reference.time_steps, axis=1)
        result.steps.append(TokenStep(position, prefix[-1], spikes))
        return readout_logits(reference, spikes)

    for position in range(len(window)):
        logits = feed(position)
    for number in range(count):
        token = sampler(logits)
        result.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if number == count - 1:
            break
        if len(window) == context:
            window = window[1:] + [token]
            for position in range(context):
                logits = feed(position)
        else:
            window.append(token)
            logits = feed(len(window) - 1)
    result.seconds = time.perf_counter() - started
    return result
