"""Triton attention (kernels/attention.py) against a float64 reference, on CPU under the interpreter and on GPU.

Criterion (FlashAttention's): ``max|triton - ref64| <= 2 x max|torch_same_dtype - ref64|`` for the output,
3x for dq/dk/dv, where ``torch_same_dtype`` is plain PyTorch attention computed in the input dtype. Inputs are
fresh random tensors, lengths awkward on purpose. Under the interpreter bf16 ``tl.dot`` is wrong in triton 3.6,
so bf16 is checked on a GPU only; CPU checks fp16 and fp32.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import HAS_CUDA
from fastbert.ops import attention
from fastbert.ops._dispatch import kernels

# triton's interpreter converts 1-element arrays to python ints in loop bounds (harmless, numerous)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
FLOOR = {torch.float16: 1e-5, torch.bfloat16: 1e-4, torch.float32: 2e-6}


@pytest.fixture(autouse=True)
def _untuned(request, monkeypatch):
    """On a GPU, launch the first config the autotuner would consider (FASTBERT_AUTOTUNE=0): autotuning every
    shape of this file compiles and times every config of every variant. test_autotuned_launch covers the
    tuned path, test_every_autotune_config_forced_once every config. (The interpreter never autotunes.)"""
    if "autotuned" not in request.node.name:
        monkeypatch.setenv("FASTBERT_AUTOTUNE", "0")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="autotuning needs CUDA (the interpreter cannot)")
def test_autotuned_launch():
    """The default CUDA launch (autotuned, keyed on head dim, buckets and flags), padded and packed, bf16."""
    torch.manual_seed(7)
    q, k, v = (_rand(4, 200, 12, 64, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    compare(q, k, v, key_mask=_make_mask("holes", 4, 200, "cuda"))
    lengths = (1, 130, 0, 77)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (_rand(sum(lengths), 12, 64, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    compare(q, k, v, cu_seqlens=cu, max_seqlen=max(lengths))


# ---------------------------------------------------------------------------------------------- reference


def attention_ref(q, k, v, key_mask=None, causal=False, scale=None, drop_mask=None, p=0.0, upcast=True):
    """Padded (B, S, H, D) attention, plain PyTorch. upcast: float64; else in the input dtype.

    key_mask (B, S) bool, True = real key. drop_mask (B, H, S, S) bool, True = kept. Returns (out, lse).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    b, s, h, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q * scale, k)
    allowed = torch.ones(b, 1, s, s, dtype=torch.bool, device=q.device)
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores.float() if not upcast else scores, dim=-1)
    attn = torch.softmax(scores, dim=-1).masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    if drop_mask is not None:
        attn = attn.masked_fill(~drop_mask, 0.0) / (1.0 - p)
    out = torch.einsum("bhij,bjhd->bihd", attn, v)
    return (out if upcast else out.to(dtype)), lse


def packed_ref(q, k, v, cu_seqlens, causal=False, upcast=True):
    """Packed (T, H, D): each sequence on its own. Returns (out, lse (H, T))."""
    outs, lses = [], []
    cu = cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        o, l = attention_ref(q[None, a:b], k[None, a:b], v[None, a:b], causal=causal, upcast=upcast)
        outs.append(o[0])
        lses.append(l[0])
    return torch.cat(outs), torch.cat(lses, dim=-1)


def _grads(out, tensors, dout):
    return torch.autograd.grad(out, tensors, dout)


def _check(name, got, ref64, ref_same, mult, dtype):
    err = (got.double() - ref64).abs().max().item()
    err_torch = (ref_same.double() - ref64).abs().max().item()
    assert math.isfinite(err), f"{name}: non-finite values"
    assert err <= mult * err_torch + FLOOR[dtype], f"{name}: error {err:.3g} > {mult} x torch's {err_torch:.3g}"


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def compare(q, k, v, *, key_mask=None, cu_seqlens=None, max_seqlen=None, causal=False, deterministic=False):
    """Run fastbert's attention fwd + bwd and check output, lse and grads against float64."""
    dtype = q.dtype
    packed = cu_seqlens is not None
    ref = (lambda *t, upcast: packed_ref(*t, cu_seqlens, causal=causal, upcast=upcast)) if packed else \
        (lambda *t, upcast: attention_ref(*t, key_mask=key_mask, causal=causal, upcast=upcast))

    qt, kt, vt = _leaves(q, k, v)
    out = attention(qt, kt, vt, key_padding_mask=key_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                    causal=causal, deterministic=deterministic)
    dout = torch.randn_like(out)
    grads = _grads(out, (qt, kt, vt), dout)

    q64, k64, v64 = _leaves(q.double(), k.double(), v.double())
    out64, lse64 = ref(q64, k64, v64, upcast=True)
    grads64 = _grads(out64, (q64, k64, v64), dout.double())
    qs, ks, vs = _leaves(q, k, v)
    out_same, _ = ref(qs, ks, vs, upcast=False)
    grads_same = _grads(out_same, (qs, ks, vs), dout)

    _check("out", out, out64, out_same, 2, dtype)
    for name, g, g64, gs in zip(("dq", "dk", "dv"), grads, grads64, grads_same):
        _check(name, g, g64, gs, 3, dtype)

    _, lse = kernels("attention").attention_fwd(q, k, v, key_padding_mask=key_mask, cu_seqlens=cu_seqlens,
                                                max_seqlen=max_seqlen, causal=causal)
    finite = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), finite), "lse must be finite exactly on rows that have a key"
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    assert (lse[finite].double() - lse64[finite]).abs().max().item() <= tol * (1 + lse64[finite].abs().max().item())
    return out, grads


def _rand(*shape, dtype, device):
    return torch.randn(*shape, dtype=dtype, device=device)


def _prefix_mask(lengths, seqlen, device):
    return torch.arange(seqlen, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


# ---------------------------------------------------------------------------------------- padded batches

PADDED_CASES = [  # batch, seqlen, heads, head_dim, mask, causal, dtype, deterministic
    (2, 1, 2, 16, None, False, torch.float16, True),
    (2, 17, 2, 32, "prefix", False, torch.float16, False),
    (1, 113, 1, 64, "prefix", False, torch.float16, True),
    (2, 200, 1, 16, "holes", False, torch.float16, True),
    (1, 113, 2, 32, "prefix", True, torch.float16, True),
    (1, 40, 1, 128, None, False, torch.float16, False),
    (2, 50, 2, 40, "holes", False, torch.float32, False),
    (1, 33, 1, 24, "holes", True, torch.float32, True),
]


def _make_mask(kind, b, s, device):
    if kind is None:
        return None
    if kind == "prefix":
        lengths = [max(1, s - 7 * i - (s // 3) * (i % 2)) for i in range(b)]
        return _prefix_mask(lengths, s, device)
    m = torch.rand(b, s, device=device) > 0.3  # holes anywhere
    m[0, 0] = True
    if b > 1:
        m[-1] = False  # a sequence with no real key at all
    return m


@pytest.mark.parametrize("b,s,h,d,mask,causal,dtype,deterministic", PADDED_CASES)
def test_padded(b, s, h, d, mask, causal, dtype, deterministic, device):
    torch.manual_seed(1000 + s + d)
    q, k, v = (_rand(b, s, h, d, dtype=dtype, device=device) for _ in range(3))
    compare(q, k, v, key_mask=_make_mask(mask, b, s, device), causal=causal, deterministic=deterministic)


def test_padded_int_mask_and_strided_qkv(device):
    """q/k/v as views of one fused (B, S, 3, H, D) projection, mask given as 0/1 integers."""
    torch.manual_seed(7)
    qkv = _rand(2, 45, 3, 2, 32, dtype=torch.float16, device=device)
    mask = _prefix_mask([45, 19], 45, device).to(torch.int64)
    compare(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask=mask)


def test_last_dim_not_contiguous(device):
    """A head dim with stride != 1 is copied to contiguous first: same results as the contiguous input."""
    torch.manual_seed(8)
    q, k, v = (_rand(2, 13, 16, 2, dtype=torch.float16, device=device).transpose(-1, -2) for _ in range(3))
    assert q.stride(-1) != 1
    mask = _prefix_mask([13, 4], 13, device)
    leaves = _leaves(q, k, v)
    out = attention(*leaves, key_padding_mask=mask)
    ref_leaves = _leaves(*(t.contiguous() for t in (q, k, v)))
    ref = attention(*ref_leaves, key_padding_mask=mask)
    assert torch.equal(out, ref)
    dout = torch.randn_like(out)
    for g, gr in zip(_grads(out, leaves, dout), _grads(ref, ref_leaves, dout)):
        torch.testing.assert_close(g, gr, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------- packed batches

PACKED_CASES = [  # sequence lengths, heads, head_dim, causal, dtype
    ((17, 1, 113, 0, 40), 2, 32, False, torch.float16),
    ((200, 5), 1, 16, True, torch.float16),
    ((30, 64, 1), 2, 64, False, torch.float32),
]


@pytest.mark.parametrize("lengths,h,d,causal,dtype", PACKED_CASES)
def test_packed(lengths, h, d, causal, dtype, device):
    torch.manual_seed(sum(lengths) + d)
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    qkv = _rand(total, 3, h, d, dtype=dtype, device=device)  # fused projection: strided views
    q, k, v = qkv.unbind(1)
    compare(q, k, v, cu_seqlens=cu, max_seqlen=max(lengths), causal=causal, deterministic=(h == 1))


def test_packed_matches_padded(device):
    """Packing is only a layout: the same sequences padded + masked give the same output and grads."""
    torch.manual_seed(3)
    lengths, s, h, d = [23, 9, 31], 31, 2, 32
    mask = _prefix_mask(lengths, s, device)
    q, k, v = (_rand(3, s, h, d, dtype=torch.float16, device=device) for _ in range(3))
    cu = torch.tensor([0, 23, 32, 63], dtype=torch.int32, device=device)
    pad_out, pad_grads = compare(q, k, v, key_mask=mask)
    qp, kp, vp = _leaves(q[mask], k[mask], v[mask])
    out = attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=s)
    dout = torch.randn_like(out)
    torch.testing.assert_close(out, pad_out[mask], atol=2e-3, rtol=0)
    qd, kd, vd = _leaves(q, k, v)
    pad = attention(qd, kd, vd, key_padding_mask=mask)
    g_pad = _grads(pad, (qd, kd, vd), torch.zeros_like(pad).index_put_(torch.nonzero(mask, as_tuple=True), dout))
    for g, gp in zip(_grads(out, (qp, kp, vp), dout), g_pad):
        torch.testing.assert_close(g, gp[mask], atol=2e-3, rtol=0)


# ------------------------------------------------------------------------------------------- empty rows


def test_rows_without_keys_give_zeros(device):
    torch.manual_seed(11)
    b, s, h, d = 2, 21, 2, 16
    q, k, v = _leaves(*(_rand(b, s, h, d, dtype=torch.float16, device=device) for _ in range(3)))
    mask = torch.ones(b, s, dtype=torch.bool, device=device)
    mask[0] = False  # no key at all
    mask[1, :5] = False  # with causal, queries 0..4 of sequence 1 see no key
    out = attention(q, k, v, key_padding_mask=mask, causal=True)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :5] == 0).all()
    assert (out[1, 5:] != 0).any()
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0] == 0).all() and (k.grad[0] == 0).all() and (v.grad[0] == 0).all()
    assert (q.grad[1, :5] == 0).all() and (k.grad[1, :5] == 0).all() and (v.grad[1, :5] == 0).all()


# ---------------------------------------------------------------------------------------------- dropout


def _identity_v(shape_tokens, h, d, device):
    """v whose token j is the unit vector e_j: attention output row i then *is* the weight row P[i, :]."""
    n = shape_tokens
    eye = torch.eye(n, d, dtype=torch.float32, device=device)
    return eye[:, None, :].expand(n, h, d).contiguous()


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_dropout(layout, device):
    """Same seed -> identical; kept fraction ~ 1 - p; kept weights scaled by 1 / (1 - p); the backward
    regenerates the forward's mask (gradients match a float64 reference applying that mask)."""
    p, h, d = 0.3, 2, 64
    torch.manual_seed(5)
    if layout == "padded":
        lengths, s = [57, 40], 57
        key_mask = _prefix_mask(lengths, s, device)
        q, k, v = (_rand(2, s, h, d, dtype=torch.float32, device=device) for _ in range(3))
        v_eye = _identity_v(s, h, d, device)[None].expand(2, s, h, d)
        kw = dict(key_padding_mask=key_mask)
        # sequence i: (tokens, keys) slices of the padded batch
        seqs = [((i, slice(0, s)), (i, slice(0, n))) for i, n in enumerate(lengths)]
    else:
        lengths = [57, 1, 40]
        cu = torch.tensor([0, 57, 58, 98], dtype=torch.int32, device=device)
        q, k, v = (_rand(98, h, d, dtype=torch.float32, device=device) for _ in range(3))
        v_eye = torch.cat([_identity_v(n, h, d, device) for n in lengths])
        kw = dict(cu_seqlens=cu, max_seqlen=57)
        seqs = [((slice(a, a + n),), (slice(a, a + n),)) for a, n in zip(cu[:-1].tolist(), lengths)]

    def run(q, k, v, seed, p=p):
        torch.manual_seed(seed)
        return attention(q, k, v, dropout_p=p, **kw)

    weights = run(q, k, v_eye, 123)  # query i's row holds its dropped-out, rescaled attention weights
    assert torch.equal(weights, run(q, k, v_eye, 123)), "same seed must give identical results"
    assert not torch.equal(weights, run(q, k, v_eye, 124)), "another seed must give another mask"
    plain = run(q, k, v_eye, 123, p=0.0)

    qt, kt, vt = _leaves(q, k, v)
    out = run(qt, kt, vt, 123)  # same seed as `weights`: same mask
    dout = torch.randn_like(out)
    grads = _grads(out, (qt, kt, vt), dout)
    kept_total = n_total = 0
    for (tok, keys), n in zip(seqs, lengths):
        w = weights[tok][..., :n].transpose(0, 1)  # (H, S_q, n): weights on the real keys
        w0 = plain[tok][..., :n].transpose(0, 1)
        kept = w != 0
        kept_total += kept.sum().item()
        n_total += kept.numel()
        torch.testing.assert_close(w[kept], w0[kept] / (1 - p), rtol=1e-4, atol=1e-6)
        assert (w0[~kept] > 0).all(), "a dropped weight must have been a positive weight"
        q64, k64, v64 = _leaves(*(t[tok][None].double() for t in (q, k, v)))
        key_mask = torch.zeros(1, q64.shape[1], dtype=torch.bool, device=device)
        key_mask[0, :n] = True
        drop = torch.zeros(1, h, q64.shape[1], q64.shape[1], dtype=torch.bool, device=device)
        drop[0, :, :, :n] = kept
        ref, _ = attention_ref(q64, k64, v64, key_mask=key_mask, drop_mask=drop, p=p)
        torch.testing.assert_close(out[tok].double(), ref[0], rtol=0, atol=1e-5)
        for g, g64 in zip(grads, _grads(ref, (q64, k64, v64), dout[tok][None].double())):
            torch.testing.assert_close(g[tok].double(), g64[0], rtol=0, atol=1e-4)
    frac = kept_total / n_total
    assert abs(frac - (1 - p)) < 0.03, f"kept fraction {frac:.3f}, expected {1 - p}"


# -------------------------------------------------------------------------------------- deterministic


def test_deterministic_backward_is_bitwise_reproducible(device):
    torch.manual_seed(9)
    b, s, h, d = 2, 70, 2, 32
    q, k, v = (_rand(b, s, h, d, dtype=torch.float16, device=device) for _ in range(3))
    mask = _make_mask("holes", b, s, device)
    dout = torch.randn(b, s, h, d, dtype=torch.float16, device=device)

    def grads(deterministic):
        qt, kt, vt = _leaves(q, k, v)
        out = attention(qt, kt, vt, key_padding_mask=mask, deterministic=deterministic)
        return _grads(out, (qt, kt, vt), dout)

    first, second, atomic = grads(True), grads(True), grads(False)
    for a, b_, c in zip(first, second, atomic):
        assert torch.equal(a, b_)
        torch.testing.assert_close(a, c, atol=2e-3, rtol=0)  # the two dQ strategies agree


# -------------------------------------------------------------------------------------------- bad input


def _qkv(*shape, dtype=torch.float16):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("triton_path", [True, False])
def test_bad_input(triton_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if triton_path else "0")
    q, k, v = _qkv(2, 8, 2, 16)
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)
    qp, kp, vp = _qkv(16, 2, 16)
    cases = [
        (dict(q=q, k=k[:, :7], v=v), "same shape"),
        (dict(q=q, k=k.float(), v=v), "same dtype"),
        (dict(q=q.double(), k=k.double(), v=v.double()), "float16, bfloat16 and float32"),
        (dict(q=q, k=k, v=v, key_padding_mask=torch.ones(2, 7, dtype=torch.bool)), "key_padding_mask has shape"),
        (dict(q=q, k=k, v=v, key_padding_mask=torch.ones(2, 8)), "bool or integer"),
        (dict(q=q, k=k, v=v, dropout_p=1.0), "dropout_p"),
        (dict(q=qp, k=kp, v=vp), "needs cu_seqlens"),
        (dict(q=q, k=k, v=v, cu_seqlens=cu), "packed"),
        (dict(q=qp, k=kp, v=vp, cu_seqlens=torch.tensor([0, 9, 5, 16], dtype=torch.int32)), "non-decreasing"),
        (dict(q=qp, k=kp, v=vp, cu_seqlens=torch.tensor([0, 5, 15], dtype=torch.int32)), "must match"),
        (dict(q=qp, k=kp, v=vp, cu_seqlens=torch.tensor([1, 5, 16], dtype=torch.int32)), "start at 0"),
        (dict(q=qp, k=kp, v=vp, cu_seqlens=cu.float()), "int32"),
        (dict(q=qp, k=kp, v=vp, cu_seqlens=cu, max_seqlen=10), "shorter than the longest"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)


def test_unsupported_head_dim_falls_back_to_pytorch_with_one_warning(monkeypatch):
    import warnings

    import fastbert._warnings

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(fastbert._warnings, "WARNED", set())
    for d in (12, 264):
        q, k, v = _qkv(2, 8, 2, d)
        mask = _prefix_mask([8, 3], 8, "cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = attention(q, k, v, key_padding_mask=mask)
            attention(q, k, v, key_padding_mask=mask)
        assert sum(f"head_dim={d}" in str(w.message) for w in caught) == 1
        ref, _ = attention_ref(q, k, v, key_mask=mask)
        torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------------------- PyTorch path


def test_pytorch_path(monkeypatch):
    """CPU tensors without the interpreter take SDPA; same contract (zeros for rows without keys)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 19, 2, 16) for _ in range(3))
    mask = _prefix_mask([19, 6], 19, "cpu")
    mask[1, :] = False
    out = attention(q, k, v, key_padding_mask=mask)
    ref, _ = attention_ref(q, k, v, key_mask=mask)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    cu = torch.tensor([0, 19, 25], dtype=torch.int32)
    qp, kp, vp = (torch.randn(25, 2, 16) for _ in range(3))
    out = attention(qp, kp, vp, cu_seqlens=cu, max_seqlen=19, causal=True)
    ref, _ = packed_ref(qp, kp, vp, cu, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="bf16 tl.dot is wrong under the triton 3.6 interpreter: needs a GPU")
@pytest.mark.parametrize("s,mask,causal", [(128, "prefix", False), (203, "holes", True), (512, "prefix", False)])
def test_bf16_gpu(s, mask, causal):
    torch.manual_seed(s)
    q, k, v = (_rand(4, s, 12, 64, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    compare(q, k, v, key_mask=_make_mask(mask, 4, s, "cuda"), causal=causal)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("d", [16, 32, 64, 128, 96, 256])
def test_head_dims_gpu(d):
    torch.manual_seed(d)
    lengths = (1, 17, 113, 200, 512, 0, 300)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (_rand(sum(lengths), 4, d, dtype=torch.float16, device="cuda") for _ in range(3))
    compare(q, k, v, cu_seqlens=cu, max_seqlen=max(lengths))


def test_autotune_pruning_leaves_configs():
    """Every head dim and sequence bucket keeps at least one config for every CUDA kernel (the GPU launch
    path cannot run here; its config choice can be checked)."""
    A = kernels("attention")
    for configs in (A._FWD_CONFIGS, A._DKDV_CONFIGS, A._DQ_CONFIGS):
        for d in (16, 32, 64, 128, 256):
            for bucket in (16, 32, 64, 128, 256, 512, 4096):
                kept = A._prune(configs, {"SEQ_BUCKET": bucket}, HEAD_DIM=d)
                assert kept and all(c in configs for c in kept)
                if d > 128:
                    assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64 for c in kept)


# ------------------------------------------------------------------------------------- torch.library ops


def test_custom_ops_opcheck(device):
    """Schema, fake (meta) implementations and aot dispatch of torch.ops.fastbert.attention_fwd / _bwd."""
    A = kernels("attention")
    torch.manual_seed(4)
    q, k, v = (_rand(2, 9, 2, 16, dtype=torch.float16, device=device) for _ in range(3))
    mask = torch.rand(2, 9, device=device) > 0.3
    seed = torch.tensor([77], dtype=torch.int64, device=device)
    torch.library.opcheck(A.attention_fwd_op, (q, k, v, mask, None, 0, False, 0.0, 0.25, None))
    torch.library.opcheck(A.attention_fwd_op, (q, k, v, mask, None, 0, False, 0.2, 0.25, seed))
    out, lse = A.attention_fwd(q, k, v, key_padding_mask=mask, softmax_scale=0.25, dropout_p=0.2, seed=seed)
    torch.library.opcheck(A.attention_bwd_op, (torch.randn_like(out), q, k, v, out, lse, mask, None, 0, False, 0.2,
                                               0.25, seed, False))
    cu = torch.tensor([0, 5, 18], dtype=torch.int32, device=device)
    qp, kp, vp = (_rand(18, 2, 16, dtype=torch.float16, device=device) for _ in range(3))
    torch.library.opcheck(A.attention_fwd_op, (qp, kp, vp, None, cu, 13, True, 0.0, 0.25, None))


# -------------------------------------------------------------------------------------- CUDA codegen


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastbert.kernels.attention as A

ptr = {"KEEP": "*i8", "KV_LEN": "*i32", "CU_SEQLENS": "*i32", "LSE": "*fp32", "DELTA": "*fp32", "SEED": "*i64"}
scalars = {"qk_scale": "fp32", "sm_scale": "fp32", "dropout_p": "fp32"}
ints = {"H", "SEQLEN", "SEQ_BUCKET", "WORK_BUCKET"}
for fn, blocks, dtype, d in [
    (A._attn_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64), "bf16", 64),
    (A._attn_bwd_dkdv_kernel, dict(BLOCK_M=32, BLOCK_N=128, ATOMIC_DQ=True), "bf16", 64),
    (A._attn_bwd_dq_kernel, dict(BLOCK_M=128, BLOCK_N=32), "fp16", 40),
    # ints equal to 1 are specialised to constexprs on a GPU: one head, padded seqlen 1
    (A._attn_fwd_kernel, dict(BLOCK_M=64, BLOCK_N=32, VARLEN=False, HAS_MASK=False, CAUSAL=False, H=1, SEQLEN=1),
     "fp16", 16),
    # no key mask: the unmasked full-block loop
    (A._attn_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64, HAS_MASK=False, DROPOUT=False), "bf16", 128),
]:
    consts = dict(HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d), CAUSAL=True, VARLEN=True, HAS_MASK=True,
                  DROPOUT=True, DOT_PRECISION="tf32")
    consts.update(blocks)
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in scalars:
            sig[name] = scalars[name]
        elif name in ints or name.startswith("stride"):
            sig[name] = "i32"
        elif name == "DQ" and "ATOMIC_DQ" in consts:
            sig[name] = "*fp32"
        else:
            sig[name] = ptr.get(name, "*" + dtype)
    compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=4, num_stages=3))
    assert compiled.asm["cubin"], fn.__name__
    print(fn.__name__, "ok")
"""


def test_kernels_compile_for_h100():
    """Without a GPU the interpreter never runs Triton's compiler: compile the kernels for sm_90 (in a fresh
    process, interpreter off) so a CUDA-only codegen error shows in CI. Compiles only; nothing runs."""
    pytest.importorskip("triton.backends.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(" ok") == 5


# ------------------------------------------------------------------------- every autotune config, once


def _space(A, kernel, atomic_dq=True):
    """(config, head dims it may be picked for): what ``_prune`` keeps at some head dim, for this kernel."""
    configs = {"fwd": A._FWD_CONFIGS, "dkdv": A._DKDV_CONFIGS, "dq": A._DQ_CONFIGS}[kernel]
    out = []
    for c in configs:
        dims = [d for d in (32, 64, 128)
                if c in A._prune(configs, {"SEQ_BUCKET": 512}, HEAD_DIM=d, **({"ATOMIC_DQ": atomic_dq}
                                                                                 if kernel == "dkdv" else {}))]
        if dims:
            out.append((c, dims))
    return out


@pytest.mark.parametrize("kernel,atomic_dq", [("fwd", True), ("dkdv", True), ("dkdv", False), ("dq", True)],
                         ids=["fwd", "dkdv-atomic-dq", "dkdv-separate-dq", "dq"])
def test_every_autotune_config_forced_once(kernel, atomic_dq, device):
    """Each config the autotuner may pick, forced (block sizes, warps, stages on a GPU), at the smallest head
    dim it serves, padded with holes in the mask and packed with an empty sequence: output, lse and every
    gradient against float64. On CPU the interpreter runs the block sizes (warps/stages are GPU-only);
    on a GPU (the gpu_check tests section) every config compiles and runs for real, in fp16 and bf16."""
    A = kernels("attention")
    space = _space(A, kernel, atomic_dq)
    assert space, f"no config of {kernel} is ever picked"
    dtypes = [torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    lengths = (37, 0, 64, 5) if device.type == "cuda" else (21, 0, 9)
    for config, dims in space:
        d = dims[0] if device.type != "cuda" else dims[-1]  # CPU: the cheapest; GPU: the heaviest it serves
        deterministic = kernel == "dq" or not atomic_dq
        for dtype in dtypes:
            torch.manual_seed(d + config.kwargs["BLOCK_M"])
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
            q, k, v = (_rand(sum(lengths), 2, d, dtype=dtype, device=device) for _ in range(3))
            S = max(lengths)
            qp, kp, vp = (_rand(2, S, 2, d, dtype=dtype, device=device) for _ in range(3))
            mask = _make_mask("holes", 2, S, device)
            with A.forced_config(kernel, config):
                try:
                    compare(q, k, v, cu_seqlens=cu, max_seqlen=S, deterministic=deterministic)
                    compare(qp, kp, vp, key_mask=mask, deterministic=deterministic)
                except AssertionError as e:
                    raise AssertionError(f"{kernel} config {config} (d={d}, {dtype}): {e}") from None
