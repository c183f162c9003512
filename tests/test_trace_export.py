"""The PyTorch path traced, exported and compiled with masks: a trace taken on an unpadded batch is right on a
padded one (no data-dependent branch bakes "nothing is padded" in), torch.export and
torch.compile(fullgraph=True) work with dynamic batch and length, ONNX export runs in onnx's reference
evaluator; the packed Triton forward compiles without graph breaks.

The models themselves, as users export them (their output classes are pytree nodes, as transformers'): every
head with ``return_dict=True`` through ``torch.export`` and through ONNX's dynamo exporter into onnxruntime, with
dynamic batch and length, run on another batch and compared with transformers' own model with the same weights;
the packed (``cu_seqlens``) forward on both backends; and the same without transformers installed."""
import subprocess
import sys

import pytest
import torch
import torch.utils._pytree as pytree
from torch.export import Dim

import fastbert
from fastbert import modeling_outputs

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


# ---------------------------------------------------------------------------------------------------------
# The models as users export them: return_dict=True outputs, every head
# ---------------------------------------------------------------------------------------------------------
HEADS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
         "BertForMultipleChoice"]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(fastbert model, transformers model) of one head with the same random weights: transformers' saved,
    fastbert's loaded from it."""
    transformers = pytest.importorskip("transformers")
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(hash(name) % 1000)
            labels = 2 if name == "BertForQuestionAnswering" else 3  # start and end logits
            hf_cfg = transformers.BertConfig(**{k: v for k, v in CFG.items() if k != "backend"}, num_labels=labels)
            theirs = getattr(transformers, name)(hf_cfg).eval()
            path = tmp_path_factory.mktemp(name)
            theirs.save_pretrained(path)
            ours = getattr(fastbert, name).from_pretrained(path, backend="torch").eval()
            cache[name] = ours, theirs
        return cache[name]
    return get


def _inputs(name, B, S, choices=2):
    shape = (B, choices, S) if name == "BertForMultipleChoice" else (B, S)
    ids = torch.randint(1, 99, shape)
    mask = torch.ones_like(ids)
    mask[1, ..., S // 2:] = 0  # padding in the middle row and the last
    mask[-1, ..., 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.rand(shape) < 0.5).long()}


def _dynamic(name):
    batch, seq = Dim("batch", min=1, max=32), Dim("seq", min=2, max=64)
    dims = {0: batch, 1: Dim("choices", min=1, max=8), 2: seq} if name == "BertForMultipleChoice" else {0: batch, 1: seq}
    return {"input_ids": dims, "attention_mask": dims, "token_type_ids": dims, "return_dict": None}


def _assert_outputs_match(got, want, atol=1e-5):
    assert type(got) is type(want) and list(got.keys()) == list(want.keys())
    for key in want.keys():
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=atol, msg=key)


def test_every_output_class_is_a_pytree_node():
    """Flattened to the fields that are set, rebuilt as the same class with the same values."""
    classes = [c for c in vars(modeling_outputs).values()
               if isinstance(c, type) and issubclass(c, modeling_outputs.ModelOutput) and c is not
               modeling_outputs.ModelOutput]
    assert len(classes) == 9
    for cls in classes:
        names = [f.name for f in cls.__dataclass_fields__.values()]
        out = cls(**{n: torch.randn(2, 3) for n in names[::2]})
        leaves, spec = pytree.tree_flatten(out)
        assert len(leaves) == len(names[::2]) and all(isinstance(t, torch.Tensor) for t in leaves)
        back = pytree.tree_unflatten(leaves, spec)
        assert type(back) is cls and list(back.keys()) == names[::2]
        for n in names[::2]:
            assert back[n] is out[n]
        paths = [p for p, _ in pytree.tree_flatten_with_path(out)[0]]
        assert [p[0].key for p in paths] == names[::2]


@pytest.mark.parametrize("name", HEADS)
def test_torch_export_every_head(name, hf_pair):
    ours, theirs = hf_pair(name)
    torch.manual_seed(1)
    ep = torch.export.export(ours, (), {**_inputs(name, 3, 10), "return_dict": True}, dynamic_shapes=_dynamic(name))
    run = _inputs(name, 5, 13, choices=3)  # another batch, length and number of choices
    got = ep.module()(**run, return_dict=True)
    with torch.no_grad():
        want = ours(**run, return_dict=True)
        ref = theirs(**run, return_dict=True)
    _assert_outputs_match(got, want)
    for key in want.keys():  # transformers, the reference, with the same weights
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["BertModel", "BertForQuestionAnswering", "BertForMultipleChoice"])
def test_onnx_dynamo_export_runs_in_onnxruntime(name, hf_pair, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ours, theirs = hf_pair(name)
    torch.manual_seed(2)
    example = _inputs(name, 3, 10)
    with torch.no_grad():
        names = list(ours(**example).keys())
    dyn = {k: {i: f"{d.__name__}" for i, d in v.items()} for k, v in _dynamic(name).items() if v is not None}
    program = torch.onnx.export(ours, (), kwargs=example, dynamo=True, dynamic_shapes=dyn, output_names=names,
                                input_names=list(example))
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    run = _inputs(name, 5, 13, choices=3)
    got = session.run(names, {k: v.numpy() for k, v in run.items()})
    with torch.no_grad():
        ref = theirs(**run)
    for key, value in zip(names, got):
        torch.testing.assert_close(torch.from_numpy(value), ref[key], rtol=1e-4, atol=1e-4, msg=key)


def _packed(lengths):
    ids = torch.randint(1, 99, (sum(lengths),))
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return ids, cu, max(lengths)


def _packed_reference(model, ids, cu):
    """The same sequences padded, through the eager model: each real token's row, in packed order."""
    rows = [ids[a:b] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    mask = (torch.arange(padded.shape[1])[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        out = model(input_ids=padded, attention_mask=mask)
    return out.last_hidden_state[mask.bool()], out.pooler_output


_PACKED_DIMS = {"input_ids": {0: Dim("tokens", min=2, max=2048)},
                # torch.export specialises sizes 0 and 1: the program takes batches of 2 sequences or more
                "cu_seqlens": {0: Dim("batch_plus_1", min=3, max=65)},
                "max_seqlen": Dim.DYNAMIC}


def test_torch_export_packed_forward(hf_pair):
    ours, theirs = hf_pair("BertModel")
    torch.manual_seed(3)
    ids, cu, longest = _packed([5, 7, 1])
    ep = torch.export.export(ours, (), {"input_ids": ids, "cu_seqlens": cu, "max_seqlen": longest},
                             dynamic_shapes=_PACKED_DIMS)
    ids, cu, longest = _packed([3, 11, 1, 8, 2])  # more sequences, a longer one
    got = ep.module()(input_ids=ids, cu_seqlens=cu, max_seqlen=longest)
    with torch.no_grad():
        want = ours(input_ids=ids, cu_seqlens=cu, max_seqlen=longest)
    _assert_outputs_match(got, want)
    tokens, pooled = _packed_reference(theirs, ids, cu)
    torch.testing.assert_close(got.last_hidden_state, tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, pooled, rtol=1e-4, atol=1e-5)


def test_onnx_export_packed_forward(hf_pair, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ours, theirs = hf_pair("BertModel")
    torch.manual_seed(4)
    ids, cu, longest = _packed([5, 7, 1])
    program = torch.onnx.export(ours, (), kwargs={"input_ids": ids, "cu_seqlens": cu, "max_seqlen": longest},
                                dynamo=True, dynamic_shapes=_PACKED_DIMS,
                                output_names=["last_hidden_state", "pooler_output", "cu_seqlens_out"])
    program.save(str(tmp_path / "packed.onnx"))
    session = ort.InferenceSession(str(tmp_path / "packed.onnx"), providers=["CPUExecutionProvider"])
    ids, cu, longest = _packed([3, 11, 1, 8, 2])
    feeds = [ids.numpy(), cu.numpy(), torch.tensor(longest).numpy()]
    hidden, pooled, _ = session.run(None, {i.name: v for i, v in zip(session.get_inputs(), feeds)})
    tokens, ref_pooled = _packed_reference(theirs, ids, cu)
    torch.testing.assert_close(torch.from_numpy(hidden), tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(pooled), ref_pooled, rtol=1e-4, atol=1e-4)


def test_torch_export_triton_backend(device):
    """The Triton path exports through its custom ops (the GPU route to AOTInductor): packed, and padded (the
    padding is kept while exporting, since unpadding needs the token count on the host; padded rows are zero
    as in eager's unpadded run)."""
    pytest.importorskip("triton")
    torch.manual_seed(5)
    model = fastbert.BertModel(fastbert.BertConfig(**{**CFG, "backend": "triton"})).to(device).eval()
    ids, cu, longest = _packed([5, 7, 1])
    ep = torch.export.export(model, (), {"input_ids": ids.to(device), "cu_seqlens": cu.to(device),
                                         "max_seqlen": longest}, dynamic_shapes=_PACKED_DIMS)
    assert any(str(n.target).startswith("fastbert.attention") for n in ep.graph.nodes)
    ids, cu, longest = _packed([3, 11, 1, 8])
    got = ep.module()(input_ids=ids.to(device), cu_seqlens=cu.to(device), max_seqlen=longest)
    with torch.no_grad():
        want = model(input_ids=ids.to(device), cu_seqlens=cu.to(device), max_seqlen=longest)
    _assert_outputs_match(got, want, atol=2e-5)

    example = {k: v.to(device) for k, v in _inputs("BertModel", 3, 10).items()}
    ep = torch.export.export(model, (), example, dynamic_shapes={k: v for k, v in _dynamic("BertModel").items()
                                                                 if k in example})
    run = {k: v.to(device) for k, v in _inputs("BertModel", 4, 13).items()}
    got = ep.module()(**run)
    with torch.no_grad():
        want = model(**run)
    _assert_outputs_match(got, want, atol=2e-5)
    assert (got.last_hidden_state[run["attention_mask"] == 0] == 0).all()


_NO_TRANSFORMERS = """
import sys
sys.modules["transformers"] = None  # blocked: fastbert's stand-alone base classes
import torch, fastbert
from torch.export import Dim
from fastbert.configuration_bert import HAS_TRANSFORMERS
assert not HAS_TRANSFORMERS
cfg = fastbert.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          vocab_size=99, max_position_embeddings=64, backend="torch")
for name in ("BertModel", "BertForQuestionAnswering"):
    torch.manual_seed(0)
    model = getattr(fastbert, name)(cfg).eval()
    ids, mask = torch.randint(1, 99, (3, 10)), torch.ones(3, 10, dtype=torch.long)
    mask[1, 4:] = 0
    dims = {0: Dim("batch", min=1, max=32), 1: Dim("seq", min=2, max=64)}
    ep = torch.export.export(model, (), {"input_ids": ids, "attention_mask": mask, "return_dict": True},
                             dynamic_shapes={"input_ids": dims, "attention_mask": dims, "return_dict": None})
    ids, mask = torch.randint(1, 99, (5, 13)), torch.ones(5, 13, dtype=torch.long)
    mask[2, 6:] = 0
    got = ep.module()(input_ids=ids, attention_mask=mask, return_dict=True)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, return_dict=True)
    assert type(got) is type(want) and list(got.keys()) == list(want.keys()), (type(got), list(got.keys()))
    for key in want.keys():
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
print("ok")
"""


def test_torch_export_without_transformers():
    out = subprocess.run([sys.executable, "-c", _NO_TRANSFORMERS], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
