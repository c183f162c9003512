"""The Hugging Face model API on fastbert's classes, each checked against transformers itself: from_pretrained's
keywords, loading info, transformers configs, sharded saving, embeddings resizing, head_mask, Auto classes,
and fastbert without transformers installed."""
import json
import subprocess
import sys
import warnings

import pytest
import torch
import transformers

import fastbert

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=97,
            max_position_embeddings=40)


@pytest.fixture
def mlm_dir(tmp_path):
    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).save_pretrained(tmp_path / "mlm")
    return tmp_path / "mlm"


def ids(b=2, s=9):
    return torch.randint(1, TINY["vocab_size"], (b, s))


def test_models_are_transformers_models():
    cfg = fastbert.BertConfig(**TINY)
    model = fastbert.BertForMaskedLM(cfg)
    assert isinstance(cfg, transformers.BertConfig) and isinstance(model, transformers.PreTrainedModel)
    assert model.main_input_name == "input_ids" and model.config.get_text_config() is cfg
    torch.manual_seed(0)
    ours = fastbert.BertForMaskedLM(cfg)
    torch.manual_seed(0)
    theirs = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):  # same seed, same init
        assert k == k2 and torch.equal(a, b), k
    for exclude in (False, True):
        assert ours.num_parameters(exclude_embeddings=exclude) == theirs.num_parameters(exclude_embeddings=exclude)
    # parameters alike; transformers also holds position_ids / token_type_ids buffers, fastbert has none
    assert ours.get_memory_footprint(return_buffers=False) == theirs.get_memory_footprint(return_buffers=False)


def test_unknown_keywords_raise_like_transformers(mlm_dir):
    with pytest.raises(TypeError):
        transformers.BertModel.from_pretrained(mlm_dir, a_typo=1)
    with pytest.raises(TypeError, match="a_typo"):
        fastbert.BertModel.from_pretrained(mlm_dir, a_typo=1)
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        fastbert.BertModel.from_pretrained(mlm_dir, attn_implementation="flash_attention_2")
    with pytest.raises(NotImplementedError, match="device_map"):
        fastbert.BertModel.from_pretrained(mlm_dir, device_map={"embeddings": "cpu", "encoder": "cuda:0"})
    with pytest.raises(ValueError, match="both device="):
        fastbert.BertModel.from_pretrained(mlm_dir, device="cpu", device_map="cpu")
    with pytest.raises(NotImplementedError, match="quantization_config"):
        fastbert.BertModel.from_pretrained(mlm_dir, quantization_config={})


def test_loading_keywords_are_honoured_and_never_saved(mlm_dir, tmp_path):
    model = fastbert.BertForMaskedLM.from_pretrained(
        mlm_dir, attn_implementation="sdpa", device_map="cpu", torch_dtype=torch.float64, low_cpu_mem_usage=True,
        hidden_dropout_prob=0.0)
    assert model.dtype == torch.float64 and model.device.type == "cpu" and model.config.hidden_dropout_prob == 0.0
    assert model.name_or_path == str(mlm_dir)
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("attn_implementation", "device_map", "low_cpu_mem_usage", "torch_dtype", "a_typo"):
        assert key not in saved, key
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out", dtype=torch.float64).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, theirs(x).logits)


def test_transformers_config_is_accepted(mlm_dir):
    hf_cfg = transformers.BertConfig(**TINY)
    assert isinstance(fastbert.BertModel(hf_cfg).config, fastbert.BertConfig)
    model = fastbert.BertForMaskedLM.from_pretrained(mlm_dir, config=transformers.BertConfig.from_pretrained(mlm_dir))
    theirs = transformers.BertForMaskedLM.from_pretrained(mlm_dir).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, theirs(x).logits, rtol=1e-5, atol=1e-5)


def test_output_loading_info_like_transformers(mlm_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = fastbert.BertForSequenceClassification.from_pretrained(mlm_dir, output_loading_info=True)
        _, theirs = transformers.BertForSequenceClassification.from_pretrained(mlm_dir, output_loading_info=True)
    assert isinstance(model, fastbert.BertForSequenceClassification)
    assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert set(info["missing_keys"]) == set(theirs["missing_keys"])  # the new head (and pooler)
    assert {"classifier.weight", "classifier.bias"} <= set(info["missing_keys"])


def test_sharded_save_loads_in_both(tmp_path):
    torch.manual_seed(0)
    model = fastbert.BertForMaskedLM(fastbert.BertConfig(**TINY)).eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "cls.predictions.decoder.weight" not in index["weight_map"]  # tied: saved once
    x = ids()
    with torch.no_grad():
        expected = model(x).logits
        assert torch.equal(fastbert.BertForMaskedLM.from_pretrained(tmp_path, strict=True)(x).logits, expected)
        theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()(x).logits
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)


def test_resize_token_embeddings_like_transformers(mlm_dir):
    ours = fastbert.BertForMaskedLM.from_pretrained(mlm_dir)
    theirs = transformers.BertForMaskedLM.from_pretrained(mlm_dir).eval()
    for m in (ours, theirs):
        m.resize_token_embeddings(101, mean_resizing=False)
        torch.manual_seed(0)
        with torch.no_grad():
            m.get_input_embeddings().weight[97:].normal_()
    assert ours.config.vocab_size == 101
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    x = torch.randint(1, 101, (2, 9))
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    assert a.shape == (2, 9, 101)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_enable_input_require_grads(mlm_dir):
    model = fastbert.BertModel.from_pretrained(mlm_dir)
    model.requires_grad_(False)
    model.enable_input_require_grads()
    out = model(ids()).last_hidden_state
    assert out.requires_grad  # adapters on a frozen model need this (PEFT + gradient checkpointing)


def test_head_mask():
    torch.manual_seed(0)
    model = fastbert.BertModel(fastbert.BertConfig(**TINY)).eval()
    x = ids()
    with torch.no_grad():
        plain = model(x).last_hidden_state
        ones = model(x, head_mask=torch.ones(2)).last_hidden_state
        silenced = model(x, head_mask=torch.tensor([[1.0, 0.0], [1.0, 1.0]])).last_hidden_state
        # reference: head 1 of layer 0 silenced by zeroing its value projection (its output is then zero)
        value = model.encoder.layer[0].attention.self.value
        value.weight[16:].zero_()
        value.bias[16:].zero_()
        reference = model(x).last_hidden_state
    torch.testing.assert_close(ones, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(silenced, reference, rtol=1e-5, atol=1e-6)
    assert (silenced - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="head_mask"):
        model(x, head_mask=torch.ones(3))


def test_auto_classes(mlm_dir, tmp_path):
    assert type(fastbert.AutoModel.from_pretrained(mlm_dir)) is fastbert.BertModel
    assert type(fastbert.AutoModelForMaskedLM.from_pretrained(mlm_dir)) is fastbert.BertForMaskedLM
    assert type(fastbert.AutoConfig.from_pretrained(mlm_dir)) is fastbert.BertConfig
    model = fastbert.AutoModelForSequenceClassification.from_config(transformers.BertConfig(**TINY, num_labels=3))
    assert type(model) is fastbert.BertForSequenceClassification and model.classifier.out_features == 3
    transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path / "gpt2")
    for auto in (fastbert.AutoModel, fastbert.AutoConfig, fastbert.AutoTokenizer):
        with pytest.raises(ValueError, match="model_type='gpt2'.*BERT only"):
            auto.from_pretrained(tmp_path / "gpt2")


def test_auto_tokenizer(minilm_dir):
    tok = fastbert.AutoTokenizer.from_pretrained(minilm_dir)
    assert isinstance(tok, fastbert.BertTokenizer)
    text = ["A man is eating food.", "Café au lait!"]
    assert tok(text)["input_ids"] == transformers.AutoTokenizer.from_pretrained(minilm_dir)(text)["input_ids"]


def test_fill_mask_pipeline(minilm_dir):
    torch.manual_seed(0)
    tok = fastbert.BertTokenizer.from_pretrained(minilm_dir)
    cfg = dict(TINY, vocab_size=tok.vocab_size)
    ours = fastbert.BertForMaskedLM(fastbert.BertConfig(**cfg)).eval()
    theirs = transformers.BertForMaskedLM(transformers.BertConfig(**cfg)).eval()
    theirs.load_state_dict(ours.state_dict())
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    a = transformers.pipeline("fill-mask", model=ours, tokenizer=hf_tok)("Paris is the [MASK] of France.")
    b = transformers.pipeline("fill-mask", model=theirs, tokenizer=hf_tok)("Paris is the [MASK] of France.")
    assert [r["token"] for r in a] == [r["token"] for r in b]


def _attention_calls(monkeypatch):
    """Counts of the attention fastbert's PyTorch path runs: SDPA calls, explicit-softmax calls."""
    calls = {"sdpa": 0, "softmax": 0}
    sdpa, softmax = torch.nn.functional.scaled_dot_product_attention, torch.Tensor.softmax

    def count_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def count_softmax(self, *args, **kwargs):
        calls["softmax"] += 1
        return softmax(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", count_sdpa)
    monkeypatch.setattr(torch.Tensor, "softmax", count_softmax)
    return calls


@pytest.mark.parametrize("name", ["eager", "sdpa"])
def test_attn_implementation_tells_what_runs(mlm_dir, name, monkeypatch):
    """config._attn_implementation is transformers' for the names both run, and it is what fastbert runs: the
    explicit softmax for 'eager', SDPA for 'sdpa' (counted), with transformers' results."""
    ours = fastbert.BertModel.from_pretrained(mlm_dir, attn_implementation=name)
    theirs = transformers.BertModel.from_pretrained(mlm_dir, attn_implementation=name).eval()
    assert ours.config._attn_implementation == theirs.config._attn_implementation == name
    assert ours.config.backend == "torch"
    x = ids(3, 11)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    calls = _attention_calls(monkeypatch)
    with torch.no_grad():
        got = ours(x, attention_mask=mask).last_hidden_state
    layers = TINY["num_hidden_layers"]
    assert calls == ({"sdpa": 0, "softmax": layers} if name == "eager" else {"sdpa": layers, "softmax": 0})
    with torch.no_grad():
        want = theirs(x, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attn_implementation_follows_the_backend(mlm_dir, monkeypatch):
    """None leaves the backend to decide; 'fastbert' is fastbert's dispatch (Triton for CUDA tensors, SDPA
    otherwise); set_attn_implementation switches what runs; the backend setting and the name always agree."""
    model = fastbert.BertModel.from_pretrained(mlm_dir)
    assert model.config.backend == "auto" and model.config._attn_implementation == "fastbert"
    assert fastbert.BertModel.from_pretrained(mlm_dir, backend="torch").config._attn_implementation == "sdpa"
    assert fastbert.BertModel.from_pretrained(mlm_dir, backend="triton").config._attn_implementation == "fastbert"
    model = fastbert.BertModel.from_pretrained(mlm_dir, attn_implementation="fastbert")
    assert model.config._attn_implementation == "fastbert"
    x = ids()
    calls = _attention_calls(monkeypatch)
    with torch.no_grad():
        model(x)  # CPU tensors: fastbert's dispatch takes SDPA
    assert calls == {"sdpa": TINY["num_hidden_layers"], "softmax": 0}
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager" and model.config.backend == "torch"
    with torch.no_grad():
        model(x)
    assert calls == {"sdpa": TINY["num_hidden_layers"], "softmax": TINY["num_hidden_layers"]}
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("fastbert")
    assert model.config._attn_implementation == "fastbert" and model.config.backend == "auto"
    model.config.backend = "torch"  # the backend set directly: the name follows
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="backend='triton'"):
        fastbert.BertModel.from_pretrained(mlm_dir, attn_implementation="sdpa", backend="triton")
    # what is saved reloads as it ran (transformers ignores `backend`)
    assert "attn_implementation" not in model.config.to_dict()


@pytest.mark.parametrize("name", ["flash_attention_2", "flash_attention_3", "flex_attention", "paged|eager",
                                  "kernels-community/flash-attn", "sdpa_paged"])
def test_attn_implementation_fastbert_cannot_run_raises(mlm_dir, name):
    with pytest.raises(ValueError, match=r"'eager'.*'sdpa'.*'fastbert'"):
        fastbert.BertModel.from_pretrained(mlm_dir, attn_implementation=name)
    model = fastbert.BertModel(fastbert.BertConfig(**TINY))
    with pytest.raises(ValueError, match=r"is not one fastbert runs"):
        model.set_attn_implementation(name)
    with pytest.raises(ValueError, match=r"is not one fastbert runs"):
        fastbert.BertConfig(**TINY, attn_implementation=name)
    assert model.config._attn_implementation == "fastbert"  # unchanged


def test_without_transformers(tmp_path):
    """transformers blocked: the stand-alone bases; models build, run, save, load, pickle; the library-only
    features raise naming what is missing."""
    code = f"""
import sys, pickle
sys.modules["transformers"] = None
import torch, fastbert
from fastbert.configuration_bert import HAS_TRANSFORMERS
assert not HAS_TRANSFORMERS
cfg = fastbert.BertConfig(**{TINY!r})
torch.manual_seed(0)
m = fastbert.BertForMaskedLM(cfg).eval()
x = torch.randint(1, 97, (2, 9))
m.save_pretrained({str(tmp_path)!r})
m2, info = fastbert.AutoModelForMaskedLM.from_pretrained({str(tmp_path)!r}, strict=True, output_loading_info=True)
assert torch.equal(m(x).logits, m2(x).logits) and not info["missing_keys"]
assert torch.equal(pickle.loads(pickle.dumps(m))(x).logits, m(x).logits)
assert m.num_parameters(exclude_embeddings=True) < m.num_parameters()
try:
    fastbert.BertModel.from_pretrained({str(tmp_path)!r}, a_typo=1)
    raise SystemExit("no TypeError")
except TypeError:
    pass
try:
    cfg.save_pretrained({str(tmp_path)!r}, a_typo=1)
    raise SystemExit("no TypeError from config.save_pretrained")
except TypeError as e:
    assert "a_typo" in str(e)
for call in (lambda: m.save_pretrained({str(tmp_path)!r}, max_shard_size="1MB"), lambda: m.resize_token_embeddings(5)):
    try:
        call()
        raise SystemExit("no error")
    except NotImplementedError as e:
        assert "needs transformers" in str(e)
for name, backend in (("eager", "torch"), ("sdpa", "torch"), ("fastbert", "auto"), (None, "auto")):
    m3 = fastbert.BertModel.from_pretrained({str(tmp_path)!r}, attn_implementation=name)
    assert m3.config._attn_implementation == (name or "fastbert") and m3.config.backend == backend, name
try:
    fastbert.BertModel.from_pretrained({str(tmp_path)!r}, attn_implementation="flash_attention_2")
    raise SystemExit("no ValueError for flash_attention_2")
except ValueError as e:
    assert "'eager'" in str(e) and "'sdpa'" in str(e) and "'fastbert'" in str(e), e
m.train(); m.gradient_checkpointing_enable()
m(x, labels=x).loss.backward()
print("ok", m2.config.to_dict()["model_type"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok bert"
    # what the stand-alone class wrote, transformers reads
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path)
    assert theirs.config.hidden_size == 32


def test_lora_adapters_take_part_on_the_triton_path(device):
    """The Triton path fuses Q/K/V and the intermediate GEMM by reading the Linear weights; modules that PEFT
    wrapped must run as modules there, or the adapters would be silently skipped. Reference: the PyTorch
    path, which always calls the modules."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("triton")
    torch.manual_seed(0)
    base = fastbert.BertForSequenceClassification(fastbert.BertConfig(**TINY, backend="triton")).to(device).eval()
    model = peft.get_peft_model(base, peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["query", "value", "intermediate.dense"],
        init_lora_weights=False))  # random A and B: the adapters change the output from the start
    x = ids(3, 11).to(device)
    mask = torch.ones_like(x)
    mask[1, 7:] = 0  # padding: the unpadded Triton path
    with torch.no_grad():
        triton_out = model(input_ids=x, attention_mask=mask).logits
        base.config.backend = "torch"
        torch_out = model(input_ids=x, attention_mask=mask).logits
        with model.disable_adapter():
            plain = model(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(triton_out, torch_out, rtol=1e-4, atol=1e-4)
    assert (torch_out - plain).abs().max() > 1e-3  # the adapters matter


def test_subfolder_state_dict_and_use_safetensors(mlm_dir):
    ref = fastbert.BertForMaskedLM.from_pretrained(mlm_dir)
    via_subfolder = fastbert.BertForMaskedLM.from_pretrained(mlm_dir.parent, subfolder=mlm_dir.name)
    via_state = fastbert.BertForMaskedLM.from_pretrained(None, config=mlm_dir, state_dict=ref.state_dict())
    x = ids()
    with torch.no_grad():
        assert torch.equal(via_subfolder(x).logits, ref(x).logits)
        assert torch.equal(via_state(x).logits, ref(x).logits)
    with pytest.raises(fastbert.CheckpointError, match="pytorch_model.bin"):
        fastbert.BertForMaskedLM.from_pretrained(mlm_dir, use_safetensors=False)  # only safetensors there


def test_compat_page_lists_every_difference(minilm_dir):
    """Every public name transformers 5 has and fastbert lacks (scripts/compat_report.py, on live instances) is
    answered in docs/compat.md: a new transformers release that adds one fails here until the page says how
    fastbert answers it."""
    import importlib.util
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("compat_report", root / "scripts" / "compat_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    page = (root / "docs" / "compat.md").read_text()
    listed = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", page))
    for what, found in report.report().items():
        missing = [n for n in found["only_transformers"] if n not in listed]
        assert not missing, f"{what}: docs/compat.md does not answer {missing}"
