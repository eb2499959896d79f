"""Models: the spiking decoder and its same-size ANN baseline."""

from torch import nn

from ..spec import ModelSpec
from .ann import AnnDecoder
from .snn import SpikingDecoder


def build_model(model: ModelSpec, vocab_size: int) -> nn.Module:
    """Build the decoder that ``model.arch`` names."""
    if model.arch == "snn":
        return SpikingDecoder(model, vocab_size)
    if model.arch == "ann":
        return AnnDecoder(model, vocab_size)
    raise ValueError(f"unknown arch {model.arch!r}; choose 'snn' or 'ann'")
