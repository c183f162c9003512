"""Bad inputs get a clear Python exception naming the problem; backend choice; the `fastbert` command."""
import subprocess
import sys

import pytest
import torch

import fastbert
from fastbert import BertConfig, BertModel
from fastbert.modeling_bert import resolve_backend


@pytest.fixture(scope="module")
def model():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=50, max_position_embeddings=16, type_vocab_size=2)
    return BertModel(cfg).eval()


def test_id_outside_vocab(model):
    with pytest.raises(ValueError, match=r"input_ids holds ids outside \[0, 49\].*max 50"):
        model(torch.tensor([[1, 2, 50]]))
    with pytest.raises(ValueError, match="input_ids holds ids outside"):
        model(torch.tensor([[1, -1, 3]]))


def test_token_type_outside_range(model):
    with pytest.raises(ValueError, match="token_type_ids holds ids outside"):
        model(torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1, 2]]))


def test_sequence_longer_than_model_allows(model):
    with pytest.raises(ValueError, match="longer than the model allows.*max_position_embeddings=16"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\) but input_ids has shape \(1, 3\)"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))


def test_wrong_dtype_of_ids(model):
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(torch.tensor([[1.0, 2.0]]))


def test_wrong_rank_and_missing_inputs(model):
    with pytest.raises(ValueError, match=r"\(batch, seqlen\)"):
        model(torch.ones(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_bad_cu_seqlens(model):
    ids = torch.randint(1, 50, (10,))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        model(input_ids=ids, cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="end at the number of tokens"):
        model(input_ids=ids, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))


def test_decoder_features_are_refused(model):
    with pytest.raises(NotImplementedError, match="encoder-only"):
        model(torch.tensor([[1, 2]]), encoder_hidden_states=torch.zeros(1, 2, 32))


def test_label_outside_label_set():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=50, num_labels=3)
    clf = fastbert.BertForSequenceClassification(cfg)
    with pytest.raises(ValueError, match=r"outside the label set \[0, 2\]"):
        clf(torch.tensor([[1, 2, 3]]), labels=torch.tensor([3]))


def test_backend_resolution(model, monkeypatch):
    cfg = model.config
    assert resolve_backend(cfg, torch.device("cpu")) == "torch"  # auto: PyTorch for CPU tensors
    for backend, expect in (("torch", "torch"), ("triton", "triton")):
        monkeypatch.setattr(cfg, "backend", backend)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_backend(cfg, torch.device("cpu")) == expect
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs triton and CUDA tensors"):
        resolve_backend(cfg, torch.device("cpu"))


def test_import_does_not_touch_triton_or_gpu():
    build = ("m = fastbert.BertModel(fastbert.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, "
             "intermediate_size=64)); import torch; assert not torch.cuda.is_initialized(), 'CUDA initialised'; ")
    # `import fastbert` imports neither triton nor fastbert's kernels; building a model never initialises CUDA.
    # With transformers as the base class, torch._dynamo (imported by transformers.modeling_utils) imports
    # triton itself, but fastbert's kernels stay unimported; without transformers triton is never imported.
    code = ("import sys, fastbert; assert 'triton' not in sys.modules, 'triton imported'; "
            "assert 'transformers' not in sys.modules, 'import fastbert imported transformers'; " + build
            + "assert 'fastbert.kernels' not in sys.modules, 'kernels imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    blocked = ("import sys; sys.modules['transformers'] = None; import fastbert; " + build
               + "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", blocked], check=True)


def test_encode_command(minilm_dir):
    out = subprocess.run(
        [sys.executable, "-m", "fastbert.cli", "encode", "A man is eating food.",
         "A man is eating a piece of bread.", "The girl is carrying a baby."],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "embeddings: 3 x 384 (L2-normalised)" in out
    table = out.split("cosine similarity:")[1].strip().splitlines()[1:]  # skip the header row
    sims = [[float(x) for x in row.split()[1:]] for row in table]
    assert len(sims) == 3
    # the two sentences about eating are far closer to each other than to the third
    assert sims[0][0] == pytest.approx(1.0, abs=1e-4) and sims[0][1] > 0.6 > sims[0][2] + 0.5


def test_encode_command_without_texts():
    proc = subprocess.run([sys.executable, "-m", "fastbert.cli", "encode"], capture_output=True, text=True)
    assert proc.returncode == 2 and "give at least one text" in proc.stderr
