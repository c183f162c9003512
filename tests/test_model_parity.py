"""fastbert's BERT vs Hugging Face transformers (the independent reference), fp32 on CPU.

Same random weights (copied through the state dict, so the key names must match exactly), fresh random
inputs with padding, every head: outputs, losses and every parameter gradient.
"""
import pytest
import torch

import fastbert
from hf_twin import hf_twin

HEADS = [
    "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
    "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
    "BertForMultipleChoice",
]
CONFIGS = {
    "h64": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=211,
                max_position_embeddings=64, hidden_act="gelu"),
    "h384": dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
                 vocab_size=1000, max_position_embeddings=128, hidden_act="gelu_new", type_vocab_size=3),
    "h768": dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=500, max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-5),
}


def make_pair(head, cfg, **extra):
    torch.manual_seed(torch.seed() % 2**31)  # fresh weights every run
    config = fastbert.BertConfig(**cfg, **extra)
    ours = getattr(fastbert, head)(config).eval()
    return ours, hf_twin(ours, head)


def make_inputs(head, cfg, batch, seqlen, num_labels=2):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    shape = (batch, 3, seqlen) if head == "BertForMultipleChoice" else (batch, seqlen)
    ids = torch.randint(1, cfg["vocab_size"], shape, generator=gen)
    mask = torch.ones(shape, dtype=torch.long)
    lengths = torch.randint(1, seqlen + 1, shape[:-1], generator=gen)
    lengths.view(-1)[0] = seqlen  # at least one full row, at least one (likely) padded
    mask = (torch.arange(seqlen) < lengths[..., None]).long()
    ids = ids * mask  # pad id 0 where padded
    types = torch.randint(0, cfg.get("type_vocab_size", 2), shape, generator=gen) * mask
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)

    def mlm_labels():  # ~30% of positions, and always the first, so the loss is defined
        chosen = torch.rand(shape, generator=gen) < 0.3
        chosen[..., 0] = True
        return torch.where(chosen, ids, torch.full_like(ids, -100))

    if head == "BertForPreTraining":
        inputs.update(labels=mlm_labels(), next_sentence_label=torch.randint(0, 2, (batch,), generator=gen))
    elif head == "BertForMaskedLM":
        inputs.update(labels=mlm_labels())
    elif head == "BertForNextSentencePrediction":
        inputs.update(labels=torch.randint(0, 2, (batch,), generator=gen))
    elif head == "BertForSequenceClassification":
        inputs.update(labels=torch.randint(0, num_labels, (batch,), generator=gen))
    elif head == "BertForTokenClassification":
        inputs.update(labels=torch.randint(0, num_labels, shape, generator=gen))
    elif head == "BertForQuestionAnswering":
        inputs.update(start_positions=torch.randint(0, seqlen, (batch,), generator=gen),
                      end_positions=torch.randint(0, seqlen, (batch,), generator=gen))
    elif head == "BertForMultipleChoice":
        inputs.update(labels=torch.randint(0, 3, (batch,), generator=gen))
    return inputs


def compare_outputs(a, b, atol=1e-5):
    keys = [k for k in b.keys() if k not in ("past_key_values",) and b[k] is not None]
    assert keys, "nothing compared"
    for key in keys:
        x, y = a[key], b[key]
        assert x.shape == y.shape, (key, x.shape, y.shape)
        err = (x - y).abs().max().item()
        assert err <= atol, f"{key}: max abs diff {err:.3g} > {atol}"
    return keys


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("seqlen", [1, 13])
def test_head_matches_transformers(head, cfg_name, seqlen):
    cfg = CONFIGS[cfg_name]
    ours, theirs = make_pair(head, cfg)
    inputs = make_inputs(head, cfg, batch=3, seqlen=seqlen)
    out_a, out_b = ours(**inputs), theirs(**inputs)
    keys = compare_outputs(out_a, out_b)
    if "loss" in keys:
        out_a.loss.backward()
        out_b.loss.backward()
        grads_b = {n: p.grad for n, p in theirs.named_parameters()}
        checked = 0
        for name, p in ours.named_parameters():
            if p.grad is None:
                assert grads_b.get(name) is None or grads_b[name].abs().max() == 0, name
                continue
            ref = grads_b[name]
            scale = ref.abs().max().item() + 1e-6
            err = (p.grad - ref).abs().max().item()
            assert err <= 1e-5 * max(1.0, scale) + 1e-6, f"grad {name}: {err:.3g} (scale {scale:.3g})"
            checked += 1
        assert checked >= 10


@pytest.mark.parametrize("problem", ["regression", "single_label_classification", "multi_label_classification"])
def test_sequence_classification_losses(problem):
    cfg = CONFIGS["h64"]
    num_labels = 1 if problem == "regression" else 4
    ours, theirs = make_pair("BertForSequenceClassification", cfg, num_labels=num_labels)
    inputs = make_inputs("BertForSequenceClassification", cfg, batch=5, seqlen=9)
    if problem == "regression":
        inputs["labels"] = torch.randn(5)
    elif problem == "multi_label_classification":
        inputs["labels"] = (torch.rand(5, num_labels) < 0.5).float()
    else:
        inputs["labels"] = torch.randint(0, num_labels, (5,))
    a, b = ours(**inputs), theirs(**inputs)
    assert ours.config.problem_type == theirs.config.problem_type == problem
    compare_outputs(a, b)


def test_hidden_states_and_attentions_match():
    cfg = CONFIGS["h64"]
    ours, theirs = make_pair("BertModel", cfg)
    inputs = make_inputs("BertModel", cfg, batch=2, seqlen=11)
    a = ours(**inputs, output_hidden_states=True, output_attentions=True)
    b = theirs(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) == cfg["num_hidden_layers"] + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert (x - y).abs().max() <= 1e-5
    for x, y in zip(a.attentions, b.attentions):
        assert (x - y).abs().max() <= 1e-5


def test_output_objects_behave_like_transformers():
    cfg = CONFIGS["h64"]
    ours, theirs = make_pair("BertForSequenceClassification", cfg)
    inputs = make_inputs("BertForSequenceClassification", cfg, batch=2, seqlen=5)
    a = ours(**inputs)
    assert list(a.keys()) == ["loss", "logits"]
    assert a[0] is a.loss and a["logits"] is a.logits
    t = ours(**inputs, return_dict=False)
    assert isinstance(t, tuple) and len(t) == 2 and torch.equal(t[1], a.logits)
    no_labels = ours(input_ids=inputs["input_ids"])
    assert no_labels.loss is None and no_labels[0] is no_labels.logits


def test_tied_decoder_weights():
    model = fastbert.BertForMaskedLM(fastbert.BertConfig(**CONFIGS["h64"]))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def test_packed_inputs_match_padded():
    cfg = CONFIGS["h64"]
    model = fastbert.BertModel(fastbert.BertConfig(**cfg)).eval()
    lengths = [5, 1, 12]
    ids = torch.zeros(3, 12, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, cfg["vocab_size"], (n,))
    mask = (ids != 0).long()
    padded = model(ids, attention_mask=mask)
    flat = ids[mask.bool()]
    cu = torch.tensor([0, 5, 6, 18], dtype=torch.int32)
    packed = model(input_ids=flat, cu_seqlens=cu, max_seqlen=12)
    assert packed.last_hidden_state.shape == (18, cfg["hidden_size"])
    assert (packed.last_hidden_state - padded.last_hidden_state[mask.bool()]).abs().max() <= 1e-5
    assert (packed.pooler_output - padded.pooler_output).abs().max() <= 1e-5
