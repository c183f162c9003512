"""CUDA-graph inference (fastbert/cuda_graphs.py): the bucket plan, the bucketed packed forward (dummy and
empty sequences must not change a real token's output: checked on CPU under the Triton interpreter, no
capture), and on a GPU capture + replay against the eager model."""
import pytest
import torch

from conftest import HAS_CUDA
from fastbert import BertConfig, BertModel
from fastbert.cuda_graphs import BucketPlan, GraphedBertModel, run_bucketed


def test_bucket_plan():
    p = BucketPlan(total=100, batch=3, max_seqlen=50)
    assert p.key == (128, 4, 64) and p.dummies == 1
    cu = p.cu_seqlens(torch.tensor([0, 50, 80, 100]))
    assert cu.tolist() == [0, 50, 80, 100, 128]  # one dummy of 28 tokens
    p = BucketPlan(total=65, batch=1, max_seqlen=65)  # 63 padding tokens in one dummy of <= 128
    assert p.key == (128, 2, 128) and p.cu_seqlens(torch.tensor([0, 65])).tolist() == [0, 65, 128]
    p = BucketPlan(total=20, batch=2, max_seqlen=10)  # 44 padding tokens, dummies of <= 16: three of them
    assert p.key == (64, 8, 16) and p.cu_seqlens(torch.tensor([0, 10, 20])).tolist() == [0, 10, 20, 36, 52, 64,
                                                                                          64, 64, 64]
    assert BucketPlan(64, 1, 64).dummies == 0
    with pytest.raises(ValueError, match="token bucket"):
        BucketPlan(300, 2, 150, token_buckets=[128, 256])


@pytest.mark.parametrize("lengths", [[7, 12, 3], [33], [5] * 9])
def test_bucketed_forward_equals_the_model(lengths, device):
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64, backend="triton")).to(device).eval()
    T = sum(lengths)
    ids = torch.randint(0, 99, (T,), device=device)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    with torch.no_grad():
        want = model(input_ids=ids, cu_seqlens=cu, max_seqlen=max(lengths))
        hidden, pooled, plan = run_bucketed(model, ids, cu, max(lengths))
    assert plan.tokens > T  # the batch really was padded with dummy tokens
    torch.testing.assert_close(hidden, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, want.pooler_output, rtol=1e-5, atol=1e-5)


def test_needs_cuda_and_eval():
    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64))
    with pytest.raises(ValueError, match="eval"):
        GraphedBertModel(model.train())
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="CUDA device"):
            GraphedBertModel(model.eval())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_capture_and_replay_match_eager():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                                 intermediate_size=1536)).cuda().half().eval()
    graphed = GraphedBertModel(model)
    for lengths in ([7, 12, 3], [9, 11, 4], [100, 5], [128] * 8):  # same bucket twice, then others
        T = sum(lengths)
        ids = torch.randint(0, 30522, (T,))
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        got = graphed(ids, cu, max(lengths))
        with torch.no_grad():
            want = model(input_ids=ids.cuda(), cu_seqlens=cu.cuda(), max_seqlen=max(lengths))
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=2e-2, atol=2e-2)
    assert len(graphed.graphs) == 3
    ids = torch.randint(0, 30522, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    got = graphed(ids, attention_mask=mask)
    with torch.no_grad():
        want = model(input_ids=ids.cuda(), attention_mask=mask.cuda())
    real = mask.bool().cuda()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], rtol=2e-2, atol=2e-2)
