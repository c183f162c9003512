"""Dynamic batching as text-embeddings-inference does it, packed.

Routes take permits (one per input, 429 at once when too few are free), tokenize on a worker thread, and
``submit`` the packed tokens. The queue is FIFO and holds single inputs: one asyncio task takes inputs from its
head up to ``max_batch_tokens`` tokens whenever the model is free (so the next batch is whatever arrived while
the current one ran), lays them end to end in one packed batch (no padding) and runs the encoder's
``embed_packed`` on the single model thread (torch releases the GIL: the event loop keeps serving meanwhile).
A request with more tokens than the budget is split over consecutive batches and reassembled in its order.

The model thread is the only thread that runs the model's torch work, and ``fastbert serve`` loads the model on
it too (``model_thread()``): torch's OpenMP runtime (libgomp) gives each thread that opens a parallel region a
team of its own, and once the teams hold more threads than there are CPUs it stops spin-waiting between
regions; every op then pays for waking its team. On 2 cores a forward ran 1.6x slower after a second thread
had run the model once (MiniLM, bf16, batches of 16). What the other threads do with tensors stays below
torch's parallel grain (tokenization's small tensors, one row copied per input) or uses numpy.
"""
import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import torch


class _Job:
    """One request's inputs: their packed tokens, the (B, H) result filled row by row, and its future."""
    __slots__ = ("enc", "out", "future", "remaining")

    def __init__(self, enc, hidden_size, future):
        self.enc, self.future = enc, future
        self.remaining = enc["cu_seqlens"].numel() - 1
        self.out = torch.empty(self.remaining, hidden_size)


class _Entry:
    """One input of a job: row ``row``, ``start:stop`` of its job's packed tokens."""
    __slots__ = ("job", "row", "start", "stop", "enqueued")

    def __init__(self, job, row, start, stop, enqueued):
        self.job, self.row, self.start, self.stop, self.enqueued = job, row, start, stop, enqueued


def packed_batch(ids: List[torch.Tensor], type_ids: List[torch.Tensor]):
    """Sequences laid end to end: ``embed_packed``'s input (input_ids, token_type_ids, cu_seqlens, max_seqlen)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int32)
    cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu[1:])
    return {"input_ids": torch.cat(ids), "token_type_ids": torch.cat(type_ids), "cu_seqlens": cu,
            "max_seqlen": int(lengths.max())}


def pack(entries: List[_Entry]):
    """One packed batch of the entries' tokens, in their order."""
    return packed_batch([e.job.enc["input_ids"][e.start:e.stop] for e in entries],
                        [e.job.enc["token_type_ids"][e.start:e.stop] for e in entries])


def model_thread() -> ThreadPoolExecutor:
    """The one thread that runs the model (load it there too: ``model_thread().submit(SentenceEncoder, ...)``)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastbert-model")


class Batcher:
    """The queue, its permits and the batching task. ``start``/``stop`` run in the app's lifespan. ``thread``:
    the model's thread (``model_thread()``, the one the model was loaded on); a new one when not given."""

    def __init__(self, encoder, max_batch_tokens: int, max_concurrent: int, metrics,
                 thread: Optional[ThreadPoolExecutor] = None):
        if max_batch_tokens < encoder.max_seq_length:
            raise ValueError(f"max_batch_tokens ({max_batch_tokens}) must be at least the model's max_seq_length "
                             f"({encoder.max_seq_length}), so that every input fits in one batch")
        self.encoder, self.max_batch_tokens, self.max_concurrent = encoder, max_batch_tokens, max_concurrent
        self.metrics = metrics
        self.hidden_size = encoder.get_sentence_embedding_dimension()
        self._queue = collections.deque()
        self._in_flight = 0
        self._busy = False  # a batch is on the model thread
        self._task = None
        self._model_thread = thread
        self._wakeup = None

    # ---- permits: admission control -----------------------------------------------------------------
    def try_acquire(self, n: int) -> bool:
        """Takes ``n`` permits if that many are free (never waits: the caller answers 429 otherwise)."""
        if self._in_flight + n > self.max_concurrent:
            return False
        self._in_flight += n
        self.metrics.in_flight.set(self._in_flight)
        return True

    def release(self, n: int):
        self._in_flight -= n
        self.metrics.in_flight.set(self._in_flight)

    # ---- the queue -----------------------------------------------------------------------------------
    async def submit(self, enc) -> torch.Tensor:
        """(B, H) float32 pooled embeddings (the pipeline's Normalize not applied) of one packed batch of
        inputs, in its order, once every input has been through a batch."""
        job = _Job(enc, self.hidden_size, asyncio.get_running_loop().create_future())
        if job.remaining == 0:
            return job.out
        cu, now = enc["cu_seqlens"].tolist(), time.perf_counter()
        self._queue.extend(_Entry(job, i, cu[i], cu[i + 1], now) for i in range(job.remaining))
        self.metrics.queue_size.set(len(self._queue))
        self._wakeup.set()
        return await job.future

    def _take(self) -> List[_Entry]:
        """Inputs from the head of the queue up to the token budget (at least one: an input never passes the
        budget, which is at least max_seq_length)."""
        first = self._queue.popleft()
        entries, tokens = [first], first.stop - first.start
        while self._queue and tokens + (self._queue[0].stop - self._queue[0].start) <= self.max_batch_tokens:
            e = self._queue.popleft()
            tokens += e.stop - e.start
            entries.append(e)
        self.metrics.queue_size.set(len(self._queue))
        return entries

    def _forward(self, entries):
        """On the model thread: pack, forward, pool."""
        t0 = time.perf_counter()
        batch = pack(entries)
        emb = self.encoder.embed_packed(batch, normalize=False).cpu()
        self.metrics.inference_duration.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch_tokens.observe(int(batch["cu_seqlens"][-1]))
        return emb

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            entries = self._take()
            now = time.perf_counter()
            for e in entries:
                self.metrics.queue_duration.observe(now - e.enqueued)
            self._busy = True
            try:
                emb = await loop.run_in_executor(self._model_thread, self._forward, entries)
            except Exception as exc:  # a failed forward fails the requests it held, never the batcher
                for e in entries:
                    if not e.job.future.done():
                        e.job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            for i, e in enumerate(entries):
                job = e.job
                job.out[e.row] = emb[i]
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    job.future.set_result(job.out)

    async def start(self):
        self._wakeup = asyncio.Event()
        if self._model_thread is None:
            self._model_thread = model_thread()
        self._task = asyncio.create_task(self._run(), name="fastbert-batcher")

    async def stop(self):
        """After the server has finished its requests: waits for anything still queued, then stops."""
        while self._queue or self._busy:
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._model_thread.shutdown(wait=True)
