"""FlashAttention-2 for BERT in Triton: forward (online softmax, saves the log-sum-exp) and backward.

What BERT needs and the Triton tutorial kernel lacks: non-causal (and causal) attention, key-padding masks,
any sequence length, head dims that are any multiple of 8 up to 256, fp16 / bf16 / fp32, dropout, and
packed variable-length batches (no work spent on padding).

Layouts (the last dim must be contiguous; token and head strides are free, so q/k/v can be views of one
fused QKV projection):
  padded  q, k, v, out: (batch, seqlen, heads, head_dim); key_padding_mask (batch, seqlen), True = real token
  packed  q, k, v, out: (total_tokens, heads, head_dim); cu_seqlens (batch + 1,) int32; max_seqlen int
Both are addressed the same way: token ``t`` of sequence ``b``, head ``h`` lives at ``b * stride_b + (tok0 + t)
* stride_t + h * stride_h`` where padded has ``tok0 = 0`` and packed has ``stride_b = 0, tok0 = cu_seqlens[b]``
(``_head_offset``: each program computes its (sequence, head) start once per tensor).

Log-sum-exp (natural log, fp32): padded (batch, heads, seqlen), packed (heads, total_tokens). Rows with no
key at all (every key masked) output zeros and store ``lse = +inf`` so the backward gives them zero weight.

Dropout: element (b, h, i, j) is kept iff its uniform draw is >= p: Philox keyed by ``seed * 2**32 + b * heads
+ h`` at counter ``i * ceil(max_seqlen / 4) + j // 4``, output ``j % 4`` (one Philox call per four scores);
the seed is an int64 on the device, drawn by torch's generator there (no host read; CUDA-graph replays
draw new masks). Kept weights are scaled by 1 / (1 - p). The backward regenerates the same mask.

Backward: a small kernel computes ``delta = rowsum(dO * O)``; one program per key block then loops over the
query blocks for dK, dV. dQ is either accumulated in the same kernel with relaxed fp32 atomics (default: 5
matmuls per tile pair; ``sem="relaxed"`` compiles to plain ``RED`` reductions with no memory fences, where the
default acq_rel wraps each in fences; the order of the adds makes dQ not bitwise reproducible on a GPU) or, with
``deterministic=True``, computed by a second kernel, one program per query block looping over the key blocks
(no atomics; recomputes QK^T and dP: 7 matmuls per tile pair).

fp32 inputs run every dot with ``input_precision="ieee"`` unless ``torch.backends.cuda.matmul.allow_tf32``
is set, then tf32 (exact fp32 is slow on tensor cores: use
fp16/bf16 for speed). fp16/bf16 dots accumulate in fp32; softmax statistics are always fp32.

On CUDA the block sizes are autotuned, keyed on head dim, the power of two above max_seqlen, the power of
two above batch x heads (so a pick made at batch 1 is not reused at batch 256) and the causal / packed /
mask / dropout flags (results cached on disk by Triton); ``FASTBERT_AUTOTUNE=0`` launches the first config the
autotuner would consider instead (fast start-up, the tests); under ``TRITON_INTERPRET=1``
(CPU, CI) every kernel is launched with one fixed, small config. The launchers are also registered as
``torch.ops.fastbert.attention_fwd`` / ``attention_bwd`` (with fake implementations for torch.compile).
"""
import contextlib
import functools
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..ops._dispatch import interpret_mode
from ._common import autotune_enabled, launch

# constexpr: readable inside the kernels (Triton takes no other globals); ``.value`` on the host
LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2) = 1 / LOG2E


# ----------------------------------------------------------------------------------------------- helpers


@triton.jit
def _load_rows(ptrs, row_mask, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, zeros on ragged rows and on the head-dim padding."""
    if BLOCK_D == HEAD_DIM:
        x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=row_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return x


@triton.jit
def _load_full(ptrs, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile whose rows are all in range (zeros on the head-dim padding only)."""
    if BLOCK_D == HEAD_DIM:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, row_mask, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, x, mask=row_mask[:, None])
    else:
        tl.store(ptrs, x, mask=row_mask[:, None] & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _head_offset(off_b, tok0, off_h, stride_b, stride_t, stride_h):
    """Offset (int64) of sequence off_b's first token, head off_h: padded ``tok0 = 0``, packed ``stride_b = 0``.
    For the (B, H, S) / (H, T) log-sum-exp and delta buffers the token stride is 1. (Summed batch, head, token:
    in this order the sm_90 compile of the forward keeps its register count, 213 at d64 packed 128x64.)"""
    return off_b.to(tl.int64) * stride_b + off_h * stride_h + tok0 * stride_t


@triton.jit
def _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN: tl.constexpr):
    """(first token of sequence off_b in the token dim, its length)."""
    if VARLEN:
        start = tl.load(CU_SEQLENS + off_b)
        end = tl.load(CU_SEQLENS + off_b + 1)
        tok0 = start.to(tl.int64)
        seqlen = end - start
    else:
        tok0 = tl.zeros([], tl.int64)
        seqlen = SEQLEN + tl.zeros([], tl.int32)
    return tok0, seqlen


@triton.jit
def _dropout_keep(SEED, off_b, off_h, H, offs_m, offs_n, SEQLEN, dropout_p, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Boolean keep-mask for scores (offs_m, offs_n) of (off_b, off_h); (offs_n, offs_m) if TRANSPOSED.

    The seed is read from device memory (``SEED``, drawn by torch's generator on the device: no host read,
    and a CUDA graph replay draws a new one). One Philox key per (call, batch, head): seed in the high 32
    bits, b * H + h in the low ones. One Philox call gives four 32-bit numbers: they serve four consecutive
    keys j of query i (counter i * ceil(max_seqlen / 4) + j // 4), a quarter of the Philox rounds of one call
    per score. ``offs_n`` must be BLOCK_N consecutive keys starting at a multiple of 4. Forward and backward
    draw the same numbers.
    """
    seed = tl.load(SEED)
    key = seed.to(tl.int64) * 4294967296 + (off_b * H + off_h).to(tl.int64)
    groups = (SEQLEN + 3) // 4
    first = tl.min(offs_n, 0) // 4
    counter = offs_m[:, None] * groups + first + tl.arange(0, BLOCK_N // 4)[None, :]  # (BLOCK_M, BLOCK_N // 4)
    r0, r1, r2, r3 = tl.randint4x(key, counter)
    bits = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BLOCK_M, BLOCK_N))  # key j -> r_{j % 4}
    keep = tl.random.uint_to_uniform_float(bits) >= dropout_p
    if TRANSPOSED:
        keep = tl.trans(keep)
    return keep


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt, lo, hi, kv_len,
                    offs_m, offs_n, offs_d, qk_scale, dropout_p, SEED, off_b, off_h, H, SEQLEN,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                    DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """Online softmax over key blocks [lo, hi). MASKED=False: every key in range is real and visible."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        n_valid = cols < kv_len
        k_ptrs = k_base + cols[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + cols[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            k = _load_rows(k_ptrs, n_valid, offs_d, HEAD_DIM, BLOCK_D)
        else:
            k = _load_full(k_ptrs, offs_d, HEAD_DIM, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            valid = n_valid[None, :]
            if HAS_MASK:
                keep_k = tl.load(keep_base + cols, mask=n_valid, other=0)
                valid = valid & (keep_k != 0)[None, :]
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(valid, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no -inf - -inf
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = m_new
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_keep(SEED, off_b, off_h, H, offs_m, cols, SEQLEN, dropout_p, BLOCK_M, BLOCK_N, False)
            p = tl.where(keep, p, 0.0)
        if MASKED:
            v = _load_rows(v_ptrs, n_valid, offs_d, HEAD_DIM, BLOCK_D)
        else:
            v = _load_full(v_ptrs, offs_d, HEAD_DIM, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V,  # pointers to the inputs, padded (B, S, H, D) or packed (T, H, D)
    O,  # pointer to the output, same layout as Q (contiguous)
    LSE,  # pointer to the fp32 log-sum-exp, (B, H, S) or (H, T)
    KEEP,  # pointer to the int8 key mask (B, S), 1 = real token (read only when HAS_MASK)
    KV_LEN,  # pointer to int32 (B,): every key at or after KV_LEN[b] is masked (read only when HAS_MASK)
    CU_SEQLENS,  # pointer to int32 (B + 1,) cumulative sequence lengths (read only when VARLEN)
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh,
    stride_mb,
    H,  # number of heads
    SEQLEN,  # padded: seqlen; packed: max_seqlen
    qk_scale,  # softmax_scale * log2(e)
    dropout_p,
    SEED,  # pointer to the int64 dropout seed (read only when DROPOUT)
    SEQ_BUCKET,  # next power of two >= SEQLEN: an autotuning key only
    WORK_BUCKET,  # next power of two >= batch * heads: an autotuning key only (configs differ by occupancy)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    tok0, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_m * BLOCK_M >= seqlen:
        return
    kv_len = seqlen
    if HAS_MASK:
        kv_len = tl.load(KV_LEN + off_b)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    q_base = Q + _head_offset(off_b, tok0, off_h, stride_qb, stride_qt, stride_qh)
    k_base = K + _head_offset(off_b, tok0, off_h, stride_kb, stride_kt, stride_kh)
    v_base = V + _head_offset(off_b, tok0, off_h, stride_vb, stride_vt, stride_vh)
    keep_base = KEEP + off_b.to(tl.int64) * stride_mb

    q = _load_rows(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Key blocks every query of this block fully sees run without masks; the rest (the ragged last block,
    # the causal diagonal, or everything under a key-padding mask) run masked.
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, (start_m + 1) * BLOCK_M)
    if HAS_MASK:
        full_end = 0
    else:
        full_end = kv_len // BLOCK_N * BLOCK_N
        if CAUSAL:
            full_end = tl.minimum(full_end, (start_m * BLOCK_M) // BLOCK_N * BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt,
                                    0, full_end, kv_len, offs_m, offs_n, offs_d, qk_scale, dropout_p,
                                    SEED, off_b, off_h, H, SEQLEN, HEAD_DIM, BLOCK_D, CAUSAL, HAS_MASK, DROPOUT,
                                    DOT_PRECISION, BLOCK_M, BLOCK_N, False)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt,
                                    full_end, hi, kv_len, offs_m, offs_n, offs_d, qk_scale, dropout_p,
                                    SEED, off_b, off_h, H, SEQLEN, HEAD_DIM, BLOCK_D, CAUSAL, HAS_MASK, DROPOUT,
                                    DOT_PRECISION, BLOCK_M, BLOCK_N, True)

    empty = l_i == 0.0  # every key masked
    l_safe = tl.where(empty, 1.0, l_i)
    out_scale = 1.0 / l_safe
    if DROPOUT:
        out_scale = out_scale / (1.0 - dropout_p)
    acc = acc * out_scale[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * LN2)
    tl.store(LSE + _head_offset(off_b, tok0, off_h, stride_lb, 1, stride_lh) + offs_m, lse, mask=m_valid)
    o_base = O + _head_offset(off_b, tok0, off_h, stride_ob, stride_ot, stride_oh)
    _store_rows(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(O.dtype.element_ty), m_valid,
                offs_d, HEAD_DIM, BLOCK_D)


# ---------------------------------------------------------------------------------------------- backward


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO,  # pointers to the output and its gradient
    DELTA,  # pointer to fp32 rowsum(dO * O), same layout as the log-sum-exp
    CU_SEQLENS,
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    stride_lb, stride_lh,
    SEQLEN,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    start_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    tok0, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_m * BLOCK_M >= seqlen:
        return
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    o_base = O + _head_offset(off_b, tok0, off_h, stride_ob, stride_ot, stride_oh)
    do_base = DO + _head_offset(off_b, tok0, off_h, stride_dob, stride_dot, stride_doh)
    o = _load_rows(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + _head_offset(off_b, tok0, off_h, stride_lb, 1, stride_lh) + offs_m, delta, mask=m_valid)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO,  # pointers to the inputs and the output gradient
    DQ,  # pointer to the fp32 dQ accumulator, zero-initialised (written only when ATOMIC_DQ)
    DK, DV,  # pointers to the key / value gradients (contiguous, same layout as K)
    LSE, DELTA,  # pointers to the fp32 log-sum-exp and rowsum(dO * O)
    KEEP, KV_LEN, CU_SEQLENS,  # as in the forward
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    stride_dkb, stride_dkt, stride_dkh,
    stride_lb, stride_lh,
    stride_mb,
    H, SEQLEN,
    sm_scale,
    dropout_p,
    SEED,  # pointer to the int64 dropout seed (read only when DROPOUT)
    SEQ_BUCKET,
    WORK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query block (inner loop)
    BLOCK_N: tl.constexpr,  # key block (one per program)
):
    start_n = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    tok0, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_n * BLOCK_N >= seqlen:
        return
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < seqlen
    dkv_offsets = _head_offset(off_b, tok0, off_h, stride_dkb, stride_dkt, stride_dkh) \
        + offs_n[:, None] * stride_dkt + offs_d[None, :]  # dK and dV: one layout
    dk_ptrs = DK + dkv_offsets
    dv_ptrs = DV + dkv_offsets
    kv_len = seqlen
    if HAS_MASK:
        kv_len = tl.load(KV_LEN + off_b)
    if start_n * BLOCK_N >= kv_len:  # padding only: zero gradients, no work
        zero = tl.zeros([BLOCK_N, BLOCK_D], tl.float32).to(DK.dtype.element_ty)
        _store_rows(dk_ptrs, zero, n_in, offs_d, HEAD_DIM, BLOCK_D)
        _store_rows(dv_ptrs, zero, n_in, offs_d, HEAD_DIM, BLOCK_D)
        return

    n_valid = offs_n < kv_len
    k_base = K + _head_offset(off_b, tok0, off_h, stride_kb, stride_kt, stride_kh)
    v_base = V + _head_offset(off_b, tok0, off_h, stride_vb, stride_vt, stride_vh)
    k = _load_rows(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], n_valid, offs_d, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], n_valid, offs_d, HEAD_DIM, BLOCK_D)
    key_ok = n_valid
    if HAS_MASK:
        keep_k = tl.load(KEEP + off_b.to(tl.int64) * stride_mb + offs_n, mask=n_valid, other=0)
        key_ok = key_ok & (keep_k != 0)
    q_base = Q + _head_offset(off_b, tok0, off_h, stride_qb, stride_qt, stride_qh)
    do_base = DO + _head_offset(off_b, tok0, off_h, stride_dob, stride_dot, stride_doh)
    dq_base = DQ + _head_offset(off_b, tok0, off_h, stride_dqb, stride_dqt, stride_dqh)
    l_base = _head_offset(off_b, tok0, off_h, stride_lb, 1, stride_lh)
    qk_scale = sm_scale * LOG2E
    inv_keep = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (start_n * BLOCK_N) // BLOCK_M * BLOCK_M
    for start_m in range(lo, seqlen, BLOCK_M):
        offs_m = start_m + offs_m0
        m_valid = offs_m < seqlen
        q = _load_rows(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], m_valid, offs_d, HEAD_DIM,
                        BLOCK_D)
        lse = tl.load(LSE + l_base + offs_m, mask=m_valid, other=float("inf"))
        delta = tl.load(DELTA + l_base + offs_m, mask=m_valid, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        valid = key_ok[:, None]
        if CAUSAL:
            valid = valid & (offs_m[None, :] >= offs_n[:, None])
        pT = tl.where(valid, tl.exp2(qkT - lse[None, :] * LOG2E), 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            keep = _dropout_keep(SEED, off_b, off_h, H, offs_m, offs_n, SEQLEN, dropout_p, BLOCK_M, BLOCK_N, True)
            pdT = tl.where(keep, pT * inv_keep, 0.0)
            dpT = tl.where(keep, dpT * inv_keep, 0.0)
        else:
            pdT = pT
        dv = tl.dot(pdT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=DOT_PRECISION) * sm_scale
            dq_ptrs = dq_base + offs_m[:, None] * stride_dqt + offs_d[None, :]
            if BLOCK_D == HEAD_DIM:
                tl.atomic_add(dq_ptrs, dq, mask=m_valid[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
    dk = dk * sm_scale
    _store_rows(dk_ptrs, dk.to(DK.dtype.element_ty), n_in, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(dv_ptrs, dv.to(DV.dtype.element_ty), n_in, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO,
    DQ,  # pointer to the query gradient (contiguous, same layout as Q)
    LSE, DELTA,
    KEEP, KV_LEN, CU_SEQLENS,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    stride_lb, stride_lh,
    stride_mb,
    H, SEQLEN,
    sm_scale,
    dropout_p,
    SEED,  # pointer to the int64 dropout seed (read only when DROPOUT)
    SEQ_BUCKET,
    WORK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query block (one per program)
    BLOCK_N: tl.constexpr,  # key block (inner loop)
):
    start_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    tok0, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_m * BLOCK_M >= seqlen:
        return
    kv_len = seqlen
    if HAS_MASK:
        kv_len = tl.load(KV_LEN + off_b)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    q_base = Q + _head_offset(off_b, tok0, off_h, stride_qb, stride_qt, stride_qh)
    do_base = DO + _head_offset(off_b, tok0, off_h, stride_dob, stride_dot, stride_doh)
    q = _load_rows(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], m_valid, offs_d, HEAD_DIM, BLOCK_D)
    l_base = _head_offset(off_b, tok0, off_h, stride_lb, 1, stride_lh)
    lse2 = tl.load(LSE + l_base + offs_m, mask=m_valid, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + l_base + offs_m, mask=m_valid, other=0.0)
    k_base = K + _head_offset(off_b, tok0, off_h, stride_kb, stride_kt, stride_kh)
    v_base = V + _head_offset(off_b, tok0, off_h, stride_vb, stride_vt, stride_vh)
    keep_base = KEEP + off_b.to(tl.int64) * stride_mb
    qk_scale = sm_scale * LOG2E
    inv_keep = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        n_valid = cols < kv_len
        k = _load_rows(k_base + cols[:, None] * stride_kt + offs_d[None, :], n_valid, offs_d, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base + cols[:, None] * stride_vt + offs_d[None, :], n_valid, offs_d, HEAD_DIM, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        valid = n_valid[None, :]
        if HAS_MASK:
            keep_k = tl.load(keep_base + cols, mask=n_valid, other=0)
            valid = valid & (keep_k != 0)[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= cols[None, :])
        p = tl.where(valid, tl.exp2(qk - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(SEED, off_b, off_h, H, offs_m, cols, SEQLEN, dropout_p, BLOCK_M, BLOCK_N, False)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    dq = dq * sm_scale
    dq_base = DQ + _head_offset(off_b, tok0, off_h, stride_dqb, stride_dqt, stride_dqh)
    _store_rows(dq_base + offs_m[:, None] * stride_dqt + offs_d[None, :], dq.to(DQ.dtype.element_ty), m_valid,
                offs_d, HEAD_DIM, BLOCK_D)


# ------------------------------------------------------------------------------------------- launch configs

# Under the interpreter: one small fixed config (awkward sizes exercise the multi-block paths on short inputs).
_INTERPRET_FWD = dict(BLOCK_M=16, BLOCK_N=32)
_INTERPRET_DKDV = dict(BLOCK_M=16, BLOCK_N=32)
_INTERPRET_DQ = dict(BLOCK_M=32, BLOCK_N=16)
_PREPROCESS_BLOCK_M = 64

_TUNE_KEY = ["HEAD_DIM", "SEQ_BUCKET", "WORK_BUCKET", "CAUSAL", "VARLEN", "HAS_MASK", "DROPOUT", "ATOMIC_DQ"]  # absent keys ignored


def _configs(shapes):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, largest head dim it compiles for without spilling[, the same
    for the dK/dV kernel without the fused dQ atomics (0: not verified)])."""
    configs = []
    for bm, bn, w, s, d, *d_separate in shapes:
        c = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        c.max_head_dim = d  # read by _prune only; not a kernel argument
        c.max_head_dim_separate_dq = d_separate[0] if d_separate else d
        configs.append(c)
    return configs


# The autotune spaces: only configs whose sm_90 compile spills no register for BERT's variants (packed or
# padded+mask, dropout on or off) up to their head dim, read from `python scripts/compile_report.py`
# (ptxas -v, bf16; docs/perf-notes.md has the table). Head dims above a config's bound skip it.
_FWD_CONFIGS = _configs([
    (128, 64, 8, 3, 64), (128, 32, 8, 3, 64), (128, 32, 4, 3, 64), (64, 64, 8, 3, 64), (64, 64, 4, 3, 64),
    (64, 64, 4, 4, 64), (64, 32, 4, 3, 128), (64, 32, 4, 2, 128),
])
# sm_90 compile reports: with the fused dQ atomics every dK/dV tile spills above head dim 64 (at d128 even
# 16x16 over 2 warps: 24-72 bytes); without them 16x16 w2 fits. So the backward takes the separate dQ pass there.
ATOMIC_DQ_MAX_HEAD_DIM = 64
_DKDV_CONFIGS = _configs([  # BLOCK_M: query block of the inner loop, BLOCK_N: key block per program
    # (.., bound with the fused dQ atomics, bound without them: deterministic=True, the separate dQ kernel)
    (32, 128, 8, 3, 32, 32), (32, 64, 4, 3, 32, 32), (32, 64, 4, 2, 32, 32), (16, 64, 8, 3, 64, 64),
    (16, 32, 4, 2, 32, 32), (16, 16, 2, 1, 64, 128),
    # without the dQ tile and its atomics, a 64x64 tile over 8 warps fits at d64: wgmma (HGMMA), no spill
    (64, 64, 8, 2, 0, 64),
])
_DQ_CONFIGS = _configs([
    (128, 64, 8, 3, 64), (128, 32, 8, 3, 64), (64, 64, 8, 3, 64), (64, 64, 4, 3, 64), (64, 32, 8, 3, 64),
    (64, 32, 4, 3, 128), (64, 32, 4, 2, 128),
])


def _prune(configs, named_args, **kwargs):
    """Drop configs that spill at this head dim, and blocks far larger than the sequence."""
    d = named_args["HEAD_DIM"] if "HEAD_DIM" in named_args else kwargs["HEAD_DIM"]
    s = named_args["SEQ_BUCKET"] if "SEQ_BUCKET" in named_args else kwargs["SEQ_BUCKET"]
    separate_dq = (named_args.get("ATOMIC_DQ", kwargs.get("ATOMIC_DQ")) is False)  # only the dK/dV kernel has it
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if d > (c.max_head_dim_separate_dq if separate_dq else c.max_head_dim):
            continue
        if max(bm, bn) > max(s, 32):
            continue
        kept.append(c)
    if kept:
        return kept
    # Nothing verified spill-free here (head dims above 128): the smallest tile.
    return [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps))]


@functools.lru_cache(maxsize=None)
def _tuned(name: str):
    """The autotuned CUDA variant of a kernel (built lazily: autotune cannot run under the interpreter)."""
    kernel, configs, reset = {
        "fwd": (_attn_fwd_kernel, _FWD_CONFIGS, None),
        "dkdv": (_attn_bwd_dkdv_kernel, _DKDV_CONFIGS, ["DQ"]),
        "dq": (_attn_bwd_dq_kernel, _DQ_CONFIGS, None),
    }[name]
    return triton.autotune(configs, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune},
                           reset_to_zero=reset, cache_results=True)(kernel)


_FORCED: dict = {}  # kernel name -> triton.Config launched instead of autotuning (forced_config)


@contextlib.contextmanager
def forced_config(name: str, config):
    """Launch kernel ``name`` ("fwd", "dkdv" or "dq") with exactly ``config`` (one of the autotune space's,
    block sizes, warps and stages) instead of autotuning or the interpreter's fixed one: the tests run every
    config the autotuner may pick once, forward and backward, so a config that is wrong (not only slow) is
    caught before the autotuner picks it on some shape."""
    if name not in ("fwd", "dkdv", "dq"):
        raise ValueError(f"forced_config: unknown kernel {name!r} (fwd, dkdv, dq)")
    previous = _FORCED.get(name)
    _FORCED[name] = config
    try:
        yield
    finally:
        if previous is None:
            _FORCED.pop(name, None)
        else:
            _FORCED[name] = previous


def _untuned_config(name: str, meta: dict, seq_bucket: int):
    """FASTBERT_AUTOTUNE=0 on CUDA: the first config the autotuner would consider here (spill-free at this head
    dim, no block far larger than the sequence), launched without timing the others."""
    configs = {"fwd": _FWD_CONFIGS, "dkdv": _DKDV_CONFIGS, "dq": _DQ_CONFIGS}[name]
    return _prune(configs, dict(meta, SEQ_BUCKET=seq_bucket))[0]


def _launch(name: str, kernel, fixed: dict, grid, args: tuple, meta: dict, seq_bucket: int):
    """Kernel ``name`` with a forced config (``forced_config``), else autotuned; without autotuning, the first
    config the autotuner would consider (FASTBERT_AUTOTUNE=0) or, under the interpreter, ``fixed``."""
    config = _FORCED.get(name)
    if config is None and autotune_enabled():
        return launch(kernel, grid, args, meta, tuned=_tuned(name))
    if interpret_mode():  # block sizes only (warps and stages mean nothing there)
        blocks = fixed if config is None else config.kwargs
    else:
        config = config or _untuned_config(name, meta, seq_bucket)
        blocks = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    launch(kernel, grid, args, meta, blocks)


# ------------------------------------------------------------------------------------------------ launchers


class _Layout:
    """Everything the kernels need to address one padded or packed batch (computed once per call)."""

    def __init__(self, q, key_padding_mask, cu_seqlens, max_seqlen):
        self.varlen = cu_seqlens is not None
        self.heads, self.head_dim = q.shape[-2], q.shape[-1]
        dummy_i32 = torch.empty(1, dtype=torch.int32, device=q.device)
        if self.varlen:
            self.batch = cu_seqlens.numel() - 1
            self.seqlen = int(max_seqlen)
            self.cu_seqlens = cu_seqlens.to(torch.int32)
            self.total = q.shape[0]
        else:
            self.batch, self.seqlen = q.shape[0], q.shape[1]
            self.cu_seqlens = dummy_i32
        if self.batch > 65535 or self.heads > 65535:
            raise ValueError(f"attention: {self.batch} sequences x {self.heads} heads exceed the CUDA grid limit "
                             "(65535 each); split the batch")
        self.has_mask = key_padding_mask is not None
        if self.has_mask:
            keep = key_padding_mask.bool()
            self.keep = keep.to(torch.int8).contiguous()
            pos = torch.arange(1, self.seqlen + 1, device=q.device, dtype=torch.int32)
            self.kv_len = torch.where(keep, pos, 0).amax(dim=1).to(torch.int32)  # last real key + 1
        else:
            self.keep = torch.empty(1, dtype=torch.int8, device=q.device)
            self.kv_len = dummy_i32
        self.block_d = max(16, triton.next_power_of_2(self.head_dim))
        self.seq_bucket = max(16, triton.next_power_of_2(max(self.seqlen, 1)))
        # batch 1 and batch 256 fill the chip differently: they must not share an autotuned config
        self.work_bucket = triton.next_power_of_2(max(self.batch * self.heads, 1))

    def strides(self, t):
        """(batch, token, head) strides; batch stride 0 when packed."""
        if self.varlen:
            return 0, t.stride(0), t.stride(1)
        return t.stride(0), t.stride(1), t.stride(2)

    def new_lse(self, device):
        """fp32 (B, H, S) or (H, T) buffer, and its (batch, head) strides."""
        if self.varlen:
            t = torch.empty(self.heads, self.total, dtype=torch.float32, device=device)
            return t, (0, t.stride(0))
        t = torch.empty(self.batch, self.heads, self.seqlen, dtype=torch.float32, device=device)
        return t, (t.stride(0), t.stride(1))

    def grid(self, block):
        return (triton.cdiv(max(self.seqlen, 1), block), self.heads, self.batch)


def _seed_ptr(seed, q):
    """The int64 seed tensor (1,) on q's device; a dummy when there is no dropout."""
    if seed is None:
        return torch.empty(1, dtype=torch.int64, device=q.device)  # never read: DROPOUT is off
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.device != q.device:
        raise ValueError("attention dropout seed must be an int64 tensor on the inputs' device")
    return seed


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype):
    """fp32 inputs follow torch's TF32 switch for matmuls (off by default: exact fp32 dots)."""
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "tf32"  # ignored for fp16 / bf16 operands


def attention_fwd(q, k, v, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, causal=False,
                  dropout_p=0.0, softmax_scale=None, seed=None):
    """Launch the forward. Inputs are assumed validated (see ``fastbert.ops.attention``).

    Returns ``(out, lse)``: out contiguous in q's layout, lse fp32 (B, H, S) padded or (H, T) packed.
    """
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    lay = _Layout(q, key_padding_mask, cu_seqlens, max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse, (slb, slh) = lay.new_lse(q.device)
    if q.numel() == 0 or lay.seqlen == 0:
        return out, lse.fill_(float("inf"))
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(lay.head_dim)
    args = (q, k, v, out, lse, lay.keep, lay.kv_len, lay.cu_seqlens,
            *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(out), slb, slh, lay.keep.stride(0),
            lay.heads, lay.seqlen, scale * LOG2E.value, float(dropout_p), _seed_ptr(seed, q), lay.seq_bucket,
            lay.work_bucket)
    meta = dict(HEAD_DIM=lay.head_dim, BLOCK_D=lay.block_d, CAUSAL=bool(causal), VARLEN=lay.varlen,
                HAS_MASK=lay.has_mask, DROPOUT=dropout_p > 0.0, DOT_PRECISION=_dot_precision(q.dtype))
    _launch("fwd", _attn_fwd_kernel, _INTERPRET_FWD, lambda c: lay.grid(c["BLOCK_M"]), args, meta, lay.seq_bucket)
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None,
                  causal=False, dropout_p=0.0, softmax_scale=None, seed=None, deterministic=False):
    """Launch the backward; returns ``(dq, dk, dv)``, contiguous, in q's layout and dtype.

    ``deterministic=False``: dQ accumulated with fp32 atomics inside the dK/dV kernel, at head dims up to
    ``ATOMIC_DQ_MAX_HEAD_DIM``; above it the separate pass (no dK/dV tile with the dQ atomics compiles without
    spills there).
    ``deterministic=True``: a separate dQ kernel without atomics (bitwise reproducible, ~40% more FLOPs).
    """
    q, k, v, out, dout = (_last_dim_contiguous(t) for t in (q, k, v, out, dout))
    lay = _Layout(q, key_padding_mask, cu_seqlens, max_seqlen)
    deterministic = deterministic or lay.head_dim > ATOMIC_DQ_MAX_HEAD_DIM
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or lay.seqlen == 0:
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device), dk.zero_(), dv.zero_()
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(lay.head_dim)
    slb, slh = (0, lse.stride(0)) if lay.varlen else (lse.stride(0), lse.stride(1))
    delta = torch.empty_like(lse)
    launch(_attn_bwd_preprocess_kernel, lambda c: lay.grid(c["BLOCK_M"]),
           (out, dout, delta, lay.cu_seqlens, *lay.strides(out), *lay.strides(dout), slb, slh, lay.seqlen),
           dict(HEAD_DIM=lay.head_dim, BLOCK_D=lay.block_d, VARLEN=lay.varlen), dict(BLOCK_M=_PREPROCESS_BLOCK_M))

    if deterministic:
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dq_acc = torch.empty(1, dtype=torch.float32, device=q.device)  # unused by the dK/dV kernel
        dq_strides = (0, 0, 0)
    else:
        dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dq_strides = lay.strides(dq_acc)
    meta = dict(HEAD_DIM=lay.head_dim, BLOCK_D=lay.block_d, CAUSAL=bool(causal), VARLEN=lay.varlen,
                HAS_MASK=lay.has_mask, DROPOUT=dropout_p > 0.0, DOT_PRECISION=_dot_precision(q.dtype))
    common = (lay.heads, lay.seqlen, scale, float(dropout_p), _seed_ptr(seed, q), lay.seq_bucket, lay.work_bucket)
    args = (q, k, v, dout, dq_acc, dk, dv, lse, delta, lay.keep, lay.kv_len, lay.cu_seqlens,
            *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(dout), *dq_strides,
            *lay.strides(dk), slb, slh, lay.keep.stride(0), *common)
    _launch("dkdv", _attn_bwd_dkdv_kernel, _INTERPRET_DKDV, lambda c: lay.grid(c["BLOCK_N"]), args,
            dict(meta, ATOMIC_DQ=not deterministic), lay.seq_bucket)
    if deterministic:
        args = (q, k, v, dout, dq, lse, delta, lay.keep, lay.kv_len, lay.cu_seqlens,
                *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(dout), *lay.strides(dq),
                slb, slh, lay.keep.stride(0), *common)
        _launch("dq", _attn_bwd_dq_kernel, _INTERPRET_DQ, lambda c: lay.grid(c["BLOCK_M"]), args, meta,
                lay.seq_bucket)
    else:
        dq = dq_acc.to(q.dtype)
    return dq, dk, dv


# ------------------------------------------------------------------------------------- torch.library ops
# The launchers as custom ops (with fake implementations for shapes), so torch.compile sees through them
# instead of tracing into the Python launch code. Positional, explicit arguments: the schema is inferred.


@torch.library.custom_op("fastbert::attention_fwd", mutates_args=())
def attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                     cu_seqlens: Optional[torch.Tensor], max_seqlen: int, causal: bool, dropout_p: float,
                     softmax_scale: float, seed: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens,
                         max_seqlen=max_seqlen if cu_seqlens is not None else None, causal=causal,
                         dropout_p=dropout_p, softmax_scale=softmax_scale, seed=seed)


@attention_fwd_op.register_fake
def _(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, softmax_scale, seed):
    out = q.new_empty(q.shape)
    if cu_seqlens is None:
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("fastbert::attention_bwd", mutates_args=())
def attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     lse: torch.Tensor, key_padding_mask: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                     max_seqlen: int, causal: bool, dropout_p: float, softmax_scale: float,
                     seed: Optional[torch.Tensor],
                     deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(dout, q, k, v, out, lse, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens,
                         max_seqlen=max_seqlen if cu_seqlens is not None else None, causal=causal,
                         dropout_p=dropout_p, softmax_scale=softmax_scale, seed=seed, deterministic=deterministic)


@attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, softmax_scale, seed,
      deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
