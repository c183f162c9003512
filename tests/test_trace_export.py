"""The PyTorch path traced, exported and compiled with masks: a trace taken on an unpadded batch is right on a
padded one (no data-dependent branch bakes "nothing is padded" in), torch.export and
torch.compile(fullgraph=True) work with dynamic batch and length, ONNX export runs in onnx's reference
evaluator; the packed Triton forward compiles without graph breaks."""
import pytest
import torch

import fastbert

CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99,
           max_position_embeddings=64, backend="torch")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fastbert.BertModel(fastbert.BertConfig(**CFG)).eval()


class Wrapped(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def _padded(B=3, S=10):
    ids = torch.randint(0, 99, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, S // 2:] = 0
    mask[-1, 2:] = 0
    return ids, mask


def _check(fn, model, ids, mask):
    with torch.no_grad():
        want = Wrapped(model)(ids, mask)
        got = fn(ids, mask)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_jit_trace_on_unpadded_batch_keeps_the_mask(model):
    ids = torch.randint(0, 99, (3, 10))
    with torch.no_grad():
        traced = torch.jit.trace(Wrapped(model), (ids, torch.ones_like(ids)), check_trace=False)
    _check(traced, model, *_padded())


def test_torch_export_dynamic_shapes(model):
    ids, mask = _padded()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(Wrapped(model), (ids, mask),
                             dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    _check(ep.module(), model, *_padded(5, 13))


def test_compile_fullgraph(model):
    compiled = torch.compile(Wrapped(model), fullgraph=True, dynamic=True)
    _check(compiled, model, *_padded())
    _check(compiled, model, *_padded(2, 7))


def test_onnx_export_matches_eager(model, tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    ids, mask = _padded()
    path = tmp_path / "bert.onnx"
    torch.onnx.export(Wrapped(model), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "pooler_output"], dynamo=True,
                      dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    ids, mask = _padded(2, 7)
    got = ReferenceEvaluator(onnx.load(str(path))).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = Wrapped(model)(ids, mask)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-4, atol=1e-4)


def test_packed_triton_forward_compiles_without_graph_breaks(device):
    torch.manual_seed(0)
    model = fastbert.BertModel(fastbert.BertConfig(**{**CFG, "backend": "triton"})).to(device).eval()
    ids = torch.randint(0, 99, (13,), device=device)
    cu = torch.tensor([0, 5, 12, 13], dtype=torch.int32, device=device)

    def run(ids, cu):
        return model(input_ids=ids, cu_seqlens=cu, max_seqlen=7).last_hidden_state

    with torch.no_grad():
        want = run(ids, cu)
        explained = torch._dynamo.explain(run)(ids, cu)
        got = torch.compile(run, fullgraph=True)(ids, cu)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
