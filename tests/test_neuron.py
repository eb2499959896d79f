"""The fast CUBA-LIF neuron against lava-dl SLAYER's own implementation."""

import pytest
import torch
from lava.lib.dl import slayer

from neurodeploy.model.neuron import CubaParams, cuba_lif, _forward_torch

PARAMETERS = [
    # threshold, current_decay, voltage_decay, tau_grad, scale_grad
    (1.0, 1.0, 0.25, 0.01, 10.0),
    (1.25, 0.25, 0.03, 1.0, 1.0),
    (0.5, 0.0, 0.0, 0.5, 2.0),
    (2.0, 0.1, 0.9, 0.1, 3.0),
]


@pytest.mark.parametrize("params", PARAMETERS, ids=str)
def test_spikes_match_slayer_bit_exactly(params):
    torch.manual_seed(0)
    reference = slayer.neuron.cuba.Neuron(
        threshold=params[0], current_decay=params[1],
        voltage_decay=params[2], tau_grad=params[3], scale_grad=params[4])
    x = torch.randn(64, 48, 16) * 1.5

    expected = reference(x)
    actual = cuba_lif(x, CubaParams(*params))

    assert expected.sum() > 0
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("params", PARAMETERS, ids=str)
def test_gradients_match_slayer(params):
    torch.manual_seed(1)
    reference = slayer.neuron.cuba.Neuron(
        threshold=params[0], current_decay=params[1],
        voltage_decay=params[2], tau_grad=params[3], scale_grad=params[4])
    x_ref = (torch.randn(32, 24, 8) * 1.5).requires_grad_()
    x_new = x_ref.detach().clone().requires_grad_()
    weights = torch.randn(32, 24, 8)

    (reference(x_ref) * weights).sum().backward()
    (cuba_lif(x_new, CubaParams(*params)) * weights).sum().backward()

    assert torch.allclose(x_new.grad, x_ref.grad, rtol=1e-4, atol=1e-7)


def test_threshold_is_strict_as_on_loihi():
    # Input exactly at threshold must not spike (Loihi fires at v > vTh).
    params = CubaParams(1.0, 1.0, 1.0)
    x = torch.tensor([[[1.0, 1.0 + 1 / 4096]]])
    assert cuba_lif(x, params).tolist() == [[[0.0, 1.0]]]


def test_tensor_path_matches_compiled_kernel():
    torch.manual_seed(2)
    params = CubaParams(1.0, 0.3, 0.2, 0.1, 1.0)
    x = torch.randn(16, 8, 12)

    compiled = cuba_lif(x, params)
    spikes, _ = _forward_torch(x.transpose(1, 2).contiguous(), params, False)

    assert torch.equal(spikes.transpose(1, 2), compiled)


def test_time_major_input_gives_same_spikes():
    torch.manual_seed(3)
    params = CubaParams(1.0, 1.0, 0.25)
    x = torch.randn(10, 6, 4)
    time_major = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(cuba_lif(time_major, params), cuba_lif(x, params))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, C, T\)"):
        cuba_lif(torch.zeros(3, 4), CubaParams(1.0, 1.0, 0.25))
