"""A PyTorch reference of an exported decoder, built from the file alone.

It computes every layer in Loihi's fixed-point arithmetic (SLAYER's CUBA
neuron with integer weights and biases in 1/64 units), with no delays:
all layers of one model time step see the same step. Lava must reproduce
its spikes exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model.neuron import CubaParams, cuba_lif
from .model.snn import attend
from .netx_read import Network, NetLayer


def neuron_params(neuron: dict) -> CubaParams:
    """CubaParams from lava-dl HDF5 neuron keys."""
    return CubaParams(neuron["vThMant"] / 64, neuron["iDecay"] / 4096,
                      neuron["vDecay"] / 4096)


class Reference:
    """Run a loaded decoder file on token windows."""

    def __init__(self, network: Network):
        if network.kind != "decoder":
            raise ValueError("Reference runs decoder files; use "
                             "run_chain for plain NetX networks")
        self.network = network
        self.time_steps = network.time_steps
        self.synapses = {name: (torch.from_numpy(w).double(),
                                torch.from_numpy(b).double())
                         for name, (w, b) in network.synapses.items()}
        self.params = {layer.index: neuron_params(layer.neuron)
                       for layer in network.layers if layer.neuron}
        readout = network.readout
        self.readout = {k: torch.from_numpy(v) for k, v in readout.items()
                        if k != "inputs"}

    @torch.no_grad()
    def run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return logits (B, P, V) and spikes {layer index: (B*P, C, T)}."""
        b, p = tokens.shape
        spikes: dict[int, torch.Tensor] = {}
        for layer in self.network.layers:
            if layer.kind == "encoder":
                spikes[0] = self.encode(layer, tokens)
            elif layer.kind == "attention":
                attrs = layer.attrs
                drive = attend(spikes[layer.inputs[0][0]], b,
                               int(attrs["heads"]), int(attrs["shift"]),
                               bool(attrs["position_shift"]))
                spikes[layer.index] = cuba_lif(drive, self.params[layer.index])
            else:
                drive = self.drive(layer.inputs, spikes)
                spikes[layer.index] = cuba_lif(drive, self.params[layer.index])

        stream = self.drive(self.network.readout["inputs"], spikes)
        rate = stream.mean(dim=-1)  # (B*P, C)
        normed = rate * self.readout["norm_scale"] + self.readout["norm_shift"]
        logits = F.linear(normed, self.readout["head_weight"],
                          self.readout["head_bias"])
        return logits.view(b, p, -1), spikes

    def drive(self, inputs, spikes) -> torch.Tensor:
        """Sum the currents of a layer's connections: (B*P, C, T) float32.

        Integer products are summed in float64 and are exact, so the order
        of the terms does not change the result.
        """
        total = None
        for source, synapse, _ in inputs:
            s = spikes[source]
            if synapse == "identity":
                current = s.double()
            else:
                weight, bias = self.synapses[synapse]
                current = torch.einsum("oi,nit->not", weight, s.double()) \
                    + bias[None, :, None]
                current = current / 64
            total = current if total is None else total + current
        return total.float()

    def encode(self, layer: NetLayer, tokens: torch.Tensor) -> torch.Tensor:
        """Spikes of the encoder: (B*P, C, T), the same at every step."""
        b, p = tokens.shape
        table = torch.from_numpy(layer.arrays["token_code"]).float()
        code = table[tokens]  # (B, P, d_token)
        parts = [code]
        for shift in range(1, int(layer.attrs.get("token_shift", 0)) + 1):
            parts.append(F.pad(code, (0, 0, shift, 0))[:, :p])
        parts.append(code.new_zeros(b, p, int(layer.attrs.get("padding", 0))))
        positions = torch.from_numpy(layer.arrays["position_code"]).float()
        if positions.shape[1]:
            parts.append(positions[:p].expand(b, p, -1))
        rows = torch.cat(parts, dim=-1).reshape(b * p, -1, 1)
        return rows.expand(-1, -1, self.time_steps).contiguous()
