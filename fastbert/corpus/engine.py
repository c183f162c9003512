"""Embedding shards: the batches of a shard, and the local engine that overlaps everything with the model.

A shard's texts are embedded longest first, ``batch_size`` at a time (``length_sorted_batches``: the order
``SentenceEncoder.encode`` uses, within the shard), and the vectors put back in input order. Every engine
forms the same batches, so the local and the Ray engines give the same vectors for the same shard.

The local engine runs four stages on bounded queues, so that reading, tokenizing and writing overlap the
model and at most a few shards are in memory:

    reader thread   read_shard(shard)                          -> shards   (QUEUE_SHARDS)
    tokenizer       encoder.tokenize(batch) (C++, GIL released) -> batches  (QUEUE_BATCHES)
    this thread     encoder.embed_packed(batch) -> the shard's (N, H) array, filled in input order
    writer thread   write(shard rows, embeddings)               <- finished (QUEUE_WRITES)

An exception in any stage stops the others and is raised here.
"""
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, List

import numpy as np

from .plan import Shard, ShardRows

QUEUE_SHARDS, QUEUE_BATCHES, QUEUE_WRITES = 2, 8, 2
_DONE = object()


def length_sorted_batches(texts: List[str], batch_size: int) -> List[List[int]]:
    """Indices of ``texts`` in batches of ``batch_size``, longest first (fewer padded positions per batch)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def embed_texts(encoder, texts: List[str], batch_size: int, normalize: bool = True) -> np.ndarray:
    """(N, H) float32 embeddings of ``texts`` in their order, in ``length_sorted_batches``; the next batch is
    tokenized on a worker thread while the model runs this one."""
    out = np.empty((len(texts), encoder.get_sentence_embedding_dimension()), dtype=np.float32)
    batches = length_sorted_batches(texts, batch_size)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(encoder.tokenize, [texts[i] for i in idx]) for idx in batches[:1]]
        for j, idx in enumerate(batches):
            enc = pending.pop().result()
            if j + 1 < len(batches):
                pending.append(pool.submit(encoder.tokenize, [texts[i] for i in batches[j + 1]]))
            out[idx] = encoder.embed_packed(enc, normalize=normalize).cpu().numpy()
    return out


class LocalEngine:
    """The stages above, for one encoder in this process."""

    def __init__(self, encoder, batch_size: int, normalize: bool = True):
        self.encoder, self.batch_size, self.normalize = encoder, batch_size, normalize
        self._stop = threading.Event()
        self._error = None

    def run(self, shards: Iterable[Shard], read: Callable[[Shard], ShardRows],
            write: Callable[[ShardRows, np.ndarray], None], on_batch: Callable[[int], None] = lambda n: None):
        """Embed ``shards``: ``read`` each one, ``write`` its rows with their (N, H) embeddings, ``on_batch``
        after each batch with its size."""
        q_shards, q_batches, q_writes = (queue.Queue(n) for n in (QUEUE_SHARDS, QUEUE_BATCHES, QUEUE_WRITES))
        threads = [threading.Thread(target=self._guard, args=(fn, *a), daemon=True, name=f"fastbert-corpus-{name}")
                   for name, fn, a in (("reader", self._read, (shards, read, q_shards)),
                                       ("tokenizer", self._tokenize, (q_shards, q_batches)),
                                       ("writer", self._write, (q_writes, write)))]
        for t in threads:
            t.start()
        try:
            dim = self.encoder.get_sentence_embedding_dimension()
            while (item := self._get(q_batches)) is not _DONE:
                rows, idx, enc, out, last = item
                if idx:
                    out[idx] = self.encoder.embed_packed(enc, normalize=self.normalize).cpu().numpy()
                    on_batch(len(idx))
                if last:
                    self._put(q_writes, (rows, out if out is not None else np.empty((0, dim), np.float32)))
            self._put(q_writes, _DONE)
            threads[-1].join()
        finally:
            self._stop.set()
            for t in threads:
                t.join(timeout=5)
        if self._error is not None:
            raise self._error

    # ---- the stages
    def _guard(self, fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, which raises it
            if self._error is None:
                self._error = e
            self._stop.set()

    def _read(self, shards, read, q_out):
        for shard in shards:
            if not self._put(q_out, read(shard)):
                return
        self._put(q_out, _DONE)

    def _tokenize(self, q_in, q_out):
        dim = self.encoder.get_sentence_embedding_dimension()
        while (rows := self._get(q_in)) is not _DONE:
            batches = length_sorted_batches(rows.texts, self.batch_size)
            out = np.empty((len(rows.texts), dim), dtype=np.float32) if batches else None
            if not batches:  # every record of the shard was skipped: an empty shard is still written
                self._put(q_out, (rows, [], None, out, True))
            for j, idx in enumerate(batches):
                enc = self.encoder.tokenize([rows.texts[i] for i in idx])
                if not self._put(q_out, (rows, idx, enc, out, j == len(batches) - 1)):
                    return
        self._put(q_out, _DONE)

    def _write(self, q_in, write):
        while (item := self._get(q_in)) is not _DONE:
            write(*item)

    # ---- queues that give up when another stage failed
    def _put(self, q, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, q):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    if self._error is not None:
                        raise self._error
                    return _DONE
