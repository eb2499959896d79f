"""Token-wise synapses, foldable norms and the text-to-spike encoder.

Layout: a spike or current tensor is (N, C, T), time last as in SLAYER,
with N = batch * positions. Layers here store it time-major in memory
((N, T, C) contiguous, viewed as (N, C, T)) so that each Linear runs as one
matrix product and the neuron reads contiguous rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .neuron import WEIGHT_SCALE

WEIGHT_STEP = 2 / WEIGHT_SCALE  # SLAYER's quantize_8bit: even mantissas
WEIGHT_MIN = -256 / WEIGHT_SCALE  # 8-bit signed mantissa, exponent 0
WEIGHT_MAX = 254 / WEIGHT_SCALE


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Round to SLAYER's 8-bit weight grid with a straight-through gradient.

    Equals ``slayer.neuron.base.Neuron.quantize_8bit`` in lava-dl 0.6.0:
    steps of 2/64 and range [-4, 254/64], gradient zero outside the range.
    """
    rounded = weight + (torch.round(weight / WEIGHT_STEP) * WEIGHT_STEP
                        - weight).detach()
    return rounded.clamp(WEIGHT_MIN, WEIGHT_MAX)


class PowerNorm(nn.Module):
    """Per-channel scale by a running quadratic mean, PowerNorm-style.

    y = gamma * x / sqrt(psi + eps) + beta, where psi is the running mean of
    x^2 (no mean subtraction). In training, psi mixes the batch estimate
    (with gradient) into the running one, so forward statistics stay close
    to those used at inference; it folds into a weight and bias like
    BatchNorm. After Shen et al., "PowerNorm: Rethinking Batch Normalization
    in Transformers", ICML 2020.
    """

    def __init__(self, channels: int, momentum: float = 0.1,
                 eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_psi", torch.ones(channels))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x of shape (M, C)."""
        if self.training:
            batch_psi = x.pow(2).mean(dim=0)
            psi = (1 - self.momentum) * self.running_psi \
                + self.momentum * batch_psi
            self.running_psi.copy_(psi.detach())
        else:
            psi = self.running_psi
        return x * (self.weight / torch.sqrt(psi + self.eps)) + self.bias


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return a norm over the channels of (M, C) rows."""
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "power":
        return PowerNorm(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}")


class SpikeLinear(nn.Module):
    """Token-wise Dense synapse with 8-bit quantised weights and a norm.

    Shape: (N, C_in, T) -> (N, C_out, T). The norm (BatchNorm or PowerNorm)
    folds into the weight and a bias at export; it sees every time step of
    every token as one sample.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str | None):
        super().__init__()
        weight = torch.empty(out_channels, in_channels)
        # Uniform fan-in init, kept inside the 8-bit range [-4, 4).
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(weight.uniform_(-bound, bound))
        self.norm = make_norm(norm, out_channels) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t = x.shape
        rows = x.transpose(1, 2).reshape(n * t, -1)  # (N*T, C_in)
        out = F.linear(rows, quantize_weight(self.weight))  # (N*T, C_out)
        if self.norm is not None:
            out = self.norm(out)
        return out.view(n, t, -1).transpose(1, 2)  # (N, C_out, T)


class Heaviside(torch.autograd.Function):
    """Step function x > 0 with a sigmoid-derivative surrogate (slope 4)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(4 * x)
        return grad * 4 * sig * (1 - sig)


def _bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Binary code of integer ``values``, least significant bit first."""
    shifts = torch.arange(width, device=values.device)
    return ((values[..., None] >> shifts) & 1).float()


class SpikeEncoder(nn.Module):
    """Text-to-spike encoder: a binary token code joined with a position code.

    Shape: tokens (B, P) -> spikes (B, P, C), where C = d_model; the token
    code fills the first d_model - d_position channels. The caller repeats
    the code for T steps (direct encoding).
    """

    def __init__(self, vocab_size: int, model):
        super().__init__()
        self.token_encoding = model.token_encoding
        self.position_encoding = model.position_encoding
        d_position = 0 if model.position_encoding == "none" \
            else model.d_position
        self.d_token = model.d_model - d_position
        self.d_position = d_position
        self.vocab_size = vocab_size
        self.context = model.context

        needed = {"one_hot": vocab_size,
                  "binary": max(1, math.ceil(math.log2(vocab_size)))}
        minimum = needed.get(self.token_encoding, 1)
        if self.d_token < minimum:
            raise ValueError(
                f"token_encoding={self.token_encoding} needs "
                f"d_model - d_position >= {minimum} for a vocabulary of "
                f"{vocab_size}; raise d_model to {minimum + d_position}"
            )
        if self.token_encoding == "learned":
            self.token_table = nn.Parameter(torch.randn(vocab_size,
                                                        self.d_token))
        if self.position_encoding == "learned":
            self.position_table = nn.Parameter(
                torch.randn(model.context, d_position))

    def token_code(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.token_encoding == "learned":
            code = Heaviside.apply(self.token_table[tokens])
        elif self.token_encoding == "one_hot":
            code = F.one_hot(tokens, self.vocab_size).float()
        else:
            width = max(1, math.ceil(math.log2(self.vocab_size)))
            code = _bits(tokens, width)
        return F.pad(code, (0, self.d_token - code.shape[-1]))

    def position_code(self, n_positions: int, device) -> torch.Tensor:
        positions = torch.arange(n_positions, device=device)
        kind = self.position_encoding
        if kind == "learned":
            return Heaviside.apply(self.position_table[:n_positions])
        if kind == "one_hot":
            code = F.one_hot(positions, self.context).float()
        elif kind == "binary":
            width = max(1, math.ceil(math.log2(max(self.context, 2))))
            code = _bits(positions, width)
        else:
            code = _sinusoid_code(positions, self.d_position)
        return F.pad(code, (0, self.d_position - code.shape[-1]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        code = self.token_code(tokens)  # (B, P, d_token)
        if self.d_position == 0:
            return code
        b, p = tokens.shape
        position = self.position_code(p, tokens.device)  # (P, d_position)
        return torch.cat([code, position.expand(b, p, -1)], dim=-1)


def _sinusoid_code(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sign bits of the standard sin/cos position encoding: (P, width)."""
    half = (width + 1) // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    angles = positions[:, None].float() * frequencies[None, :].to(
        positions.device)
    waves = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return (waves[:, :width] > 0).float()
