"""Attention masks as Hugging Face reads them, checked against transformers' BertModel (fp32, CPU, eager):
2-D 0/1 masks, HF's extended (B, 1, 1, S) masks (bool and additive), 3-D (B, S, S) masks and general 4-D
(B, 1 or heads, S, S) masks; on the Triton backend key-padding masks run the kernels, general masks fall back
to the PyTorch path with one warning; a head dim the kernel cannot take falls back too."""
import warnings

import pytest
import torch

import fastbert
from conftest import HAS_CUDA
from hf_twin import hf_twin
from fastbert._warnings import WARNED as _WARNED

CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99,
           max_position_embeddings=32)


def _pair(backend="torch", **cfg):
    if backend == "triton" and HAS_CUDA:
        pytest.skip("CPU models on the Triton backend need the interpreter (CPU machines)")
    config = fastbert.BertConfig(**{**CFG, **cfg}, backend=backend)
    ours = fastbert.BertModel(config).eval()
    return ours, hf_twin(ours)


def _key_mask(B=3, S=9):
    m = torch.ones(B, S, dtype=torch.long)
    m[0, 6:] = 0
    m[2, 3:] = 0
    return m


def _additive(keep: torch.Tensor) -> torch.Tensor:
    return (1.0 - keep.float()) * torch.finfo(torch.float32).min


def _same_on_real_tokens(ours, theirs, keep2d):
    real = keep2d.bool()
    torch.testing.assert_close(ours.last_hidden_state[real], theirs.last_hidden_state[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("form", ["2d", "2d-float", "4d-bool", "4d-additive", "4d-inf"])
def test_key_padding_masks(form, backend):
    ours, theirs = _pair(backend)
    ids = torch.randint(0, 99, (3, 9))
    keep = _key_mask()
    mask = {"2d": keep, "2d-float": keep.float(), "4d-bool": keep.bool()[:, None, None, :],
            "4d-additive": _additive(keep)[:, None, None, :],
            "4d-inf": torch.where(keep.bool(), 0.0, float("-inf"))[:, None, None, :]}[form]
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask)
        b = theirs(input_ids=ids, attention_mask=keep)
    _same_on_real_tokens(a, b, keep)


@pytest.mark.parametrize("form", ["3d", "4d-bool", "4d-additive-heads", "4d-soft-bias"])
def test_general_masks_match_hf_and_fall_back_once(form):
    ours, theirs = _pair("triton")
    B, S = 2, 8
    ids = torch.randint(0, 99, (B, S))
    keep = torch.rand(B, S, S) < 0.6
    keep |= torch.eye(S, dtype=torch.bool)  # every query sees at least itself
    if form == "3d":
        mask = keep.long()
    elif form == "4d-bool":
        mask = keep[:, None]
    elif form == "4d-additive-heads":
        keep = keep[:, None].expand(B, 2, S, S).clone()
        keep[:, 1] = torch.eye(S, dtype=torch.bool)  # head 1 sees only itself
        mask = _additive(keep)
    else:
        mask = torch.randn(B, 1, 1, S)  # an additive bias, not a mask: the general path
    hf_mask = mask.float() if form == "4d-soft-bias" else _additive(keep if keep.dim() == 4 else keep[:, None])
    _WARNED.discard("general-mask")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            a = ours(input_ids=ids, attention_mask=mask)
            ours(input_ids=ids, attention_mask=mask)
    assert sum("PyTorch path" in str(w.message) for w in caught) == 1
    with torch.no_grad():
        b = theirs(input_ids=ids, attention_mask=hf_mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_bad_mask_shape_raises():
    ours, _ = _pair()
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ours(input_ids=torch.randint(0, 99, (2, 5)), attention_mask=torch.ones(2, 1, 5))


def test_unsupported_head_dim_falls_back_with_one_warning():
    ours, theirs = _pair("triton", hidden_size=36, num_attention_heads=3)  # head_dim 12: not a multiple of 8
    ids, keep = torch.randint(0, 99, (3, 9)), _key_mask()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            a = ours(input_ids=ids, attention_mask=keep)
    assert sum("head_dim=12" in str(w.message) for w in caught) == 1
    with torch.no_grad():
        b = theirs(input_ids=ids, attention_mask=keep)
    _same_on_real_tokens(a, b, keep)


def test_integer_extended_mask_is_a_clear_error():
    """HF's SDPA path rejects an integer (B, 1, 1, S) mask and its eager path adds it to the scores (a silent
    wrong answer): fastbert says what to pass instead."""
    ours, _ = _pair()
    mask = torch.ones(2, 1, 1, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="bool .True = attend. or additive float"):
        ours(input_ids=torch.randint(0, 99, (2, 5)), attention_mask=mask)
