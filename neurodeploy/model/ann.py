"""The ANN baseline: a standard pre-norm GPT decoder of the same size.

Softmax attention, GELU MLP and LayerNorm, with the spiking decoder's
width, depth, heads, MLP width and context, so quality and operation
counts compare like for like. Forward: tokens (B, P) -> logits (B, P, V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec


class CausalSelfAttention(nn.Module):
    def __init__(self, model: ModelSpec):
        super().__init__()
        self.qkv = nn.Linear(model.d_model, 3 * model.d_model)
        self.out = nn.Linear(model.d_model, model.d_model)
        self.n_heads = model.n_heads
        self.dropout = model.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)

        def heads(t):  # (B, P, C) -> (B, H, P, D)
            return t.view(b, p, self.n_heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(q), heads(k), heads(v), is_causal=True,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, p, c))  # (B, P, C)


class Block(nn.Module):
    def __init__(self, model: ModelSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(model.d_model)
        self.attention = CausalSelfAttention(model)
        self.norm2 = nn.LayerNorm(model.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(model.d_model, model.d_mlp), nn.GELU(),
            nn.Linear(model.d_mlp, model.d_model), nn.Dropout(model.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AnnDecoder(nn.Module):
    """Token and position embeddings, L blocks, final LayerNorm, head."""

    def __init__(self, model: ModelSpec, vocab_size: int):
        super().__init__()
        self.spec = model
        self.token_table = nn.Embedding(vocab_size, model.d_model)
        self.position_table = nn.Embedding(model.context, model.d_model)
        self.blocks = nn.ModuleList(Block(model)
                                    for _ in range(model.n_layers))
        self.norm = nn.LayerNorm(model.d_model)
        self.head = nn.Linear(model.d_model, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_table(tokens) + self.position_table(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
