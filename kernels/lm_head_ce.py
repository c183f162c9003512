"""Fused vocabulary projection + cross-entropy (the MLM loss) in Triton: the logits are never materialised.

For rows ``h`` (N, K) — the hidden states of the masked positions after the MLM head's transform — the
decoder ``W`` (V, K) with bias ``b`` (V,) and targets ``t`` (N,):

    loss[n] = logsumexp_v(h[n] . W[v] + b[v]) - (h[n] . W[t[n]] + b[t[n]])      (0 where t[n] == ignore)

Forward: one program per block of rows walks the vocabulary in blocks (each block's logits computed by a
K-loop of ``tl.dot``), keeping an online log-sum-exp, the target's logit and the running argmax (for MLM
accuracy). It stores the per-row loss, log-sum-exp (fp32) and argmax: O(N) memory instead of the (N, V)
logits (at BERT-base's vocabulary, 30522 fp32 logits = 122 KB per masked token).

Backward: one program per (row block, vocab block) tile recomputes the tile's logits, forms
``g = (softmax - onehot) * dloss`` and adds ``g @ W`` into dH and ``g^T @ h`` into dW (and ``sum g`` into
db) with relaxed fp32 atomics (no memory fences: the adds commute and nothing reads them before the kernel
ends). That is the Cut Cross-Entropy scheme; the reductions' order varies between runs on a GPU, so dH / dW
are not bitwise reproducible there. Tiles whose rows are all ignored return at once.

dtypes: fp16 / bf16 / fp32 inputs; dots accumulate in fp32 (fp32 inputs: exact ``ieee`` dots); softmax
statistics, loss and gradients accumulate in fp32; dH / dW / db are returned in the inputs' dtypes.
One fixed config per launch (no autotuning yet); under ``TRITON_INTERPRET=1`` small blocks.
"""
import torch
import triton
import triton.language as tl

from ..ops._dispatch import interpret_mode
from ._common import launch


@triton.jit
def _tile_logits(H, W, B, rows, cols, row_mask, col_mask, K, stride_hn, stride_wv, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_V) fp32 logits of rows x cols; -inf on columns past the vocabulary."""
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        h = tl.load(H + rows[:, None] * stride_hn + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_wv + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.dot(h, tl.trans(w), input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_mask[None, :], acc, float("-inf"))


@triton.jit
def _lm_ce_fwd_kernel(
    H,  # (N, K) hidden rows
    W,  # (V, K) decoder weight
    B,  # (V,) decoder bias (unused without HAS_BIAS)
    T,  # (N,) int64 targets
    LOSS,  # (N,) fp32 out: per-row loss (0 for ignored rows)
    LSE,  # (N,) fp32 out: log-sum-exp of the row's logits
    ARGMAX,  # (N,) int64 out: index of the row's largest logit (first on ties)
    N, V, K, stride_hn, stride_wv, ignore_index,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    target = tl.load(T + rows, mask=row_mask, other=ignore_index)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    t_logit = tl.zeros((BLOCK_M,), tl.float32)
    best_idx = tl.zeros((BLOCK_M,), tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        logits = _tile_logits(H, W, B, rows, cols, row_mask, col_mask, K, stride_hn, stride_wv, HAS_BIAS,
                              BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION)
        blk_max = tl.max(logits, 1)
        blk_arg = tl.argmax(logits, 1, tie_break_left=True) + v0
        best_idx = tl.where(blk_max > m_i, blk_arg, best_idx)  # strictly greater: earlier blocks win ties
        m_new = tl.maximum(m_i, blk_max)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m_i = m_new
        t_logit += tl.sum(tl.where(cols[None, :] == target[:, None], logits, 0.0), 1)
    lse = m_i + tl.log(l_i)
    valid = row_mask & (target != ignore_index)
    tl.store(LOSS + rows, tl.where(valid, lse - t_logit, 0.0), mask=row_mask)
    tl.store(LSE + rows, lse, mask=row_mask)
    tl.store(ARGMAX + rows, best_idx.to(tl.int64), mask=row_mask)


@triton.jit
def _lm_ce_bwd_kernel(
    H, W, B, T, LSE,
    DLOSS,  # (N,) fp32 upstream gradient of each row's loss
    DH,  # (N, K) fp32 accumulator
    DW,  # (V, K) fp32 accumulator
    DB,  # (V,) fp32 accumulator (unused without HAS_BIAS)
    N, V, K, stride_hn, stride_wv, ignore_index,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    target = tl.load(T + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (target != ignore_index)
    if tl.sum(valid.to(tl.int32), 0) == 0:
        return
    logits = _tile_logits(H, W, B, rows, cols, row_mask, col_mask, K, stride_hn, stride_wv, HAS_BIAS,
                          BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION)
    lse = tl.load(LSE + rows, mask=row_mask, other=0.0)
    dloss = tl.load(DLOSS + rows, mask=row_mask, other=0.0)
    p = tl.exp(logits - lse[:, None])
    g = (p - tl.where(cols[None, :] == target[:, None], 1.0, 0.0)) * dloss[:, None]
    g = tl.where(valid[:, None] & col_mask[None, :], g, 0.0)
    if HAS_BIAS:
        tl.atomic_add(DB + cols, tl.sum(g, 0), mask=col_mask, sem="relaxed")
    g_in = g.to(H.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        w = tl.load(W + cols[:, None] * stride_wv + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        dh = tl.dot(g_in, w, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_K)
        tl.atomic_add(DH + rows[:, None] * K + ks[None, :], dh, mask=valid[:, None] & k_mask[None, :], sem="relaxed")
        h = tl.load(H + rows[:, None] * stride_hn + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        dw = tl.dot(tl.trans(g_in), h, input_precision=DOT_PRECISION)  # (BLOCK_V, BLOCK_K)
        tl.atomic_add(DW + cols[:, None] * K + ks[None, :], dw, mask=col_mask[:, None] & k_mask[None, :],
                      sem="relaxed")


def _config(dtype, backward=False):
    """(block sizes, num_warps): one fixed config per dtype and direction, chosen so that the sm_90 compile
    spills nothing (ptxas: fwd bf16 244 / fp32 208 registers, bwd bf16 209 / fp32 224; docs/perf-notes.md)."""
    if interpret_mode():
        return dict(BLOCK_M=16, BLOCK_V=32, BLOCK_K=16), 1
    if dtype == torch.float32:
        return (dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=16) if backward else dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32)), 4
    return (dict(BLOCK_M=64, BLOCK_V=128, BLOCK_K=32) if backward else dict(BLOCK_M=64, BLOCK_V=128, BLOCK_K=64)), 8


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 inputs look at it


def lm_head_ce_fwd(hidden, weight, bias, target, ignore_index):
    """Per-row loss (N,) fp32, log-sum-exp (N,) fp32 and argmax (N,) int64."""
    N, K = hidden.shape
    V = weight.shape[0]
    loss = torch.empty(N, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    argmax = torch.empty(N, device=hidden.device, dtype=torch.int64)
    if N == 0:
        return loss, lse, argmax
    cfg, warps = _config(hidden.dtype)
    launch(_lm_ce_fwd_kernel, lambda c: (triton.cdiv(N, c["BLOCK_M"]),),
           (hidden, weight, bias if bias is not None else weight, target, loss, lse, argmax,
            N, V, K, hidden.stride(0), weight.stride(0), ignore_index),
           dict(HAS_BIAS=bias is not None, DOT_PRECISION=_precision(hidden.dtype)), dict(cfg, num_warps=warps))
    return loss, lse, argmax


def lm_head_ce_bwd(dloss, hidden, weight, bias, target, lse, ignore_index, need_dh, need_dw, need_db):
    N, K = hidden.shape
    V = weight.shape[0]
    dh = torch.zeros(N, K, device=hidden.device, dtype=torch.float32)
    dw = torch.zeros(V, K, device=hidden.device, dtype=torch.float32)
    db = torch.zeros(V, device=hidden.device, dtype=torch.float32) if bias is not None else None
    if N > 0:
        cfg, warps = _config(hidden.dtype, backward=True)
        launch(_lm_ce_bwd_kernel, lambda c: (triton.cdiv(N, c["BLOCK_M"]), triton.cdiv(V, c["BLOCK_V"])),
               (hidden, weight, bias if bias is not None else weight, target, lse, dloss.float().contiguous(),
                dh, dw, db if db is not None else dw, N, V, K, hidden.stride(0), weight.stride(0), ignore_index),
               dict(HAS_BIAS=bias is not None, DOT_PRECISION=_precision(hidden.dtype)), dict(cfg, num_warps=warps))
    return (dh.to(hidden.dtype) if need_dh else None, dw.to(weight.dtype) if need_dw else None,
            db.to(bias.dtype) if need_db else None)
