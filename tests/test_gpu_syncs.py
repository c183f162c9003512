"""On a GPU: the Triton-path forward synchronises with the host exactly once (torch's sync debug mode warns on
every synchronising call), the backward never, and host-known packed inputs not at all."""
import warnings

import pytest
import torch

from conftest import HAS_CUDA
from fastbert import BertConfig, BertModel

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")


def _syncs(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]


def test_syncs_per_forward_and_backward():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=256, backend="triton")).cuda()
    ids = torch.randint(0, 1000, (4, 37), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    model.train()
    model(input_ids=ids, attention_mask=mask)  # warm-up: autotuning syncs
    out = {}
    fwd = _syncs(lambda: out.update(h=model(input_ids=ids, attention_mask=mask).last_hidden_state))
    bwd = _syncs(lambda: out["h"].float().pow(2).sum().backward())
    assert len(fwd) == 1, fwd
    assert bwd == [], bwd
    model.eval()
    cu = torch.tensor([0, 30, 37, 80], dtype=torch.int32)
    host_ids = torch.randint(0, 1000, (80,))
    with torch.no_grad():
        model(input_ids=host_ids, cu_seqlens=cu, max_seqlen=43)
        packed = _syncs(lambda: model(input_ids=host_ids, cu_seqlens=cu, max_seqlen=43))
    assert packed == [], packed
