"""Export a training checkpoint to NetX HDF5 (``neurodeploy export``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .errors import NeurodeployError
from .graph import build_graph
from .model import build_model
from .model.layers import SpikeLinear
from .netx_write import FORMAT_VERSION, write_network

log = logging.getLogger(__name__)


def load_trained(checkpoint_path: str | Path):
    """Return (checkpoint payload, model in eval mode) from a checkpoint."""
    payload = load_checkpoint(checkpoint_path)
    spec = payload["spec"]
    model = build_model(spec.model, payload["tokenizer"].vocab_size)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise NeurodeployError(
            f"{payload['path']}: weights do not match the stored spec: "
            f"{str(error).splitlines()[0]}") from error
    return payload, model.eval()


def deploy(model) -> None:
    """Switch every synapse to its folded integer weights, in eval mode."""
    model.eval()
    for module in model.modules():
        if isinstance(module, SpikeLinear):
            module.deploy()


def export_checkpoint(checkpoint_path: str | Path, out_path: str | Path) -> dict:
    """Write the checkpoint's spiking decoder as NetX HDF5; return a report."""
    payload, model = load_trained(checkpoint_path)
    spec = payload["spec"]
    if spec.model.arch != "snn":
        raise NeurodeployError(
            f"{payload['path']} contains the ANN baseline (arch=ann), which has "
            "no spiking network to export; export an arch=snn checkpoint")

    graph = build_graph(model)
    _check_bias_placement(graph, spec.model.current_decay)
    write_network(out_path, graph, encoder_tables(model), {
        "time_steps": spec.model.time_steps, "spec": spec.to_dict(),
        "tokenizer": payload["tokenizer"].to_dict()})
    log.info("wrote %s: %d layers, %d folded weight matrices", out_path,
             len(graph.layers), len(graph.synapses))

    return {
        "file": str(out_path),
        "format_version": FORMAT_VERSION,
        "layers": len(graph.layers),
        "synapses": {name: s.error for name, s in graph.synapses.items()},
        "neurons": sum(layer.channels for layer in graph.layers[1:]),
    }


def _check_bias_placement(graph, current_decay: float) -> None:
    # Lava's LIF adds a bias to the voltage, SLAYER to the current; they
    # agree only when the current keeps nothing between steps.
    has_bias = any(s.bias.any() for s in graph.synapses.values())
    if has_bias and current_decay != 1.0:
        raise NeurodeployError(
            f"current_decay={current_decay} with folded norm biases cannot "
            "run exactly on Lava, which adds a bias to the voltage; train "
            "with current_decay=1.0")


@torch.no_grad()
def encoder_tables(model) -> dict:
    """Binary token and position codes of the trained encoder."""
    encoder = model.encoder
    vocab = torch.arange(encoder.vocab_size)
    token = encoder.token_code(vocab)
    if encoder.d_position:
        position = encoder.position_code(encoder.context, vocab.device)
    else:
        position = torch.zeros(encoder.context, 0)
    return {"token_code": token.numpy(), "position_code": position.numpy(),
            "token_shift": encoder.token_shift,
            "padding": encoder.d_padding}

