"""The fast CUBA-LIF neuron against lava-dl SLAYER's own implementation."""

import numba
import numpy as np
import pytest
import torch
from lava.lib.dl import slayer

from neurodeploy.model import neuron_kernels as kernels
from neurodeploy.model.batch_norm import add_batch_norm
from neurodeploy.model.neuron import (
    CubaLIF, CubaParams, _forward_torch, as_rows, cuba_lif, cuba_lif_count)
from neurodeploy.model.spike_matmul import SPIKE_COUNT, SPIKES_UINT8

PARAMETERS = [
    # threshold, current_decay, voltage_decay, tau_grad, scale_grad
    (1.0, 1.0, 0.25, 0.01, 10.0),
    (1.25, 0.25, 0.03, 1.0, 1.0),
    (0.5, 0.0, 0.0, 0.5, 2.0),
    (2.0, 0.1, 0.9, 0.1, 3.0),
]


def _slayer_neuron(params):
    threshold, current_decay, voltage_decay, tau_grad, scale_grad = params
    return slayer.neuron.cuba.Neuron(
        threshold=threshold, current_decay=current_decay,
        voltage_decay=voltage_decay, tau_grad=tau_grad,
        scale_grad=scale_grad)


@pytest.mark.parametrize("params", PARAMETERS, ids=str)
def test_spikes_match_slayer_bit_exactly(params):
    torch.manual_seed(0)
    reference = _slayer_neuron(params)
    x = torch.randn(64, 48, 16) * 1.5

    expected = reference(x)
    actual = cuba_lif(x, CubaParams(*params))

    assert expected.sum() > 0
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("params", PARAMETERS, ids=str)
def test_gradients_match_slayer(params):
    torch.manual_seed(1)
    reference = _slayer_neuron(params)
    x_ref = (torch.randn(32, 24, 8) * 1.5).requires_grad_()
    x_new = x_ref.detach().clone().requires_grad_()
    weights = torch.randn(32, 24, 8)

    (reference(x_ref) * weights).sum().backward()
    (cuba_lif(x_new, CubaParams(*params)) * weights).sum().backward()

    assert torch.allclose(x_new.grad, x_ref.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("params", [PARAMETERS[0], PARAMETERS[2]], ids=str)
def test_large_inputs_match_slayer(params):
    # Rows whose states outgrow float32's exact integers take the float64
    # path, mixed in one batch with rows that take the float32 path.
    torch.manual_seed(2)
    reference = _slayer_neuron(params)
    x = torch.randn(16, 24, 16) * 1.5
    x[::2] = x[::2] * 400.0 - 200.0

    expected = reference(x)
    actual = cuba_lif(x, CubaParams(*params))

    assert torch.equal(actual, expected)


def test_float32_state_is_exact_below_its_bound():
    params = CubaParams(1.0, 0.0, 0.0)  # keep factors 1: states add up
    scale, shift = np.ones(64, np.float32), np.zeros(64, np.float32)
    limit = 2**24 / (4096 * 4**2)  # 4 steps, odd_keep 1
    rng = np.random.default_rng(0)
    below = rng.uniform(-limit, limit, (4, 64)).astype(np.float32) * 0.999
    # Above the bound, float32 sums lose the low bits of odd drives.
    above = below * 5 + np.float32(1 / 4096)

    for row, fits in ((below, True), (above, False)):
        (volts32, too_large), (volts64, _) = _integrate_both(
            row, scale, shift, params)
        assert (too_large == 0) == fits
        assert np.array_equal(volts32, volts64) == fits


def _integrate_both(row, scale, shift, params):
    """Integrate ``row`` in float32 and in float64; return each type's
    voltages and count of inputs at or above the float32 bound."""
    current_keep, voltage_keep, threshold_state = params.kernel_args()[:3]
    results = []
    for dtype in (np.float32, np.float64):
        volts = np.empty_like(row)
        too_large = _integrate(
            row, scale, shift, np.empty(row.shape[1], dtype),
            np.empty(row.shape[1], dtype),
            np.empty(row.shape[1], np.int32), volts, np.empty_like(row),
            np.empty(row.shape, np.uint8), dtype(current_keep),
            dtype(voltage_keep), dtype(threshold_state), params.odd_keep)
        results.append((volts, too_large))
    return results


@numba.njit
def _integrate(x, scale, shift, current, voltage, over_limit, volts, spikes,
               spikes_u8, current_keep, voltage_keep, threshold_state,
               odd_keep):
    limit = kernels._float32_limit(x.shape[0], odd_keep)
    return kernels._integrate_row(x, scale, shift, current, voltage,
                                  over_limit, volts, spikes, spikes_u8,
                                  current_keep, voltage_keep,
                                  threshold_state, limit)


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


def test_surrogate_exp_is_accurate():
    # The backward kernel's vectorisable exp against float64, over the
    # whole float32 range the surrogate reaches.
    y = np.linspace(0.0, 87.0, 200001, dtype=np.float32)
    mantissa = np.empty_like(y)
    exponent = np.empty(y.shape, np.int32)
    _exp_neg_row(y, mantissa, exponent)
    got = mantissa * exponent.view(np.float32)
    expected = np.exp(-y.astype(np.float64))
    assert np.max(np.abs(got - expected) / expected) < 3e-6


@numba.njit
def _exp_neg_row(y, mantissa, exponent):
    kernels._exp_neg(y, np.float32(0.0), np.float32(1.0), mantissa, exponent)


def test_spike_count_and_its_gradient():
    torch.manual_seed(4)
    params = CubaParams(0.5, 1.0, 0.25, 0.01, 10.0)
    x_count = (torch.randn(16, 12, 4) * 2).requires_grad_()
    x_mean = x_count.detach().clone().requires_grad_()

    spikes, count = cuba_lif_count(x_count, params)
    assert count.item() == spikes.sum().item() > 0
    (count * 3.0).backward()
    (cuba_lif(x_mean, params).sum() * 3.0).backward()

    assert torch.allclose(x_count.grad, x_mean.grad, rtol=1e-5, atol=1e-7)


def test_uint8_copy_equals_spikes():
    torch.manual_seed(5)
    params = CubaParams(0.5, 1.0, 0.25)
    x = torch.randn(8, 6, 4) * 2
    spikes, _ = cuba_lif_count(x, params, with_uint8=True)
    copy = getattr(spikes, SPIKES_UINT8)
    assert copy.dtype == torch.uint8
    assert torch.equal(copy.float(), spikes.transpose(1, 2))
    assert getattr(spikes, SPIKE_COUNT) == int(spikes.sum())


def test_fused_batch_norm_equals_batch_norm_then_neuron():
    torch.manual_seed(6)
    params = CubaParams(0.5, 1.0, 0.25, 0.01, 10.0)
    norms = [torch.nn.BatchNorm1d(24) for _ in range(2)]
    norms[0].weight.data.uniform_(0.5, 2.0)
    norms[0].bias.data.uniform_(-1.0, 1.0)
    norms[1].load_state_dict(norms[0].state_dict())
    z = torch.randn(64, 4, 24) * 2 + 0.5  # (N, T, C) Linear output
    z_plain = z.clone().requires_grad_()
    z_fused = z.clone().requires_grad_()
    weights = torch.randn(64, 24, 4)

    normed = norms[0](z_plain.reshape(-1, 24)).view(64, 4, 24)
    plain = cuba_lif(normed.transpose(1, 2), params)
    lif = CubaLIF(params)
    fused = lif(z_fused.transpose(1, 2), norm=norms[1])
    (plain * weights).sum().backward()
    (fused * weights).sum().backward()

    assert torch.equal(plain, fused)
    assert torch.allclose(z_fused.grad, z_plain.grad, rtol=1e-3, atol=1e-4)
    for name in ("weight", "bias"):
        expected = getattr(norms[0], name).grad
        got = getattr(norms[1], name).grad
        assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3), name
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(norms[1], name).double(),
                              getattr(norms[0], name).double(),
                              rtol=1e-5, atol=1e-6), name


def test_split_heads_layout_matches_plain_spikes():
    torch.manual_seed(7)
    params = CubaParams(0.5, 1.0, 0.25, 0.01, 10.0)
    batch, positions, heads, d_head, steps = 2, 5, 2, 3, 4
    channels = 3 * heads * d_head
    x_plain = torch.randn(batch * positions, channels, steps,
                          requires_grad=True)
    x_split = x_plain.detach().clone().requires_grad_()
    grad = torch.randn(batch * positions, channels, steps)

    plain = cuba_lif(x_plain, params)
    split, _ = cuba_lif_count(x_split, params, heads=(batch, heads, 3))
    assert split.shape == (3, batch, steps, heads, positions, d_head)
    assert torch.equal(as_rows(split), plain)

    (plain * grad).sum().backward()
    (as_rows(split) * grad).sum().backward()
    assert torch.equal(x_split.grad, x_plain.grad)


def test_heads_input_matches_plain_input():
    # The attention neurons read (B, T, H, P, D) products where they lie.
    torch.manual_seed(8)
    params = CubaParams(0.5, 1.0, 0.25, 0.01, 10.0)
    y = (torch.randn(2, 4, 3, 5, 6) * 2).requires_grad_()
    rows = y.detach().permute(0, 3, 1, 2, 4).reshape(10, 4, 18)
    rows = rows.transpose(1, 2).clone().requires_grad_()
    grad = torch.randn(10, 18, 4)

    from_heads = cuba_lif(y, params)
    from_rows = cuba_lif(rows, params)
    assert torch.equal(from_heads, from_rows)

    (from_heads * grad).sum().backward()
    (from_rows * grad).sum().backward()
    expected = rows.grad.transpose(1, 2).reshape(2, 5, 4, 3, 6)
    assert torch.equal(y.grad, expected.permute(0, 2, 3, 1, 4))


def _fused_attention_neurons(z, y, norm, params):
    """Spikes and input gradients of a fused-norm, head-split population
    and of one reading (B, T, H, P, D) input, as the decoder uses them."""
    z = z.clone().requires_grad_()
    y = y.clone().requires_grad_()
    lif = CubaLIF(params)
    split = lif(z, norm=norm, heads=(2, 2, 3))
    split_rate = lif.rate
    plain = lif(y)
    weights = torch.linspace(-1.0, 1.0, split.numel()).view_as(split)
    (split * weights).sum().backward(retain_graph=True)
    (plain.sum() + 7.0 * split_rate + 3.0 * lif.rate).backward()
    return split, plain, z.grad, y.grad, norm.weight.grad


def test_tensor_path_matches_kernels_with_norm_and_heads(monkeypatch):
    # The tensor-operation path serves GPUs; here it runs on the CPU.
    torch.manual_seed(9)
    params = CubaParams(0.5, 1.0, 0.25, 0.01, 10.0)
    z = torch.randn(2 * 5, 3 * 2 * 3, 4) * 2  # (N, C, T), 2 heads of 3
    y = torch.randn(2, 4, 2, 5, 3) * 2
    norms = [torch.nn.BatchNorm1d(18) for _ in range(2)]

    kernel = _fused_attention_neurons(z, y, norms[0], params)
    monkeypatch.setattr(kernels, "use_kernels", lambda tensor: False)
    tensor = _fused_attention_neurons(z, y, norms[1], params)

    assert torch.equal(tensor[0], kernel[0])
    assert torch.equal(tensor[1], kernel[1])
    for got, expected in zip(tensor[2:], kernel[2:]):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(norms[1].running_var, norms[0].running_var)


def test_vector_width_follows_avx512():
    import os

    from numba.core.codegen import get_host_cpu_features

    features = numba.config.CPU_FEATURES
    if "NUMBA_CPU_FEATURES" in os.environ:  # the user's setting wins
        assert features == os.environ["NUMBA_CPU_FEATURES"]
        return
    host = get_host_cpu_features()
    if "+avx512f" in host.split(","):
        assert features == host + ",-prefer-256-bit"
    else:
        assert features is None


@pytest.mark.parametrize("compiled", [True, False], ids=["kernels", "tensor"])
def test_add_batch_norm_matches_torch(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(kernels, "use_kernels", lambda tensor: False)
    torch.manual_seed(10)
    norms = [torch.nn.BatchNorm1d(24) for _ in range(2)]
    norms[0].weight.data.uniform_(0.5, 2.0)
    norms[0].bias.data.uniform_(-1.0, 1.0)
    norms[1].load_state_dict(norms[0].state_dict())
    # (N, C, T) views of time-major memory, as layers lay them out.
    inputs = [torch.randn(64, 4, 24) * 2 + 0.5, torch.randn(64, 4, 24)]
    plain = [t.clone().transpose(1, 2).requires_grad_() for t in inputs]
    fused = [t.clone().transpose(1, 2).requires_grad_() for t in inputs]
    weights = torch.randn(64, 24, 4)

    normed = norms[0](plain[0].transpose(1, 2).reshape(-1, 24))
    expected = plain[1] + normed.view(64, 4, 24).transpose(1, 2)
    got = add_batch_norm(fused[1], fused[0], norms[1])
    (expected * weights).sum().backward()
    (got * weights).sum().backward()

    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused[1].grad, plain[1].grad)
    assert torch.allclose(fused[0].grad, plain[0].grad, rtol=1e-4,
                          atol=1e-5)
    for name in ("weight", "bias"):
        assert torch.allclose(getattr(norms[1], name).grad,
                              getattr(norms[0], name).grad,
                              rtol=1e-4, atol=1e-4), name
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(norms[1], name).double(),
                              getattr(norms[0], name).double(),
                              rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("n_blocks, n_threads", [(64, 2), (7, 2), (5, 8),
                                                 (64, 3), (1, 1)])
def test_reversed_blocks_are_a_permutation(n_blocks, n_threads):
    # The affine pass's block order: each block exactly once.
    order = [kernels._reversed_block(index, n_blocks, n_threads)
             for index in range(n_blocks)]
    assert sorted(order) == list(range(n_blocks))
