"""fastbert's CPU inference path: the ``cpu`` backend (oneDNN GEMMs with bias / GELU / residual add fused, every
layer on real tokens only) against Hugging Face transformers (the independent reference) and fastbert's own
PyTorch path, on fresh random weights and inputs with awkward shapes; when it is chosen; and the default
precision per CPU, held to its documented fidelity."""
import pytest
import torch

import fastbert
from fastbert import hardware, ops
from fastbert.modeling_bert import resolve_backend
from hf_twin import hf_twin

pytestmark = pytest.mark.skipif(not ops.cpu.fused_linear_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("M, K, N", [(1, 8, 24), (37, 48, 96), (203, 384, 1536)])
def test_fused_linears_match_pytorch(dtype, tol, M, K, N):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = torch.randn(M, K, generator=gen).to(dtype)
    w = (torch.randn(N, K, generator=gen) * K ** -0.5).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    r = torch.randn(M, N, generator=gen).to(dtype)
    f64 = [t.double() for t in (x, w, b, r)]
    cases = [(ops.cpu.linear(x, w, b), ops.cpu.reference_linear(*f64[:3])),
             (ops.cpu.linear(x, w, b, gelu="none"), ops.cpu.reference_linear(*f64[:3], gelu="none")),
             (ops.cpu.linear(x, w, b, gelu="tanh"), ops.cpu.reference_linear(*f64[:3], gelu="tanh")),
             (ops.cpu.linear(x, w, None, gelu="none"), ops.cpu.reference_linear(f64[0], f64[1], None, gelu="none")),
             (ops.cpu.linear_add(x, w, b, r), ops.cpu.reference_linear(*f64[:3], residual=f64[3]))]
    for got, want in cases:
        assert got.dtype == dtype and got.shape == want.shape
        # no worse than PyTorch's own unfused ops in the same dtype (plus a small absolute slack)
        plain = want.to(dtype).double()
        assert (got.double() - want).abs().max() <= 2 * (plain - want).abs().max() + tol * want.abs().max()


CFG = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80, vocab_size=97,
           max_position_embeddings=40, type_vocab_size=3)


def _pair(hidden_act="gelu"):
    torch.manual_seed(torch.seed() % 2**31)
    config = fastbert.BertConfig(**CFG, hidden_act=hidden_act)
    ours = fastbert.BertModel(config).eval()
    return ours, hf_twin(ours)


def _inputs(model, ids):
    from fastbert.model_inputs import check_inputs

    return check_inputs(model.config, torch.device("cpu"), ids)


def _padded(lengths, S, vocab=97, types=3):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    B = len(lengths)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, vocab, (B, S), generator=gen) * mask
    tt = torch.randint(0, types, (B, S), generator=gen) * mask
    return ids, mask, tt


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
@pytest.mark.parametrize("lengths, S", [([13, 1, 7, 13], 13), ([5, 5], 5), ([1], 1), ([31, 2, 17], 33)])
def test_cpu_backend_matches_transformers(hidden_act, lengths, S):
    ours, theirs = _pair(hidden_act)
    ids, mask, tt = _padded(lengths, S)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        assert ours._backend(_inputs(ours, ids), False, False, None) == "cpu"
        got = ours(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        real = mask.bool()
        torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], rtol=1e-5, atol=2e-5)
        assert not got.last_hidden_state[~real].any()  # padded positions are zero, as documented
        torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=2e-5)
        # packed input: the same rows, with no padding anywhere
        cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
        packed = ours(input_ids=ids[real], token_type_ids=tt[real], cu_seqlens=cu, max_seqlen=max(lengths))
        torch.testing.assert_close(packed.last_hidden_state, want.last_hidden_state[real], rtol=1e-5, atol=2e-5)


def test_cpu_backend_bf16_close_to_fp32():
    ours, _ = _pair()
    ids, mask, tt = _padded([29, 3, 17, 30], 30)
    with torch.no_grad():
        want = ours(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        got = ours.to(torch.bfloat16)(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    real = mask.bool()
    cos = torch.nn.functional.cosine_similarity(got[real].float(), want[real], dim=-1)
    assert cos.min() > 0.999, cos.min()


def test_when_the_cpu_backend_runs():
    ours, _ = _pair()
    dev = torch.device("cpu")
    batch = _inputs(ours, torch.tensor([[1, 2, 3]]))
    with torch.no_grad():
        assert ours._backend(batch, False, False, None) == "cpu"
        assert ours._backend(batch, True, False, None) == "torch"  # attention probabilities: explicit softmax
        assert ours._backend(batch, False, True, None) == "torch"  # per-layer hidden states: padded layout
        ours.train()
        assert ours._backend(batch, False, False, None) == "torch"  # dropout
        ours.eval()
    assert ours._backend(batch, False, False, None) == "torch"  # gradients on: oneDNN's fused ops have none
    assert resolve_backend(ours.config, dev) == "torch"
    assert resolve_backend(ours.config, dev, inference=True) == "cpu"
    ours.config.backend = "cpu"
    with pytest.raises(RuntimeError, match="inference-only"):
        resolve_backend(ours.config, dev)
    ours.config.backend = "auto"
    ours.config.unpad = False  # the padded layout asked for: the PyTorch path
    assert resolve_backend(ours.config, dev, inference=True) == "torch"


def test_gradients_flow_with_auto_backend():
    ours, _ = _pair()
    ids, mask, tt = _padded([6, 2], 6)
    out = ours(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    out.sum().backward()
    assert ours.encoder.layer[0].intermediate.dense.weight.grad is not None


class _Hidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_trace_and_export_take_the_pytorch_path():
    """Traced or exported graphs hold no oneDNN-only op (they must run in ONNX, ExecuTorch...)."""
    ours, _ = _pair()
    ids, mask, tt = _padded([6, 2], 6)
    with torch.no_grad():
        traced = torch.jit.trace(_Hidden(ours), (ids, mask), check_trace=False)
        exported = torch.export.export(_Hidden(ours), (ids, mask))
    assert "mkldnn" not in str(traced.graph)
    assert "mkldnn" not in str(exported.graph)


@pytest.mark.parametrize("flags, want", [({"amx_bf16", "avx512_bf16"}, torch.bfloat16),
                                         ({"avx512_bf16"}, torch.bfloat16),
                                         ({"avx512f", "avx2"}, torch.float32), (set(), torch.float32)])
def test_default_dtype_per_cpu(monkeypatch, flags, want):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    dtype, why = hardware.default_dtype("cpu")
    assert dtype == want and why
    assert hardware.default_dtype("cuda")[0] == torch.float16


def _random_texts(n, seed):
    import random

    rng = random.Random(seed)
    words = ("the a of river quantum music kernel debian bread eating girl baby science theory idea light "
             "walk cold warm fast slow city night morning library book write read ¿dónde está? straße café "
             "北京 東京 123 4.5 e-mail C++ naïve").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(n)]


def test_default_precision_fidelity(minilm_dir):
    """The default precision on this machine keeps min cosine >= 0.9995 to fp32 (docs/cpu.md), on fresh
    texts of every length up to past max_seq_length."""
    from fastbert import SentenceEncoder

    texts = _random_texts(48, torch.seed() % 2**31)
    default = SentenceEncoder(minilm_dir, device="cpu")
    assert default.dtype == hardware.default_dtype("cpu")[0]
    ref = SentenceEncoder(minilm_dir, device="cpu", dtype="float32").encode(texts, convert_to_tensor=True)
    got = default.encode(texts, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert cos.min() >= 0.9995, (default.dtype, cos.min())


def test_bad_dtype_raises(minilm_dir):
    from fastbert import SentenceEncoder

    with pytest.raises(ValueError, match="dtype='float8' is not supported"):
        SentenceEncoder(minilm_dir, device="cpu", dtype="float8")


def test_mixed_lengths_attend_inlength_groups():
    """A first-come batch of mixed lengths (a server's) runs attention per group of similar lengths, so short
    texts are not padded to the longest; the result is still transformers'."""
    from fastbert.packing import length_groups, packed_batch

    assert length_groups([10, 10, 9, 8]) == [[0, 1, 2, 3]]  # a length-sorted batch stays one group
    assert length_groups([2, 40, 31, 29, 5, 4]) == [[1, 2], [3], [4, 5], [0]]
    assert len(length_groups(list(range(1, 200)))) == 8  # at most 8
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    lengths = torch.randint(1, 40, (11,), generator=gen).tolist()
    lengths[3] = 39
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    assert len(packed_batch("cpu", cu, 39, sum(lengths)).groups) == len(length_groups(lengths)) > 1
    ours, theirs = _pair()
    ids, mask, tt = _padded(lengths, 39)
    real = mask.bool()
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state[real]
        for backend in ("auto", "torch"):  # the cpu path and the packed PyTorch path
            ours.config.backend = backend
            got = ours(input_ids=ids[real], token_type_ids=tt[real], cu_seqlens=cu, max_seqlen=39)
            torch.testing.assert_close(got.last_hidden_state, want, rtol=1e-5, atol=2e-5)


def test_frozen_weights_are_packed_once_and_follow_updates():
    """Frozen weights (requires_grad=False, as SentenceEncoder leaves them) are reordered for oneDNN once and
    cached outside the module; an in-place update, a new tensor or another dtype rebuilds them; trainable
    weights are never cached; the model still pickles and saves."""
    import io
    import pickle

    ours, theirs = _pair()
    ids, mask, tt = _padded([9, 4, 7], 9)
    real = mask.bool()

    def run():
        with torch.no_grad():
            return ours(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state[real]

    def want():
        with torch.no_grad():
            return theirs(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state[real]

    run()
    assert not any(m in ops.cpu._PACKED for m in ours.modules())  # trainable: nothing cached
    ours.requires_grad_(False)
    torch.testing.assert_close(run(), want(), rtol=1e-5, atol=2e-5)
    dense = ours.encoder.layer[0].intermediate.dense
    attn = ours.encoder.layer[0].attention.self
    assert dense in ops.cpu._PACKED and attn in ops.cpu._PACKED
    with torch.no_grad():  # in-place updates of frozen weights: both models alike
        for m in (ours, theirs):
            m.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
            m.encoder.layer[0].attention.self.key.weight.add_(0.01)
    torch.testing.assert_close(run(), want(), rtol=1e-5, atol=2e-5)
    buf = io.BytesIO()
    torch.save(ours, buf)
    pickle.loads(pickle.dumps(ours))
    ours.to(torch.bfloat16)  # another dtype: new tensors, packed again
    got = run().float()
    cos = torch.nn.functional.cosine_similarity(got, want(), dim=-1)
    assert cos.min() > 0.999


def test_rows_are_bucketed_in_bf16_only():
    """bf16/fp16 round the cpu path's rows up to a bucket (oneDNN builds an AMX kernel per row count); fp32
    runs exact rows (a new row count costs nothing there, extra rows cost GEMM work); both give the same
    tokens back."""
    from fastbert.packing import packed_batch

    lengths = [300, 7, 2]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    total = sum(lengths)
    assert packed_batch("cpu", cu, 300, total, torch.float32).rows is None
    for dtype in (torch.bfloat16, torch.float16):
        rows = packed_batch("cpu", cu, 300, total, dtype).rows
        assert rows is not None and total < rows <= total * 9 // 8 and rows % 16 == 0
    assert packed_batch("torch", cu, 300, total, torch.bfloat16).rows is None
    ours, _ = _pair()
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    lengths = [37, 1, 22]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    ids = torch.randint(1, 97, (sum(lengths),), generator=gen)
    with torch.no_grad():
        want = ours(input_ids=ids, cu_seqlens=cu, max_seqlen=37).last_hidden_state
        got = ours.to(torch.bfloat16)(input_ids=ids, cu_seqlens=cu, max_seqlen=37).last_hidden_state
    assert got.shape == want.shape == (sum(lengths), CFG["hidden_size"])
    assert torch.nn.functional.cosine_similarity(got.float(), want, dim=-1).min() > 0.999
