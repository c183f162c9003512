"""The cpu backend's attention on AMX tiles (``fastbert.ops.cpu.packed_attention``, csrc/cpu/attention_amx.cpp)
against float64 on fresh random packed inputs with awkward lengths, its input checks, the switch that turns it
off, and a whole bf16 model through it. The kernel needs a CPU with AMX-BF16: elsewhere these tests skip with
the reason (the switch's tests run everywhere)."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastbert
from fastbert import ops

amx = pytest.mark.skipif(not ops.cpu.amx_attention_available(),
                         reason=f"AMX attention unavailable: {ops.cpu.amx_attention_unavailable_reason()}")


def _packed(lengths, heads, head_dim, extra_rows=0, spread=1.0, seed=None):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31 if seed is None else seed)
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    rows = int(cu[-1]) + extra_rows
    qkv = (torch.randn(rows, 3 * heads * head_dim, generator=gen) * spread).to(torch.bfloat16)
    return qkv, cu


def _sdpa_bf16(qkv, cu, heads, head_dim, scale):
    """PyTorch's own bf16 attention per sequence: the yardstick for bf16 rounding."""
    out = torch.zeros(qkv.shape[0], heads * head_dim, dtype=torch.bfloat16)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e > s:
            q, k, v = qkv[s:e].view(e - s, 3, heads, head_dim).permute(1, 2, 0, 3)
            out[s:e] = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(0, 1).reshape(e - s, -1)
    return out


@amx
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("heads, lengths, extra_rows", [
    (3, [1, 15, 16, 17, 31, 32, 33, 100, 0, 5], 7),
    (1, [257], 0),
    (2, [0, 0, 48], 3),
    (4, [64, 63, 65, 2], 0),
])
@pytest.mark.parametrize("spread", [1.0, 4.0])  # 4.0: scores in the hundreds, a softmax that must not overflow
def test_matches_float64(head_dim, heads, lengths, extra_rows, spread):
    qkv, cu = _packed(lengths, heads, head_dim, extra_rows, spread)
    scale = 1 / math.sqrt(head_dim) * (1.0 + torch.rand(()).item())
    got = ops.cpu.packed_attention(qkv, cu, heads, head_dim, scale)
    want = ops.cpu.reference_attention(qkv, cu, heads, head_dim, scale)
    assert got.dtype == torch.bfloat16 and got.shape == (qkv.shape[0], heads * head_dim)
    assert torch.isfinite(got).all()
    total = int(cu[-1])
    assert not got[total:].any()  # rows past the last sequence are zero
    err = (got[:total].double() - want[:total]).abs().max()
    yardstick = (_sdpa_bf16(qkv, cu, heads, head_dim, scale)[:total].double() - want[:total]).abs().max()
    assert err <= 2 * yardstick + 1e-3 * want.abs().max(), (err, yardstick)


@amx
def test_reads_strided_rows_and_uses_the_threads():
    """A non-contiguous qkv view (a row stride wider than its columns) and 1 or more threads give the same."""
    qkv, cu = _packed([40, 9, 77], 2, 32)
    wide = torch.zeros(qkv.shape[0], qkv.shape[1] + 64, dtype=torch.bfloat16)
    wide[:, 32:32 + qkv.shape[1]] = qkv
    view = wide[:, 32:32 + qkv.shape[1]]
    assert not view.is_contiguous() and view.stride(1) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cpu.packed_attention(view, cu, 2, 32, 0.2)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ops.cpu.packed_attention(qkv, cu, 2, 32, 0.2), one, rtol=0, atol=0)


@amx
def test_bad_inputs_raise():
    qkv, cu = _packed([5, 6], 2, 32)
    with pytest.raises(ValueError, match="bfloat16"):
        ops.cpu.packed_attention(qkv.float(), cu, 2, 32, 0.1)
    with pytest.raises(ValueError, match="head_dim must be 32 or 64"):
        ops.cpu.packed_attention(qkv, cu, 4, 16, 0.1)
    with pytest.raises(ValueError, match="columns"):
        ops.cpu.packed_attention(qkv, cu, 3, 32, 0.1)
    with pytest.raises(ValueError, match="must not decrease"):
        ops.cpu.packed_attention(qkv, torch.tensor([0, 6, 5], dtype=torch.int32), 2, 32, 0.1)
    with pytest.raises(ValueError, match="past the rows"):
        ops.cpu.packed_attention(qkv, torch.tensor([0, 5, 12], dtype=torch.int32), 2, 32, 0.1)
    with pytest.raises(ValueError, match="start at 0"):
        ops.cpu.packed_attention(qkv, torch.tensor([1, 5, 11], dtype=torch.int32), 2, 32, 0.1)


def test_switch(monkeypatch):
    """FASTBERT_CPU_ATTENTION: sdpa turns the kernel off, a bad value raises, amx raises where it cannot run."""
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
    monkeypatch.setenv("FASTBERT_CPU_ATTENTION", "sdpa")
    assert not ops.cpu.amx_attention_available()
    assert ops.cpu.amx_attention_unavailable_reason() == "FASTBERT_CPU_ATTENTION=sdpa"
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
    monkeypatch.setenv("FASTBERT_CPU_ATTENTION", "fast")
    with pytest.raises(ValueError, match="FASTBERT_CPU_ATTENTION='fast'"):
        ops.cpu.amx_attention_available()
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
    monkeypatch.setenv("FASTBERT_CPU_ATTENTION", "amx")
    monkeypatch.setattr(fastbert.hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(RuntimeError, match="no AMX-BF16"):
        ops.cpu.amx_attention_available()
    monkeypatch.setattr(ops.cpu, "_amx_state", None)


@amx
@pytest.mark.parametrize("heads, hidden", [(2, 64), (2, 128)])  # head_dim 32 (MiniLM's) and 64 (BERT-base's)
def test_bf16_model_runs_it_and_stays_close_to_fp32(monkeypatch, heads, hidden):
    """A bf16 model on the cpu backend attends on AMX tiles (every layer), padded or packed input alike, and
    its output stays close to the fp32 model's (the PyTorch path's attention)."""
    torch.manual_seed(torch.seed() % 2**31)
    config = fastbert.BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                 intermediate_size=2 * hidden, vocab_size=101, max_position_embeddings=80)
    model = fastbert.BertModel(config).eval()
    lengths = [70, 1, 33, 16, 17]
    S = max(lengths)
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 101, (len(lengths), S), generator=gen) * mask
    calls = []
    kernel = ops.cpu.packed_attention
    monkeypatch.setattr(ops.cpu, "packed_attention", lambda *a: calls.append(a[2:]) or kernel(*a))
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert not calls  # fp32 does not take it
        model = model.to(torch.bfloat16)
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert calls == [(heads, hidden // heads, model.encoder.layer[0].attention.self.scaling)] * 2
        real = mask.bool()
        cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
        packed = model(input_ids=ids[real], cu_seqlens=cu, max_seqlen=S).last_hidden_state
    torch.testing.assert_close(packed, got[real], rtol=0, atol=0)
    assert not got[~real].any()
    cos = F.cosine_similarity(got[real].float(), want[real], dim=-1)
    assert cos.min() > 0.999, cos.min()


def test_says_once_when_an_amx_cpu_cannot_run_it(monkeypatch):
    """A CPU with AMX-BF16 whose kernel is missing (fastbert._C_cpu not built) falls back to SDPA and says so
    once; a CPU without AMX falls back silently (nothing is lost there)."""
    import sys
    import warnings

    from fastbert import _warnings

    monkeypatch.setitem(sys.modules, "fastbert._C_cpu", None)  # import fails as if never built
    monkeypatch.delattr(fastbert, "_C_cpu", raising=False)
    monkeypatch.delenv("FASTBERT_CPU_ATTENTION", raising=False)
    monkeypatch.setattr(_warnings, "WARNED", set())
    monkeypatch.setattr(fastbert.hardware, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
    with pytest.warns(UserWarning, match="AMX-BF16 but fastbert's AMX attention cannot run"):
        assert not ops.cpu.amx_attention_available()
    assert "not built" in ops.cpu.amx_attention_unavailable_reason()
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
    monkeypatch.setattr(_warnings, "WARNED", set())
    monkeypatch.setattr(fastbert.hardware, "cpu_flags", lambda: frozenset({"avx512f"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ops.cpu.amx_attention_available()
    monkeypatch.setattr(ops.cpu, "_amx_state", None)
