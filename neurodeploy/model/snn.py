"""The spiking GPT decoder, after SpikeDecoder (Beger, Walter and Knoll,
arXiv 2606.12287), built from SLAYER CUBA-LIF neurons.

Shapes: tokens (B, P); spikes and currents (B*P, C, T), time last.

Residual styles (``ModelSpec.residual``):

- ``membrane`` (default, deployable): the stream is the encoder's spikes
  plus every earlier branch's output current. Each branch starts with a LIF
  on the stream, so every Linear reads spikes; on Lava the stream becomes
  synaptic fan-in into those entry LIFs.
- ``spike`` (deployable): the stream is re-binarised by a LIF after each
  branch, so it is a spike train throughout.
- ``float`` (ablation, not deployable): branches read the float stream
  directly, without an entry LIF.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..spec import ModelSpec
from . import attention_kernels
from . import neuron_kernels as kernels
from .batch_norm import add_batch_norm
from .layers import SpikeEncoder, SpikeLinear, make_norm
from .neuron import CubaLIF, CubaParams

# Q|K|V firing rates below which the sparse attention kernels beat the
# batched dense products in a training step (docs/benchmarks.md).
SPARSE_FORWARD_RATE = 0.06
SPARSE_BACKWARD_RATE = 0.03


def neuron_params(model: ModelSpec) -> CubaParams:
    return CubaParams(model.threshold, model.current_decay,
                      model.voltage_decay, model.tau_grad, model.scale_grad)


class SpikingSelfAttention(nn.Module):
    """Softmax-free causal self-attention on spikes.

    Q, K, V = LIF(norm(Linear(s))); per time step and head A = Q K^T with
    future positions zeroed, Y = (A V) * 2**-shift (see ``attention_shifts``),
    then an
    attention LIF and the output projection (Linear + norm, a current).
    All operands of both products are spikes, so each product is a sum of
    accumulates. Shape: (B*P, C, T) -> (B*P, C, T).
    """

    def __init__(self, model: ModelSpec):
        super().__init__()
        params = neuron_params(model)
        c = model.d_model
        # Q, K and V share one matrix product, one per-channel norm and one
        # LIF call: per channel this is three independent layers.
        # Every Linear reads spikes, except the branch inputs of the float
        # residual ablation, which read the float stream.
        spikes_in = model.residual != "float"
        self.qkv = SpikeLinear(c, 3 * c, model.norm, spikes_in)
        self.qkv_lif = CubaLIF(params)
        self.attention_lif = CubaLIF(params, feeds_linear=True)
        self.out = SpikeLinear(c, c, model.norm, binary_input=True)
        self.n_heads = model.n_heads
        self.shift = model.attention_shift
        self.position_shift = model.attention_position_shift

    @property
    def output(self) -> SpikeLinear:
        return self.out

    def forward(self, s: torch.Tensor, batch: int,
                apply_norm: bool = True) -> torch.Tensor:
        """Return the branch's output current; without the output norm
        when ``apply_norm`` is False (``Branch`` applies it)."""
        # The Q|K|V spikes come out of the neuron kernel split into heads,
        # (3, B, T, H, P, D), and the attention neurons read the products
        # in that layout: no copies around the matrix products.
        qkv = linear_lif(self.qkv, self.qkv_lif, s,
                         heads=(batch, self.n_heads, 3))
        rate = self.qkv_lif.rate
        y = _SplitAttention.apply(qkv, self.shift, self.position_shift,
                                  None if rate is None else float(rate))
        return self.out(self.attention_lif(y), apply_norm=apply_norm)


def linear_lif(linear: SpikeLinear, lif: CubaLIF, x: torch.Tensor,
               heads: tuple | None = None) -> torch.Tensor:
    """lif(linear(x)); in training the linear's batch norm runs inside the
    neuron kernel, which saves two passes over memory each way."""
    norm = linear.fusable_norm()
    if norm is None:
        return lif(linear(x), heads=heads)
    return lif(linear(x, apply_norm=False), norm=norm, heads=heads)


def attention_shifts(n_positions: int, shift: int, by_position: bool,
                     device=None) -> torch.Tensor:
    """Right shift applied to A V at each query position: (P,) integers.

    With ``by_position``, position i (which sums over i + 1 keys) is shifted
    by a further floor(log2(i + 1)), a power-of-two approximation of the
    mean over the keys it attends to.
    """
    shifts = torch.full((n_positions,), shift, device=device)
    if by_position:
        positions = torch.arange(1, n_positions + 1, device=device)
        shifts = shifts + torch.floor(torch.log2(positions.double())).long()
    return shifts


def attend(qkv: torch.Tensor, batch: int, n_heads: int, shift: int,
           position_shift: bool) -> torch.Tensor:
    """Causal spike attention without softmax on (B*P, 3C, T) ``qkv``.

    ``qkv`` holds the Q, K and V spikes in that channel order, each split
    into heads of C / n_heads channels. Returns (A V) * 2**-shift per
    query position, (B*P, C, T).
    """
    n, c3, t = qkv.shape
    p = n // batch
    split = qkv.transpose(1, 2).reshape(batch, p, t, 3, n_heads, -1)
    q, k, v = split.permute(3, 0, 2, 4, 1, 5)  # each (B, T, H, P, D)
    y = attend_heads(q, k, v, shift, position_shift)
    rows = y.permute(0, 3, 1, 2, 4).reshape(n, t, c3 // 3)  # (B*P, T, C)
    return rows.transpose(1, 2)


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 shift: int, position_shift: bool) -> torch.Tensor:
    """``attend`` on (B, T, H, P, D) spikes; returns (B, T, H, P, D)."""
    weights = _causal_weights(q.shape[3], shift, position_shift, q.device)
    scores = (q @ k.transpose(-1, -2)).mul_(weights)
    return scores @ v


def _causal_weights(n_positions: int, shift: int, position_shift: bool,
                    device) -> torch.Tensor:
    """Return the causal mask and the per-query power-of-two scale as one
    (P, P) matrix. All factors are spikes, integers and powers of two, so
    scaling A before the product equals scaling A V after it, exactly."""
    causal = torch.ones(n_positions, n_positions, device=device).tril()
    scale = torch.exp2(-attention_shifts(n_positions, shift, position_shift,
                                         device).float())
    return causal * scale[:, None]


def _spike_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Q K^T of 0/1 spikes, (N, P, D) each. The scores are integers up to
    D, exact in bfloat16 while D <= 256."""
    if q.device.type == "cpu" and q.shape[2] <= 256 and _bf16_scores():
        return torch.bmm(q.bfloat16(), k.bfloat16().transpose(1, 2)).float()
    return torch.bmm(q, k.transpose(1, 2))


@functools.cache
def _bf16_scores() -> bool:
    """Tell whether Q K^T runs in bfloat16 here, conversions included.

    On an AMD EPYC with bfloat16 instructions that was the faster product
    in a training step. On a Sapphire Rapids Xeon, whose float32 GEMMs are
    faster, float32 took 1.5 ms (1.6 %) less of a demo step; CPUs with
    AMX (a Xeon feature since Sapphire Rapids) keep float32."""
    amx = "+amx-bf16" in kernels.host_cpu_features()
    return torch.backends.mkldnn.is_available() and not amx \
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class _SplitAttention(torch.autograd.Function):
    """``attend_heads`` on Q|K|V spikes split into heads, (3, B, T, H, P,
    D), as the neuron kernel writes them.

    The backward pass writes the three gradients into one tensor of that
    layout, which the neuron kernel reads. Autograd would stack them in a
    copy of its own. ``rate``, the firing rate of Q|K|V when known, picks
    the compiled sparse kernels (``attention_kernels``) on a CPU below
    ``SPARSE_FORWARD_RATE`` and ``SPARSE_BACKWARD_RATE``."""

    @staticmethod
    def forward(ctx, qkv, shift, position_shift, rate=None):
        _, b, t, h, p, d = qkv.shape
        weights = _causal_weights(p, shift, position_shift, qkv.device)
        known = qkv.device.type == "cpu" and rate is not None \
            and d <= attention_kernels.MAX_CHANNELS
        sparse_forward = known and rate < SPARSE_FORWARD_RATE
        ctx.sparse_backward = known and rate < SPARSE_BACKWARD_RATE
        ctx.row_scale = None
        if sparse_forward or ctx.sparse_backward:
            # The causal weights' diagonal is the per-query scale.
            ctx.row_scale = weights.diagonal().contiguous().numpy()
        if sparse_forward:
            y = qkv.new_empty(b, t, h, p, d)
            attention_kernels.sparse_attention_forward(
                _matrices(qkv).numpy(), ctx.row_scale,
                y.view(-1, p, d).numpy())
            ctx.save_for_backward(qkv, None, weights)
            return y

        q, k, v = _matrices(qkv)
        scores = _spike_scores(q, k).mul_(weights)
        ctx.save_for_backward(qkv, scores, weights)
        return torch.bmm(scores, v).view(b, t, h, p, d)

    @staticmethod
    def backward(ctx, grad_y):
        qkv, scores, weights = ctx.saved_tensors
        _, b, t, h, p, d = qkv.shape
        grad_y = grad_y.reshape(b * t * h, p, d)
        grad = torch.empty_like(qkv)
        if ctx.sparse_backward:
            attention_kernels.sparse_attention_backward(
                _matrices(qkv).numpy(), ctx.row_scale,
                grad_y.contiguous().numpy(), _matrices(grad).numpy())
            return grad, None, None, None

        q, k, v = _matrices(qkv)
        if scores is None:  # the forward pass ran the sparse kernel
            scores = _spike_scores(q, k).mul_(weights)
        grad_q, grad_k, grad_v = _matrices(grad)
        grad_scores = torch.bmm(grad_y, v.transpose(1, 2)).mul_(weights)
        torch.bmm(scores.transpose(1, 2), grad_y, out=grad_v)
        torch.bmm(grad_scores, k, out=grad_q)
        torch.bmm(grad_scores.transpose(1, 2), q, out=grad_k)
        return grad, None, None, None


def _matrices(qkv: torch.Tensor) -> torch.Tensor:
    """Return (3, B, T, H, P, D) ``qkv`` as a (3, B*T*H, P, D) view."""
    return qkv.view(3, -1, *qkv.shape[-2:])


def compile_attention_kernels() -> None:
    """Compile the sparse attention kernels, or load them from numba's
    cache, on tiny inputs of the types training passes, so that the step
    where the firing rate first falls below the thresholds does not pay
    for it."""
    qkv = torch.zeros(3, 1, 1, 1, 2, 3, requires_grad=True)
    _SplitAttention.apply(qkv, 0, True, 0.0).sum().backward()


class SpikingMLP(nn.Module):
    """Linear -> norm -> LIF -> Linear -> norm; output is a current.

    Shape: (B*P, C, T) -> (B*P, C, T).
    """

    def __init__(self, model: ModelSpec):
        super().__init__()
        self.up = SpikeLinear(model.d_model, model.d_mlp, model.norm,
                              binary_input=model.residual != "float")
        self.hidden_lif = CubaLIF(neuron_params(model), feeds_linear=True)
        self.down = SpikeLinear(model.d_mlp, model.d_model, model.norm,
                                binary_input=True)

    @property
    def output(self) -> SpikeLinear:
        return self.down

    def forward(self, s: torch.Tensor, batch: int,
                apply_norm: bool = True) -> torch.Tensor:
        """Return the output current, as ``SpikingSelfAttention``."""
        return self.down(linear_lif(self.up, self.hidden_lif, s),
                         apply_norm=apply_norm)


class Branch(nn.Module):
    """One residual branch (attention or MLP) with its stream interface."""

    def __init__(self, body: nn.Module, model: ModelSpec):
        super().__init__()
        self.body = body
        self.residual = model.residual
        params = neuron_params(model)
        # membrane: entry LIF turns the summed stream into spikes.
        # spike: exit LIF re-binarises the stream after the sum.
        self.lif = CubaLIF(params, feeds_linear=True) \
            if self.residual != "float" else None
        self.dropout = nn.Dropout(model.dropout)

    def forward(self, stream: torch.Tensor, batch: int) -> torch.Tensor:
        if self.residual == "membrane":
            spikes = self.lif(stream)
            norm = self.body.output.fusable_norm()
            if norm is not None and not self.dropout.p:
                # A norm is fusable in training only. It then runs in the
                # add's pass.
                out = self.body(spikes, batch, apply_norm=False)
                return add_batch_norm(stream, out, norm)
            return stream + self.dropout(self.body(spikes, batch))
        if self.residual == "spike":
            out = self.body(stream, batch)
            return self.lif(stream + self.dropout(out))
        return stream + self.dropout(self.body(stream, batch))


class SpikingDecoder(nn.Module):
    """Encoder, L blocks of (attention, MLP) branches and a readout.

    Forward: tokens (B, P) -> logits (B, P, vocab).
    """

    def __init__(self, model: ModelSpec, vocab_size: int):
        super().__init__()
        self.spec = model
        self.encoder = SpikeEncoder(vocab_size, model)
        branches = []
        for _ in range(model.n_layers):
            branches.append(Branch(SpikingSelfAttention(model), model))
            branches.append(Branch(SpikingMLP(model), model))
        self.branches = nn.ModuleList(branches)
        self.readout_lif = CubaLIF(neuron_params(model)) \
            if model.readout == "spikes" else None
        self.readout_norm = make_norm(model.norm, model.d_model)
        self.head = nn.Linear(model.d_model, vocab_size)

    def stream(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the residual stream after the last block: (B*P, C, T)."""
        b, p = tokens.shape
        code = self.encoder(tokens)  # (B, P, C)
        rows = code.reshape(b * p, 1, -1)  # (B*P, 1, C)
        # Direct encoding: the same spikes at every step, (N, T, C) in memory.
        x = rows.expand(-1, self.spec.time_steps, -1).contiguous()
        x = x.transpose(1, 2)  # (B*P, C, T)
        for branch in self.branches:
            x = branch(x, b)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, p = tokens.shape
        x = self.stream(tokens)
        if self.readout_lif is not None:
            x = self.readout_lif(x)
        # Average over T, taken on the time-major (B*P, T, C) memory, so
        # that its gradient keeps the layout the neuron kernels read.
        rate = x.transpose(1, 2).mean(dim=1)  # (B*P, C)
        logits = self.head(self.readout_norm(rate))
        return logits.view(b, p, -1)
