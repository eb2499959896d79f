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

from ..errors import NeurodeployError
from .batch_norm import fusable
from .neuron import WEIGHT_SCALE
from .spike_matmul import (K_MAX, K_MIN, SPIKE_COUNT, SPIKES_UINT8,
                           WEIGHT_STEP, spike_linear)

# SLAYER's 8-bit weight grid: steps of 2/64 from -256/64 to 254/64.
WEIGHT_MIN = K_MIN * WEIGHT_STEP
WEIGHT_MAX = K_MAX * WEIGHT_STEP


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
    to those used at inference. It folds into a weight and bias like
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


def norm_affine(norm: nn.Module | None,
                channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scale, shift) with norm(x) = scale * x + shift at inference.

    Raises NotImplementedError for LayerNorm, whose statistics depend on
    each sample and so cannot fold into a synapse.
    """
    if norm is None:
        return torch.ones(channels), torch.zeros(channels)
    if isinstance(norm, nn.BatchNorm1d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    if isinstance(norm, PowerNorm):
        scale = norm.weight / torch.sqrt(norm.running_psi + norm.eps)
        return scale, norm.bias.clone()
    raise NotImplementedError(
        f"{type(norm).__name__} cannot be folded into a synapse; train with "
        "norm=batch or norm=power"
    )


class SpikeLinear(nn.Module):
    """Token-wise Dense synapse with 8-bit quantised weights and a norm.

    Shape: (N, C_in, T) -> (N, C_out, T). The norm (BatchNorm or PowerNorm)
    folds into the weight and a bias at export. It treats every time step
    of every token as one sample. With ``binary_input`` the caller promises
    0/1 inputs (spikes), and training computes the product with an exact
    integer GEMM (``spike_matmul``).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str | None,
                 binary_input: bool = False):
        super().__init__()
        self.binary_input = binary_input
        weight = torch.empty(out_channels, in_channels)
        # Uniform fan-in init, kept inside the 8-bit range [-4, 4).
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(weight.uniform_(-bound, bound))
        self.norm = make_norm(norm, out_channels) if norm else None
        self.deployed: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, apply_norm: bool = True
                ) -> torch.Tensor:
        """Return the norm of the product, or the bare product when
        ``apply_norm`` is False (the caller applies ``fusable_norm``)."""
        n, _, t = x.shape
        rows = x.transpose(1, 2).reshape(n * t, -1)  # (N*T, C_in)
        if self.deployed is not None:
            weight, bias = self.deployed
            out = torch.addmm(bias / WEIGHT_SCALE, rows,
                              weight.t() / WEIGHT_SCALE)
        else:
            if self.binary_input:
                spikes_u8 = getattr(x, SPIKES_UINT8, None)
                if spikes_u8 is not None:
                    spikes_u8 = spikes_u8.view(n * t, -1)
                out = spike_linear(rows, self.weight, spikes_u8,
                                   getattr(x, SPIKE_COUNT, None))
            else:
                out = F.linear(rows, quantize_weight(self.weight))
            if self.norm is not None and apply_norm:
                out = self.norm(out)
        return out.view(n, t, -1).transpose(1, 2)  # (N, C_out, T)

    def fusable_norm(self) -> nn.BatchNorm1d | None:
        """Return the norm when a neuron kernel can apply it (``CubaLIF``),
        which is BatchNorm in training and not deployed, else None."""
        if self.deployed is None and fusable(self.norm):
            return self.norm
        return None

    @torch.no_grad()
    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the norm into integer weight and bias mantissas.

        Returns ``weight`` (C_out, C_in) with even values in [-256, 254] and
        ``bias`` (C_out,) in [-4096, 4095], both in units of 1/64 as
        SLAYER's ``quantize_8bit(descale=True)`` writes weights. Values
        outside those ranges are clamped.
        """
        scale, shift = norm_affine(self.norm, self.weight.shape[0])
        folded = scale[:, None] * quantize_weight(self.weight)
        weight = 2 * torch.round(folded * WEIGHT_SCALE / 2).clamp(-128, 127)
        bias = torch.round(shift * WEIGHT_SCALE).clamp(-4096, 4095)
        return weight, bias

    def deploy(self, enabled: bool = True) -> None:
        """Compute with the folded integer weights (the exported network)."""
        self.deployed = self.fold() if enabled else None


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
    """Text-to-spike encoder: binary token codes joined with a position code.

    Shape: tokens (B, P) -> spikes (B, P, C), where C = d_model. Channels
    hold, in order, the code of token i, the codes of tokens i-1 ..
    i-token_shift (a token shift as in SpikeGPT, Zhu et al. 2023), zero
    padding and the position code. The caller repeats the code for T steps
    (direct encoding).
    """

    def __init__(self, vocab_size: int, model):
        super().__init__()
        self.token_encoding = model.token_encoding
        self.position_encoding = model.position_encoding
        d_position = 0 if model.position_encoding == "none" \
            else model.d_position
        # The current token and the token_shift previous ones each get an
        # equal share of the token channels.
        self.token_shift = model.token_shift
        self.d_token = (model.d_model - d_position) // (1 + model.token_shift)
        self.d_padding = model.d_model - d_position \
            - self.d_token * (1 + model.token_shift)
        self.d_position = d_position
        self.vocab_size = vocab_size
        self.context = model.context

        needed = {"one_hot": vocab_size,
                  "binary": max(1, math.ceil(math.log2(vocab_size)))}
        minimum = needed.get(self.token_encoding, 1)
        if self.d_token < minimum:
            raise NeurodeployError(
                f"token_encoding={self.token_encoding} needs {minimum} "
                f"channels per token for a vocabulary of {vocab_size}, but "
                f"d_model={model.d_model} leaves {self.d_token}; raise "
                f"d_model to {minimum * (1 + model.token_shift) + d_position}"
            )
        if self.token_encoding == "learned":
            self.token_table = nn.Parameter(torch.randn(vocab_size,
                                                        self.d_token))
        if self.position_encoding == "learned":
            self.position_table = nn.Parameter(
                torch.randn(model.context, d_position))

    def token_code(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.token_encoding == "learned":
            # Not token_table[tokens], because that indexing's CPU backward
            # (index_put_ with accumulate, torch 2.3) adds rows in a varying
            # order, so two runs of one seed would drift apart.
            code = Heaviside.apply(F.embedding(tokens, self.token_table))
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
        b, p = tokens.shape
        code = self.token_code(tokens)  # (B, P, d_token)
        parts = [code]
        for shift in range(1, self.token_shift + 1):
            # Token i - shift; positions before the window are silent.
            parts.append(F.pad(code, (0, 0, shift, 0))[:, :p])
        parts.append(code.new_zeros(b, p, self.d_padding))
        if self.d_position:
            position = self.position_code(p, tokens.device)  # (P, d_pos)
            parts.append(position.expand(b, p, -1))
        return torch.cat(parts, dim=-1)  # (B, P, d_model)


def _sinusoid_code(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sign bits of the standard sin/cos position encoding: (P, width)."""
    half = (width + 1) // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    angles = positions[:, None].float() * frequencies[None, :].to(
        positions.device)
    waves = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return (waves[:, :width] > 0).float()
