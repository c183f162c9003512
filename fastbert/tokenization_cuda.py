"""encode_packed on a GPU: words split by the C++ core on the CPU, LinMaxMatch in csrc/cuda/wordpiece.cu
(fastbert._C_cuda) over a device copy of the trie, compaction / truncation / special tokens with torch ops."""
from __future__ import annotations

import numpy as np

from .tokenization_outputs import BatchEncoding


def encode_packed_device(tok, texts, args, device, launch):
    """encode_packed with WordPiece on `device` (``args``: the call's resolved CallArgs): words from the C++ core
    (CPU), LinMaxMatch by `launch` (the CUDA kernel), compaction, truncation and special tokens with torch ops
    on the device."""
    import torch

    if args.truncation not in ("longest_first", "do_not_truncate"):
        raise ValueError(f"truncation={args.truncation!r}: encode_packed on a device supports True / False")
    max_length = args.max_length if args.truncation == "longest_first" else None
    specials = 2 if args.add_special_tokens else 0
    if max_length is not None and max_length < specials:
        raise ValueError(f"max_length={max_length} is smaller than the {specials} special tokens added to each "
                         "sequence")
    sw = tok._tok.split_words(texts)
    starts, fixed, raw = sw["starts"], sw["fixed"], sw["bytes"]
    nwords, ntexts = len(starts), len(texts)
    cap = np.maximum(np.diff(np.append(starts, len(raw))), 1)
    out_start = np.zeros(nwords, dtype=np.int64)
    if nwords:
        np.cumsum(cap[:-1], out=out_start[1:])
    total_cap = int(cap.sum())
    out_ids = torch.empty(max(total_cap, 1), dtype=torch.int32, device=device)
    out_count = torch.zeros(nwords, dtype=torch.int32, device=device)
    launch(tok, device, raw, starts, fixed, out_start, out_ids, out_count)
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    cap_d = torch.from_numpy(cap).to(device)
    word_of_slot = torch.repeat_interleave(ar(nwords), cap_d)
    keep = (ar(total_cap) - torch.from_numpy(out_start).to(device)[word_of_slot]) < out_count[word_of_slot]
    ids = out_ids[:total_cap][keep].long()                                    # (tokens,) word order
    words_per_text = torch.from_numpy(sw["words_per_text"]).to(device)
    text_of_word = torch.repeat_interleave(ar(ntexts), words_per_text)
    per_text = torch.zeros(ntexts, dtype=torch.int64, device=device).index_add_(0, text_of_word, out_count.long())
    text_of_tok = torch.repeat_interleave(ar(ntexts), per_text)
    first_tok = torch.cumsum(per_text, 0) - per_text
    pos = ar(ids.numel()) - first_tok[text_of_tok]
    if max_length is not None:
        limit = max_length - specials
        kept = pos < limit
        ids, text_of_tok, pos = ids[kept], text_of_tok[kept], pos[kept]
        per_text = per_text.clamp(max=limit)
    lengths = per_text + specials
    cu = torch.zeros(ntexts + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    total = int(cu[-1]) if ntexts else 0
    flat = torch.empty(total, dtype=torch.int64, device=device)
    flat[cu[:-1].long()[text_of_tok] + (1 if specials else 0) + pos] = ids
    if specials:
        flat[cu[:-1].long()] = tok._post_ids[0]
        flat[cu[1:].long() - 1] = tok._post_ids[1]
    return BatchEncoding({"input_ids": flat, "token_type_ids": torch.zeros_like(flat), "cu_seqlens": cu,
                          "max_seqlen": int(lengths.max()) if ntexts else 0})


def cuda_wordpiece_available() -> bool:
    """True when the CUDA WordPiece module (fastbert._C_cuda) is built and a GPU is visible."""
    try:
        import torch

        from . import _C_cuda  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _trie_on(tok: "BertTokenizer", device):
    import torch

    cache = tok.__dict__.setdefault("_device_tries", {})
    if device not in cache:
        t = tok._tok.trie_arrays()
        arrays = {k: torch.from_numpy(np.ascontiguousarray(t[k], dtype=np.int32)).to(device)
                  for k in ("nodes", "edge_bytes", "edge_child", "dense", "pops")}
        for k, v in arrays.items():  # never pass a null pointer
            if v.numel() == 0:
                arrays[k] = torch.full((1,), -1, dtype=torch.int32, device=device)
        cache[device] = (arrays, t["suffix_root"], t["dense_from"])
    return cache[device]


def launch_cuda(tok, device, raw, starts, fixed, out_start, out_ids, out_count):
    import torch

    from . import _C_cuda

    if len(starts) == 0:
        return
    arrays, suffix_root, dense_from = _trie_on(tok, device)
    raw_d = torch.from_numpy(raw if len(raw) else np.zeros(1, np.uint8)).to(device)
    starts_d = torch.from_numpy(starts).to(device)
    fixed_d = torch.from_numpy(fixed).to(device)
    out_start_d = torch.from_numpy(out_start).to(device)
    stream = torch.cuda.current_stream(device).cuda_stream
    _C_cuda.launch_wordpiece(raw_d.data_ptr(), starts_d.data_ptr(), fixed_d.data_ptr(), out_start_d.data_ptr(),
                             len(starts), len(raw), arrays["nodes"].data_ptr(), arrays["edge_bytes"].data_ptr(),
                             arrays["edge_child"].data_ptr(), arrays["dense"].data_ptr(), arrays["pops"].data_ptr(),
                             int(suffix_root), int(dense_from), int(tok._tok.unk_id), out_ids.data_ptr(),
                             out_count.data_ptr(), stream)
    torch.cuda.current_stream(device).synchronize()  # the host buffers above must outlive the kernel
