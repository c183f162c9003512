"""Checkpoints: the real all-MiniLM-L6-v2, save/load round trips, and clear errors for bad files."""
import json
import os
import shutil

import pytest
import torch
import transformers

import fastbert
from fastbert import BertConfig, BertModel, CheckpointError

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Ein Mann reitet auf einem Pferd.",
    "這是一個測試句子，包含中文字符。",
    "Café au lait — naïve coöperation, résumé!",
]


def tiny_config(**kw):
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=97, max_position_embeddings=40, **kw)


def test_minilm_loads_strictly_and_matches_sentence_transformers(minilm_dir):
    model = BertModel.from_pretrained(minilm_dir, strict=True)  # every weight present, none left over
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    tok = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    batch = tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    ref = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        ours = fastbert.mean_pooling(model(**batch).last_hidden_state, batch["attention_mask"])
        theirs = ref(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        theirs = (theirs * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cos.min().item() >= 0.99999, cos


def test_save_load_is_bit_identical(tmp_path, minilm_dir):
    a = fastbert.BertForPreTraining.from_pretrained(minilm_dir)  # heads newly initialised (warned)
    a.save_pretrained(tmp_path / "a")
    b = fastbert.BertForPreTraining.from_pretrained(tmp_path / "a", strict=True)
    b.save_pretrained(tmp_path / "b")
    c = fastbert.BertForPreTraining.from_pretrained(tmp_path / "b", strict=True)
    sa, sc = a.state_dict(), c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert sa[k].dtype == sc[k].dtype and torch.equal(sa[k], sc[k]), k
    assert c.cls.predictions.decoder.weight is c.bert.embeddings.word_embeddings.weight


def test_saved_checkpoint_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    model = fastbert.BertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 97, (2, 9))
    assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-5


def test_transformers_checkpoint_loads_in_fastbert(tmp_path):
    hf_cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=97, max_position_embeddings=40)
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = fastbert.BertForPreTraining.from_pretrained(tmp_path, strict=True)
    ids = torch.randint(1, 97, (2, 9))
    a, b = ours(ids), hf(ids)
    assert (a.prediction_logits - b.prediction_logits).abs().max() <= 1e-5
    # the pre-training checkpoint also feeds a bare encoder (its heads ignored) and a new classifier head
    base = BertModel.from_pretrained(tmp_path)
    assert (base(ids).last_hidden_state - hf.bert(ids).last_hidden_state).abs().max() <= 1e-5
    with pytest.warns(UserWarning, match="newly initialised: classifier.bias, classifier.weight"):
        fastbert.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3)


def test_pytorch_bin_and_legacy_gamma_beta(tmp_path):
    torch.manual_seed(1)
    model = BertModel(tiny_config()).eval()
    model.config.save_pretrained(tmp_path)
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + k] = v.clone()
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = BertModel.from_pretrained(tmp_path, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def _write(tmp_path, model, state=None):
    from safetensors.torch import save_file

    model.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in (state if state is not None else model.state_dict()).items()}
    save_file(state, str(tmp_path / "model.safetensors"))


def test_missing_unexpected_and_misshaped_weights_are_listed(tmp_path):
    model = BertModel(tiny_config())
    state = dict(model.state_dict())
    del state["encoder.layer.1.output.dense.weight"]
    state["encoder.layer.7.attention.self.query.weight"] = torch.zeros(2, 2)
    state["embeddings.word_embeddings.weight"] = torch.zeros(96, 32)
    _write(tmp_path, model, state)
    with pytest.raises(CheckpointError) as info:
        BertModel.from_pretrained(tmp_path)
    msg = str(info.value)
    assert "encoder.layer.1.output.dense.weight" in msg
    assert "encoder.layer.7.attention.self.query.weight" in msg
    assert "embeddings.word_embeddings.weight (checkpoint (96, 32), model (97, 32))" in msg


def test_strict_refuses_newly_initialised_heads(tmp_path):
    _write(tmp_path, BertModel(tiny_config()))
    with pytest.raises(CheckpointError, match="classifier.weight"):
        fastbert.BertForSequenceClassification.from_pretrained(tmp_path, strict=True)


def test_truncated_safetensors(tmp_path):
    _write(tmp_path, BertModel(tiny_config()))
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        BertModel.from_pretrained(tmp_path)


def test_config_that_is_not_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ValueError, match="model_type='gpt2', not 'bert'"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertConfig.from_pretrained(tmp_path)


def test_missing_weights_file_and_directory(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        BertModel.from_pretrained(tmp_path / "nope")


def test_config_round_trip_keeps_unknown_keys(tmp_path, minilm_dir):
    shutil.copy(os.path.join(minilm_dir, "config.json"), tmp_path / "config.json")
    a = BertConfig.from_pretrained(tmp_path)
    a.save_pretrained(tmp_path / "out")
    b = BertConfig.from_pretrained(tmp_path / "out")
    assert a.to_diff_dict() == b.to_diff_dict() and a._name_or_path == "nreimers/MiniLM-L6-H384-uncased"
    original = json.loads((tmp_path / "config.json").read_text())
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in original.items():
        if key not in ("_name_or_path", "transformers_version"):  # transformers drops / rewrites these two
            assert written[key] == value, key
    # transformers writes the same file, less fastbert's two keys
    transformers.BertConfig.from_pretrained(tmp_path).save_pretrained(tmp_path / "hf")
    theirs = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k not in ("backend", "unpad")} == theirs
    hf = transformers.BertConfig.from_pretrained(tmp_path / "out")
    assert hf.hidden_size == 384 and hf.layer_norm_eps == 1e-12


@pytest.mark.parametrize("bad", [dict(hidden_size=30, num_attention_heads=4), dict(hidden_act="mish"),
                                 dict(backend="cuda"), dict(position_embedding_type="relative_key"),
                                 dict(vocab_size=0)])
def test_bad_config_values(bad):
    with pytest.raises((ValueError, NotImplementedError)):
        BertConfig(**bad)


def test_hub_name_without_network_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not a local directory.*Pass the path of a local model directory"):
        BertModel.from_pretrained("google-bert/bert-base-uncased")
