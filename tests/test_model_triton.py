"""The whole model on the Triton backend (fused attention, residual+LayerNorm, bias+GELU) vs the PyTorch
backend: padded and unpadded, forward and backward. On CPU the kernels run under the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so the config is tiny and the dtype fp32 (the interpreter's
bf16 dot is wrong); on a GPU the same tests run compiled."""
import copy

import pytest
import torch

import fastbert
from fastbert import BertConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(**kw):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=101,
                max_position_embeddings=48, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return BertConfig(**base)


def random_batch(cfg, lengths, seqlen, device):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    ids = torch.randint(1, cfg.vocab_size, (len(lengths), seqlen), generator=gen)
    mask = (torch.arange(seqlen)[None] < torch.tensor(lengths)[:, None]).long()
    types = torch.randint(0, 2, ids.shape, generator=gen) * mask
    return dict(input_ids=(ids * mask).to(device), attention_mask=mask.to(device), token_type_ids=types.to(device))


def two_backends(head, cfg, device, unpad):
    torch.manual_seed(torch.seed() % 2**31)
    ref = getattr(fastbert, head)(copy.deepcopy(cfg)).to(device)
    ref.config.backend = "torch"
    fused = copy.deepcopy(ref)
    fused.config.backend = "triton"
    fused.config.unpad = unpad
    return ref, fused


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_triton_backend_matches_torch_backend(unpad, hidden_act, device):
    cfg = tiny(hidden_act=hidden_act)
    ref, fused = two_backends("BertForPreTraining", cfg, device, unpad)
    batch = random_batch(cfg, lengths=[17, 5, 1], seqlen=17, device=device)
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    nsp = torch.tensor([0, 1, 1], device=device)
    out_ref = ref(**batch, labels=labels, next_sentence_label=nsp)
    out = fused(**batch, labels=labels, next_sentence_label=nsp)

    valid = batch["attention_mask"].bool()
    # Padded positions are not part of the contract (zeros when unpadded): compare real tokens.
    err = (out.prediction_logits[valid] - out_ref.prediction_logits[valid]).abs().max().item()
    assert err <= 1e-4, f"prediction logits differ by {err}"
    assert (out.seq_relationship_logits - out_ref.seq_relationship_logits).abs().max() <= 1e-4
    assert abs(out.loss.item() - out_ref.loss.item()) <= 1e-4

    out.loss.backward()
    out_ref.loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        g_ref = ref_grads[name].grad
        assert p.grad is not None and g_ref is not None, name
        scale = g_ref.abs().max().item()
        err = (p.grad - g_ref).abs().max().item()
        assert err <= 1e-4 * max(scale, 1.0), f"grad {name}: {err:.3g} (scale {scale:.3g})"


def test_triton_backend_packed_inputs(device):
    """The tokenizer's packed form (flat ids + cu_seqlens) runs straight through the unpadded encoder."""
    cfg = tiny()
    ref, fused = two_backends("BertModel", cfg, device, unpad=True)
    lengths = [9, 1, 14]
    batch = random_batch(cfg, lengths, seqlen=14, device=device)
    valid = batch["attention_mask"].bool()
    cu = torch.tensor([0, 9, 10, 24], dtype=torch.int32, device=device)
    with torch.no_grad():
        padded = ref(**batch)
        packed = fused(input_ids=batch["input_ids"][valid], token_type_ids=batch["token_type_ids"][valid],
                       cu_seqlens=cu, max_seqlen=14)
    assert packed.last_hidden_state.shape == (24, cfg.hidden_size)
    assert (packed.last_hidden_state - padded.last_hidden_state[valid]).abs().max() <= 1e-4
    assert (packed.pooler_output - padded.pooler_output).abs().max() <= 1e-4


def test_unpadded_output_is_zero_at_padding(device):
    cfg = tiny()
    _, fused = two_backends("BertModel", cfg, device, unpad=True)
    batch = random_batch(cfg, lengths=[6, 3], seqlen=6, device=device)
    with torch.no_grad():
        out = fused(**batch).last_hidden_state
    assert torch.all(out[~batch["attention_mask"].bool()] == 0)
    assert torch.isfinite(out).all()


def test_minilm_on_triton_backend(minilm_dir, device):
    """The real checkpoint: sentence embeddings from the fused path equal the PyTorch path's."""
    ref = fastbert.BertModel.from_pretrained(minilm_dir, add_pooling_layer=False, backend="torch").to(device)
    fused = fastbert.BertModel.from_pretrained(minilm_dir, add_pooling_layer=False, backend="triton").to(device)
    batch = random_batch(ref.config, lengths=[11, 4], seqlen=11, device=device)
    batch["input_ids"] = batch["input_ids"] % 30000 + 100  # real word pieces, clear of the special tokens
    batch["input_ids"] *= batch["attention_mask"]
    with torch.no_grad():
        a = fastbert.mean_pooling(ref(**batch).last_hidden_state, batch["attention_mask"])
        b = fastbert.mean_pooling(fused(**batch).last_hidden_state, batch["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min().item() >= 0.99999
    assert (a - b).abs().max().item() <= 1e-4
