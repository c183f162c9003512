"""The batcher alone (fastbert/serve/batching.py), with a stand-in encoder whose embedding of a sequence is
(sum of its ids, its length): FIFO order, the token budget, requests split over batches and reassembled,
a failed forward failing only its own requests."""
import asyncio
import random
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("prometheus_client")

from fastbert.serve.batching import Batcher  # noqa: E402
from fastbert.serve.metrics import Metrics  # noqa: E402


class StandIn:
    max_seq_length = 8

    def __init__(self, fail_on=None):
        self.batches, self.fail_on = [], fail_on

    def get_sentence_embedding_dimension(self):
        return 2

    def embed_packed(self, batch, normalize=None):
        assert normalize is False  # the routes normalise per request
        cu = batch["cu_seqlens"].tolist()
        seqs = [batch["input_ids"][a:b].tolist() for a, b in zip(cu, cu[1:])]
        assert batch["max_seqlen"] == max(map(len, seqs))
        self.batches.append(seqs)
        self.threads = getattr(self, "threads", set()) | {threading.get_ident()}
        if self.fail_on is not None and any(self.fail_on in s for s in seqs):
            raise RuntimeError("forward failed")
        return torch.tensor([[float(sum(s)), float(len(s))] for s in seqs])


def packed(seqs):
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu[1:])
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "cu_seqlens": cu,
            "max_seqlen": int(lengths.max())}


def random_requests(rng, n_requests):
    return [[[rng.randrange(1, 1000) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 9))]
            for _ in range(n_requests)]


@pytest.mark.parametrize("budget", [8, 13, 40, 41, 97])
def test_fifo_batches_within_budget_reassembled_in_order(budget):
    rng = random.Random(budget)
    requests = random_requests(rng, 12)
    encoder = StandIn()

    async def scenario():
        batcher = Batcher(encoder, budget, 10_000, Metrics())
        await batcher.start()
        # all requests queued before the batcher runs, then a second wave while it runs
        first = [asyncio.create_task(batcher.submit(packed(r))) for r in requests[:8]]
        await asyncio.sleep(0)
        second = [asyncio.create_task(batcher.submit(packed(r))) for r in requests[8:]]
        out = await asyncio.gather(*first, *second)
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    for seqs, emb in zip(requests, out):
        expect = torch.tensor([[float(sum(s)), float(len(s))] for s in seqs])
        assert torch.equal(emb, expect)
    flat = [s for r in requests for s in r]
    assert [s for b in encoder.batches for s in b] == flat  # FIFO: the batches are consecutive slices
    assert all(sum(map(len, b)) <= budget for b in encoder.batches)
    # greedy: a batch stops only where the next input would pass the budget (the queue never ran dry here:
    # the second wave is queued while the first batch runs)
    for b, nxt in zip(encoder.batches, encoder.batches[1:]):
        assert sum(map(len, b)) + len(nxt[0]) > budget
    if budget < 40:  # some request had more tokens than the budget: it was split, and reassembled above
        assert max(sum(map(len, r)) for r in requests) > budget


def test_failed_forward_fails_only_its_requests():
    encoder = StandIn(fail_on=666)

    async def scenario():
        batcher = Batcher(encoder, 8, 100, Metrics())
        await batcher.start()
        ok1 = asyncio.create_task(batcher.submit(packed([[1, 2, 3, 4, 5, 6, 7, 8]])))
        bad = asyncio.create_task(batcher.submit(packed([[666, 1]])))
        ok2 = asyncio.create_task(batcher.submit(packed([[5, 5, 5, 5, 5, 5, 5]])))
        results = await asyncio.gather(ok1, bad, ok2, return_exceptions=True)
        await batcher.stop()
        return results

    ok1, bad, ok2 = asyncio.run(scenario())
    assert torch.equal(ok1, torch.tensor([[36.0, 8.0]]))
    assert isinstance(bad, RuntimeError) and "forward failed" in str(bad)
    assert torch.equal(ok2, torch.tensor([[35.0, 7.0]]))


def test_permits_refuse_past_the_limit():
    batcher = Batcher(StandIn(), 8, 10, Metrics())
    assert batcher.try_acquire(6) and not batcher.try_acquire(5) and batcher.try_acquire(4)
    assert not batcher.try_acquire(1)
    batcher.release(6)
    assert batcher.try_acquire(6)


def test_budget_below_max_seq_length_is_refused():
    with pytest.raises(ValueError, match="max_batch_tokens \\(7\\) must be at least the model's max_seq_length"):
        Batcher(StandIn(), 7, 10, Metrics())


def test_finish_matches_torch_normalize():
    """The answer's rows (numpy, off torch's thread pool) equal torch's cut-then-normalize, zero rows included."""
    from fastbert.serve.schemas import finish

    pooled = torch.randn(5, 48) * torch.rand(5, 1) * 10
    pooled[2] = 0
    for dims in (None, 17):
        want = pooled if dims is None else pooled[:, :dims]
        got = finish(pooled, True, dims)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, torch.nn.functional.normalize(want, dim=-1).numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(finish(pooled, False, dims), want.numpy())


def test_forwards_run_on_the_given_model_thread():
    """Every forward runs on the thread the model was loaded on (``model_thread()``), none elsewhere."""
    from fastbert.serve.batching import model_thread

    thread = model_thread()
    loaded_on = thread.submit(threading.get_ident).result()
    encoder = StandIn()

    async def scenario():
        batcher = Batcher(encoder, 8, 100, Metrics(), thread)
        await batcher.start()
        outs = await asyncio.gather(*[batcher.submit(packed(r)) for r in random_requests(random.Random(0), 6)])
        await batcher.stop()
        return outs

    assert len(asyncio.run(scenario())) == 6
    assert encoder.threads == {loaded_on}
