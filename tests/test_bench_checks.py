"""The per-op benchmarks check the kernel (output and every gradient, against float64) before timing it: the
checks pass on the real kernels and catch a broken one. CPU: the Triton interpreter, fp32, small shapes."""
import pytest
import torch

from fastbert.benchmarks import bench_attention, bench_gelu, bench_layer_norm
from fastbert.benchmarks.common import check_against_reference
from fastbert.ops import attention


def test_layer_norm_check_covers_every_gradient():
    inputs = bench_layer_norm.make_inputs(37, 40, torch.float32, "cpu", seed=3)
    errors = bench_layer_norm.check(inputs)
    assert set(errors) == {"output", "x", "residual", "weight", "bias"}
    x, r, w, b, dy = inputs
    broken = lambda x, r, w, b: bench_layer_norm.op("triton")(x, r, w, b) + 1e-3 * (r * r).detach()  # noqa: E731
    with pytest.raises(AssertionError, match="output"):
        check_against_reference("ln", broken, bench_layer_norm.op("torch"), (x, r, w, b), dy, "xrwb")
    wrong_grad = lambda x, r, w, b: bench_layer_norm.op("triton")(x, r.detach() + (r - r.detach()) * 1.01, w, b)  # noqa: E731
    with pytest.raises(AssertionError, match="residual"):
        check_against_reference("ln", wrong_grad, bench_layer_norm.op("torch"), (x, r, w, b), dy,
                                ("x", "residual", "weight", "bias"))


def test_gelu_check_covers_every_gradient():
    inputs = bench_gelu.make_inputs(29, 48, torch.float32, "cpu", seed=4)
    errors = bench_gelu.check(inputs, "none")
    assert set(errors) == {"output", "x", "bias"}
    x, b, dy = inputs
    wrong = lambda x, b: bench_gelu.op("triton", "none")(x, b.detach() + (b - b.detach()) * 0.5)  # noqa: E731
    with pytest.raises(AssertionError, match="bias"):
        check_against_reference("gelu", wrong, bench_gelu.op("torch", "none"), (x, b), dy, ("x", "bias"))


def _attn_inputs(lengths, S, H=2, D=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(len(lengths), S, H, D, generator=g) for _ in range(4))
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
    return [t.requires_grad_() for t in (q, k, v)], dout, mask


def test_attention_checks_padded_and_packed():
    lengths, S = [17, 9, 13], 17
    (q, k, v), dout, mask = _attn_inputs(lengths, S)
    assert set(bench_attention.check(q, k, v, mask, dout)) == {"output", "q", "k", "v"}
    packed = bench_attention.pack(q, k, v, dout, lengths)
    assert set(bench_attention.check_packed(packed, mask)) == {"output", "q", "k", "v"}
    # a kernel that ignores the padding mask is caught
    with pytest.raises(AssertionError, match="output"):
        check_against_reference("attn", lambda q, k, v: attention(q, k, v), bench_attention._sdpa_padded(mask),
                                (q, k, v), dout, "qkv")


def test_attention_check_catches_a_wrong_gradient():
    (q, k, v), dout, mask = _attn_inputs([11, 6], 11, seed=6)

    def wrong_dk(q, k, v):  # right output, dK scaled by 1.05
        return attention(q, k.detach() + (k - k.detach()) * 1.05, v, key_padding_mask=mask)

    with pytest.raises(AssertionError, match="k error"):
        check_against_reference("attn", wrong_dk, bench_attention._sdpa_padded(mask), (q, k, v), dout, "qkv")
