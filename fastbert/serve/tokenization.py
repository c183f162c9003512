"""Tokenization off the event loop: the encoder's own ``tokenize`` (packed, lower-cased and truncated as its
pipeline says) on a small thread pool (the C++ tokenizer releases the GIL), plus token-id inputs packed as
they are and TEI's ``/tokenize`` listing."""
import asyncio
import copy
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .batching import packed_batch
from .schemas import invalid


class Tokenization:
    def __init__(self, encoder, workers: int, metrics):
        self.encoder, self.metrics = encoder, metrics
        # Left truncation (TEI's truncation_direction=Left): the same encoder with a tokenizer whose
        # truncation_side is "left" (a shallow copy: the C++ core, vocabulary and model are shared).
        self._left = copy.copy(encoder)
        self._left.tokenizer = copy.copy(encoder.tokenizer)
        self._left.tokenizer.truncation_side = "left"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastbert-tokenize")

    async def packed(self, inputs, truncate: bool, direction: str):
        """One packed batch of ``inputs`` (texts and token-id lists) in their order."""
        t0 = time.perf_counter()
        enc = await asyncio.get_running_loop().run_in_executor(self._pool, self._packed, inputs, truncate, direction)
        self.metrics.tokenization_duration.observe(time.perf_counter() - t0)
        return enc

    def _packed(self, inputs, truncate, direction):
        limit = self.encoder.max_seq_length
        where = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        texts = None
        if where:
            encoder = self._left if direction == "left" else self.encoder
            try:
                texts = encoder.tokenize([inputs[i] for i in where], truncation=truncate)
            except ValueError as e:
                bad = None if truncate else next((i for i in where if not self._fits(encoder, inputs[i])), None)
                if bad is None:
                    raise invalid(f"cannot tokenize the input: {e}") from None
                raise invalid(f"input {bad} is longer than this model's max_seq_length ({limit} tokens) and 'truncate' "
                              "is false; send 'truncate': true to cut it there, or shorten it") from None
            if len(where) == len(inputs):
                return texts
        for i, x in enumerate(inputs):
            if not isinstance(x, str) and len(x) > limit:
                raise invalid(f"input {i} is {len(x)} token ids long, more than this model's max_seq_length ({limit}); "
                              "token ids are never truncated: shorten the list")
        # Mixed or token ids only: lay every input's tokens end to end in input order.
        rows, k = [], 0
        for x in inputs:
            if isinstance(x, str):
                a, b = int(texts["cu_seqlens"][k]), int(texts["cu_seqlens"][k + 1])
                rows.append((texts["input_ids"][a:b], texts["token_type_ids"][a:b]))
                k += 1
            else:
                ids = torch.tensor(x, dtype=torch.int64)
                rows.append((ids, torch.zeros_like(ids)))
        return packed_batch([r[0] for r in rows], [r[1] for r in rows])

    @staticmethod
    def _fits(encoder, text):
        try:
            encoder.tokenize([text], truncation=False)
            return True
        except ValueError:
            return False

    async def tokens(self, texts, add_special_tokens: bool):
        """TEI's /tokenize answer: per text, its tokens as ``{id, text, special, start, stop}`` (``start``/
        ``stop``: character offsets into the text, null for special tokens)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._tokens, texts, add_special_tokens)

    def _tokens(self, texts, add_special_tokens):
        tok = self.encoder.tokenizer
        model_texts = [t.lower() for t in texts] if self.encoder.spec["do_lower_case"] else texts
        enc = tok(model_texts, add_special_tokens=add_special_tokens, truncation=False,
                  return_offsets_mapping=True, return_special_tokens_mask=True)
        out = []
        for text, ids, offsets, special in zip(texts, enc["input_ids"], enc["offset_mapping"],
                                               enc["special_tokens_mask"]):
            names = tok.convert_ids_to_tokens(ids)
            out.append([{"id": i, "text": name, "special": True, "start": None, "stop": None} if s else
                        {"id": i, "text": text[a:b], "special": False, "start": a, "stop": b}
                        for i, name, (a, b), s in zip(ids, names, offsets, special)])
        return out

    def close(self):
        self._pool.shutdown(wait=True)
