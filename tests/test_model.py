"""Shapes, gradients and invariants of every layer and model variant."""

import itertools
import platform

import pytest
import torch

from neurodeploy.model import build_model
from neurodeploy.model.layers import (
    SpikeEncoder, SpikeLinear, WEIGHT_MAX, WEIGHT_MIN, quantize_weight)
from neurodeploy.model.snn import SpikingMLP, SpikingSelfAttention
from neurodeploy.spec import apply_overrides

VOCAB = 11


def spikes(n, c, t, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, t, generator=generator) < 0.3).float()


def test_quantised_weights_on_8bit_grid():
    weight = torch.linspace(-5, 5, 1001)
    q = quantize_weight(weight)
    mantissa = q * 64
    assert torch.equal(mantissa, mantissa.round())
    assert torch.all(mantissa.round().long() % 2 == 0)
    assert q.min().item() == WEIGHT_MIN
    assert q.max().item() == WEIGHT_MAX


def test_quantised_weights_pass_gradient_inside_range():
    weight = torch.tensor([0.3, 10.0], requires_grad=True)
    quantize_weight(weight).sum().backward()
    assert weight.grad.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("norm", ["batch", "power", "layer"])
def test_spike_linear_shape_and_gradient(norm):
    layer = SpikeLinear(8, 5, norm)
    x = spikes(6, 8, 4).requires_grad_()
    y = layer(x)
    assert y.shape == (6, 5, 4)
    y.square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("token,position", itertools.product(
    ["learned", "one_hot", "binary"],
    ["learned", "binary", "one_hot", "sinusoid", "none"]))
def test_encoder_emits_binary_codes(tiny_spec, token, position):
    model = apply_overrides(tiny_spec, [
        f"token_encoding='{token}'", f"position_encoding='{position}'",
        "d_position=16", "d_model=32"]).model
    encoder = SpikeEncoder(VOCAB, model)
    tokens = torch.randint(0, VOCAB, (3, 16))
    code = encoder(tokens)
    assert code.shape == (3, 16, 32)
    assert set(code.unique().tolist()) <= {0.0, 1.0}
    # Different tokens get different codes.
    assert not torch.equal(encoder(torch.zeros_like(tokens)),
                           encoder(torch.ones_like(tokens)))


def test_learned_encoder_gets_surrogate_gradient(tiny_spec):
    encoder = SpikeEncoder(VOCAB, tiny_spec.model)
    encoder(torch.randint(0, VOCAB, (2, 16))).sum().backward()
    assert encoder.token_table.grad.abs().sum() > 0
    assert encoder.position_table.grad.abs().sum() > 0


def test_encoder_gradient_is_deterministic(tiny_spec):
    # Large enough for the parallel paths of PyTorch's scatter-adds, where
    # indexing's backward added rows in a varying order.
    model = apply_overrides(tiny_spec, ["d_model=128", "context=64",
                                        "d_position=16"]).model
    torch.manual_seed(0)
    encoder = SpikeEncoder(VOCAB, model)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (64, 64), generator=generator)
    grad = torch.randn(64, 64, 128, generator=generator)

    grads = []
    for _ in range(5):
        encoder.zero_grad()
        (encoder(tokens) * grad).sum().backward()
        grads.append(encoder.token_table.grad.clone())
    for other in grads[1:]:
        assert torch.equal(other, grads[0])


def test_attention_shape_and_gradient(tiny_spec):
    torch.manual_seed(0)
    spec = apply_overrides(tiny_spec, ["attention_shift=0"])
    attention = SpikingSelfAttention(spec.model)
    x = spikes(2 * 16, 32, 4).requires_grad_()
    y = attention(x, batch=2)
    assert y.shape == (32, 32, 4)
    (y * torch.randn_like(y)).sum().backward()
    assert attention.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("position_shift", ["false", "true"])
def test_attention_is_causal(tiny_spec, position_shift):
    torch.manual_seed(0)
    spec = apply_overrides(tiny_spec, [
        "attention_shift=0", "threshold=0.25",
        f"attention_position_shift={position_shift}"])
    attention = SpikingSelfAttention(spec.model).eval()
    x = spikes(16, 32, 4, seed=1)
    changed = x.clone()
    changed[10:] = spikes(6, 32, 4, seed=2)  # rewrite future positions
    before = attention(x, batch=1)
    after = attention(changed, batch=1)
    assert torch.equal(before[:10], after[:10])
    assert not torch.equal(before[10:], after[10:])


def test_attention_shifts_by_position():
    from neurodeploy.model.snn import attention_shifts
    assert attention_shifts(9, 2, False).tolist() == [2] * 9
    assert attention_shifts(9, 2, True).tolist() == [2, 3, 3, 4, 4, 4, 4, 5, 5]


def test_attention_counts_coincidences(tiny_spec):
    from neurodeploy.model.snn import attend
    # One head, two positions, two channels, one time step.
    q = torch.tensor([[[1.0], [1.0]], [[1.0], [0.0]]])
    k = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])
    v = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])
    qkv = torch.cat([q, k, v], dim=1)
    y = attend(qkv, batch=1, n_heads=1, shift=0, position_shift=False)
    # A = [[1, 0], [1, 1]] after the causal mask; Y = A V.
    assert y[:, :, 0].tolist() == [[1.0, 0.0], [2.0, 1.0]]


def test_mlp_shape_and_gradient(tiny_spec):
    mlp = SpikingMLP(tiny_spec.model)
    x = spikes(8, 32, 4).requires_grad_()
    y = mlp(x, batch=1)
    assert y.shape == (8, 32, 4)
    (y * torch.randn_like(y)).sum().backward()
    assert mlp.up.weight.grad.abs().sum() > 0
    assert mlp.down.weight.grad.abs().sum() > 0


VARIANTS = list(itertools.product(
    ["membrane", "spike", "float"], ["batch", "power", "layer"],
    ["stream", "spikes"]))


@pytest.mark.parametrize("residual,norm,readout", VARIANTS)
def test_decoder_variants_train(tiny_spec, residual, norm, readout):
    torch.manual_seed(0)
    spec = apply_overrides(tiny_spec, [
        f"residual='{residual}'", f"norm='{norm}'", f"readout='{readout}'",
        "attention_shift=0", "threshold=0.25"])
    model = build_model(spec.model, VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, VOCAB)
    torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), tokens.flatten()).backward()
    without_grad = [name for name, p in model.named_parameters()
                    if p.grad is None or p.grad.abs().sum() == 0]
    assert without_grad == []


@pytest.mark.parametrize("arch", ["snn", "ann"])
def test_decoder_is_causal(tiny_spec, arch):
    torch.manual_seed(0)
    spec = apply_overrides(tiny_spec, [f"arch='{arch}'"])
    model = build_model(spec.model, VOCAB).eval()
    tokens = torch.randint(0, VOCAB, (1, 16))
    changed = tokens.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % VOCAB
    assert torch.equal(model(tokens)[:, :12], model(changed)[:, :12])


def test_ann_baseline_matches_sizes(tiny_spec):
    ann = build_model(apply_overrides(tiny_spec, ["arch='ann'"]).model, VOCAB)
    logits = ann(torch.randint(0, VOCAB, (3, 16)))
    assert logits.shape == (3, 16, VOCAB)
    assert len(ann.blocks) == tiny_spec.model.n_layers
    assert ann.blocks[0].mlp[0].out_features == tiny_spec.model.d_mlp


def test_token_shift_joins_previous_codes(tiny_spec):
    spec = apply_overrides(tiny_spec, [
        "token_shift=2", "token_encoding='one_hot'", "d_model=40",
        "d_position=4", "position_encoding='binary'"])
    encoder = SpikeEncoder(VOCAB, spec.model)
    code = encoder(torch.tensor([[3, 5, 7]]))  # (1, 3, 40)
    width = encoder.d_token
    assert width == 12
    assert code[0, 2, :width].argmax() == 7
    assert code[0, 2, width:2 * width].argmax() == 5
    assert code[0, 2, 2 * width:3 * width].argmax() == 3
    # Before the window starts, the shifted slots stay silent.
    assert code[0, 0, width:3 * width].sum() == 0
    assert code[0, 1, 2 * width:3 * width].sum() == 0


@pytest.mark.parametrize("rate", [0.4, 0.05], ids=["dense", "sparse"])
def test_integer_gemm_equals_float_product(rate):
    from neurodeploy.model.spike_matmul import (
        integer_gemm_works, spike_linear)
    torch.manual_seed(9)
    spikes = (torch.rand(96, 40) < rate).float().requires_grad_()
    spikes_float = spikes.detach().clone().requires_grad_()
    # Some weights beyond the 8-bit range, where the gradient stops.
    weight = (torch.randn(24, 40) * 2).requires_grad_()
    weight_float = weight.detach().clone().requires_grad_()
    grad = torch.randn(96, 24)

    out = spike_linear(spikes, weight)
    expected = torch.nn.functional.linear(spikes_float,
                                          quantize_weight(weight_float))
    (out * grad).sum().backward()
    (expected * grad).sum().backward()

    if platform.machine() in ("x86_64", "AMD64"):
        assert integer_gemm_works()  # oneDNN's u8 x s8 GEMM
    assert torch.equal(out, expected)
    assert torch.allclose(spikes.grad, spikes_float.grad, atol=1e-5)
    assert torch.allclose(weight.grad, weight_float.grad, atol=1e-5)
    assert (weight.grad == 0).any()  # clamped weights
    assert (weight.grad != 0).any()


@pytest.mark.parametrize("c_in", [64, 43], ids=["whole-words", "tail"])
def test_sparse_weight_grad_equals_dense_product(c_in):
    from neurodeploy.model.spike_matmul import sparse_weight_grad
    torch.manual_seed(12)
    grad = torch.randn(300, 24)
    # Rows of every density, so that zero and non-zero words both occur.
    rates = torch.linspace(0.0, 0.6, 300)[:, None]
    spikes = torch.rand(300, c_in) < rates

    got = sparse_weight_grad(grad, spikes.to(torch.uint8))
    expected = grad.double().t() @ spikes.double()

    assert got.shape == (24, c_in)
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_quantized_mantissa_equals_quantize_weight():
    from neurodeploy.model.spike_matmul import WEIGHT_STEP, quantized_mantissa
    torch.manual_seed(11)
    # Ties half-way between grid points, values beyond both ends, noise.
    ties = (torch.arange(-300, 300, dtype=torch.float32) + 0.5) / 32
    weight = torch.cat([ties, torch.randn(400) * 3]).view(40, 25)
    weight.requires_grad_()

    k, weight_q, in_range = quantized_mantissa(weight)
    expected = quantize_weight(weight)
    expected.sum().backward()

    assert k.dtype == torch.int8
    assert torch.equal(weight_q, expected.detach())
    assert torch.equal(k.float() * WEIGHT_STEP, weight_q)
    assert torch.equal(in_range, weight.grad != 0)


def test_split_attention_equals_autograd_attention():
    from neurodeploy.model.snn import _SplitAttention, attend_heads
    torch.manual_seed(10)
    qkv = (torch.rand(3, 2, 4, 2, 7, 5) < 0.5).float().requires_grad_()
    reference = qkv.detach().clone().requires_grad_()
    grad = torch.randn(2, 4, 2, 7, 5)

    y = _SplitAttention.apply(qkv, 1, True)
    expected = attend_heads(*reference.unbind(0), 1, True)
    (y * grad).sum().backward()
    (expected * grad).sum().backward()

    assert torch.equal(y, expected)
    assert torch.allclose(qkv.grad, reference.grad, atol=1e-5)


@pytest.mark.parametrize("rate, d_head", [(0.05, 5), (0.3, 64)])
@pytest.mark.parametrize("shift, by_position", [(1, True), (0, False)])
def test_sparse_attention_equals_dense(rate, d_head, shift, by_position):
    # The compiled sparse kernels (forced by a rate of 0) against the
    # batched products, on spikes sparse and dense.
    from neurodeploy.model.snn import _SplitAttention, attend_heads
    torch.manual_seed(11)
    qkv = (torch.rand(3, 2, 3, 2, 9, d_head) < rate).float()
    qkv.requires_grad_()
    reference = qkv.detach().clone().requires_grad_()
    grad = torch.randn(2, 3, 2, 9, d_head)

    y = _SplitAttention.apply(qkv, shift, by_position, 0.0)
    expected = attend_heads(*reference.unbind(0), shift, by_position)
    (y * grad).sum().backward()
    (expected * grad).sum().backward()

    assert torch.equal(y, expected)
    assert torch.allclose(qkv.grad, reference.grad, atol=1e-5)
    assert qkv.grad.abs().sum() > 0


def test_sparse_attention_needs_a_known_rate(monkeypatch):
    # Without a rate (evaluation) or above the thresholds the dense
    # products run: a sparse kernel that raises must not be called.
    from neurodeploy.model import attention_kernels
    from neurodeploy.model.snn import _SplitAttention

    def fail(*args):
        raise AssertionError("sparse kernel called")

    monkeypatch.setattr(attention_kernels, "sparse_attention_forward", fail)
    monkeypatch.setattr(attention_kernels, "sparse_attention_backward", fail)
    qkv = torch.ones(3, 1, 2, 1, 4, 3, requires_grad=True)
    for rate in (None, 0.5):
        _SplitAttention.apply(qkv, 0, True, rate).sum().backward()
