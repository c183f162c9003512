"""fastbert.patch(model) and attn_implementation="fastbert" on Hugging Face BERT models.

Each test counts kernel launches (the launchers in fastbert.kernels.*, wrapped) to prove the fused ops ran
inside the patched model, and compares outputs and gradients with an unpatched copy of the same model.
"""
import collections
import copy
import warnings

import pytest
import torch

import fastbert

transformers = pytest.importorskip("transformers")

LAUNCHERS = {
    "attention": ("attention_fwd", "attention_bwd"),
    "layer_norm": ("layer_norm_fwd", "layer_norm_bwd"),
    "gelu": ("bias_gelu_fwd", "bias_gelu_bwd"),
}


@pytest.fixture
def launches(monkeypatch):
    """Counter of kernel launches by launcher name, for kernels that run (Triton: GPU or interpreter)."""
    from fastbert.ops._dispatch import kernels, use_triton

    if not use_triton(torch.empty(0)) and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU for the kernels to run")
    counts = collections.Counter()
    for module_name, names in LAUNCHERS.items():
        module = kernels(module_name)
        for name in names:
            original = getattr(module, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                counts[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, counted)
    return counts


def _config(**overrides):
    kw = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
              max_position_embeddings=64, num_labels=3)
    kw.update(overrides)
    return transformers.BertConfig(**kw)


def _batch(gen, batch=3, seqlen=13, vocab=97):
    ids = torch.randint(0, vocab, (batch, seqlen), generator=gen)
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids, mask


def test_bert_model_outputs_in_place(launches, device):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model = transformers.BertModel(_config()).to(device).eval()
    ref = copy.deepcopy(model)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    ids, mask = (t.to(device) for t in _batch(gen))
    seen = []
    model.encoder.layer[0].register_forward_hook(lambda *a: seen.append(1))

    out = fastbert.patch(model)
    assert out is model and type(model) is transformers.BertModel and fastbert.is_patched(model)
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    fastbert.patch(model)  # idempotent

    with torch.no_grad():
        got = model(ids, attention_mask=mask)
        want = ref(ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[keep], want.last_hidden_state[keep], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=2e-5, rtol=1e-4)
    layers = model.config.num_hidden_layers
    assert launches["attention_fwd"] == layers
    assert launches["layer_norm_fwd"] == 2 * layers  # BertSelfOutput and BertOutput (embeddings LN stays HF's)
    assert launches["bias_gelu_fwd"] == layers
    assert seen == [1]  # a hook on a patched module's parent still fires

    fastbert.unpatch(model)
    assert not fastbert.is_patched(model)
    launches.clear()
    with torch.no_grad():
        again = model(ids, attention_mask=mask)
    assert sum(launches.values()) == 0
    torch.testing.assert_close(again.last_hidden_state, want.last_hidden_state)


def test_sequence_classification_training_grads(launches, device):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    # dropout probs 0 in train mode: same computation, so gradients are comparable one to one
    cfg = _config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu_new")
    model = transformers.BertForSequenceClassification(cfg).to(device).train()
    ref = copy.deepcopy(model)
    fastbert.patch(model)
    ids, mask = (t.to(device) for t in _batch(gen))
    labels = torch.randint(0, 3, (ids.shape[0],), generator=gen).to(device)

    loss = model(ids, attention_mask=mask, labels=labels).loss
    want = ref(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    want.backward()
    torch.testing.assert_close(loss, want, atol=2e-5, rtol=1e-4)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=5e-5, rtol=1e-3, msg=name)
    layers = cfg.num_hidden_layers
    assert launches["attention_bwd"] == layers
    assert launches["layer_norm_bwd"] == 2 * layers
    assert launches["bias_gelu_bwd"] == layers

    # with dropout on, one optimizer step runs and keeps everything finite (a different mask, not compared)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built after patching: the same parameter tensors
    opt.zero_grad()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_attn_implementation_fastbert(launches, device, tmp_path):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert "fastbert" in ALL_ATTENTION_FUNCTIONS  # registered by `import fastbert` on transformers' import
    torch.manual_seed(4)
    transformers.BertModel(_config()).save_pretrained(tmp_path)
    model = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="fastbert").to(device).eval()
    ref = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").to(device).eval()
    assert model.config._attn_implementation == "fastbert"
    ids, mask = (t.to(device) for t in _batch(torch.Generator().manual_seed(5)))
    with torch.no_grad():
        got = model(ids, attention_mask=mask).last_hidden_state
        want = ref(ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=1e-4)
    assert launches["attention_fwd"] == model.config.num_hidden_layers


def test_unsupported_left_alone_and_reported(launches, device):
    torch.manual_seed(6)
    model = transformers.BertModel(_config(hidden_act="relu", attn_implementation="eager")).to(device).eval()
    ref = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"1 module\(s\)|activation ReLU") as record:
        fastbert.patch(model)
    assert sum("left" in str(w.message) for w in record) == 1  # one warning listing them
    ids, mask = (t.to(device) for t in _batch(torch.Generator().manual_seed(7)))
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
        want = ref(ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[keep], want.last_hidden_state[keep], atol=2e-5, rtol=1e-4)
    assert launches["bias_gelu_fwd"] == 0 and launches["attention_fwd"] == 2

    # output_attentions=True: attention falls back per call (and warns), weights equal HF's
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with torch.no_grad():
            got = model(ids, attention_mask=mask, output_attentions=True)
            want = ref(ids, attention_mask=mask, output_attentions=True)
    assert got.attentions is not None and len(got.attentions) == 2
    for a, b in zip(got.attentions, want.attentions):
        torch.testing.assert_close(a, b)


def test_kv_cache_falls_back_under_the_name_hf_takes(launches, device):
    """A KV cache handed to a patched self-attention (``cache`` from transformers 5.2x, ``past_key_values``
    before) runs HF's own attention over the cached keys, equal to HF's; the fallback passes on only the name
    the caller used (both at once make HF warn about the deprecated one on every call)."""
    import inspect

    torch.manual_seed(8)
    ref = transformers.BertModel(_config(attn_implementation="eager")).to(device).eval()
    model = copy.deepcopy(ref)
    fastbert.patch(model)
    sa_ref, sa = ref.encoder.layer[0].attention.self, model.encoder.layer[0].attention.self
    params = inspect.signature(type(sa_ref).forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    h = torch.randn(2, 5, 64, device=device)
    k0, v0 = (torch.randn(2, 4, 3, 16, device=device) for _ in range(2))

    def cache():
        c = transformers.DynamicCache()
        c.update(k0.clone(), v0.clone(), sa_ref.layer_idx or 0)
        return c

    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        got = sa(h, None, **{name: cache()})[0]
        want = sa_ref(h, None, **{name: cache()})[0]
        ids, mask = (t.to(device) for t in _batch(torch.Generator().manual_seed(9)))
        model(ids, attention_mask=mask, output_attentions=True)  # a fallback without a cache
    torch.testing.assert_close(got, want)
    messages = [str(w.message) for w in caught]
    assert sum("a KV cache" in m for m in messages) == 1, messages
    assert not any("deprecated" in m for m in messages), messages


def test_sentence_transformer_encode(launches, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    ref = copy.deepcopy(model)
    sentences = ["A man is playing a guitar.", "fastbert patches the model in place", "short"]
    fastbert.patch(model)
    assert isinstance(model, st.SentenceTransformer)
    got = model.encode(sentences, convert_to_tensor=True)
    want = ref.encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert launches["attention_fwd"] == 6 and launches["bias_gelu_fwd"] == 6
