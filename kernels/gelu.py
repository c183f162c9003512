"""Fused bias + GELU in Triton: ``y = gelu(x + bias)``, forward and backward.

Two GELUs: the exact one, ``z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2))`` (BERT's ``"gelu"``), and the tanh
approximation ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`` (``"gelu_new"``), computed here as the
identical ``z * sigmoid(2u)``: no tanh, and no exp overflow however large ``|z|``.

Layout: ``x`` and ``dy`` are 2-D ``(rows, N)`` with unit column stride (any row stride), ``bias`` a
contiguous ``(N,)``. Programs cover ``(BLOCK_M, BLOCK_N)`` tiles. All arithmetic is fp32; ``y`` and ``dx``
are stored in ``x``'s dtype. The backward splits the rows into a fixed number of programs per column
block; each writes one fp32 partial row of dbias, which the launcher sums (deterministic: no atomics).
The autograd Function and argument checks live in fastbert/ops/gelu.py.
"""
import torch
import triton
import triton.language as tl

from ..ops._dispatch import interpret_mode
from ._common import launch, round_to, rows_bucket, sm_count


@triton.jit
def _gelu_and_grad(z, APPROX_TANH: tl.constexpr):
    """(gelu(z), gelu'(z)) in fp32."""
    if APPROX_TANH:
        # 0.5 z (1 + tanh(u)) = z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        k0: tl.constexpr = 0.7978845608028654  # sqrt(2/pi)
        k1: tl.constexpr = 0.044715
        u = k0 * (z + k1 * z * z * z)
        # With t = exp(-2|u|) in (0, 1]: sigmoid(2u) = 1/(1+t) or t/(1+t), and sigmoid'(2u)/2 = t/(1+t)^2,
        # with no overflow and no cancellation in 1 - sigmoid for large |z|.
        t = tl.exp(-2.0 * tl.abs(u))
        r = 1.0 / (1.0 + t)
        s = tl.where(u >= 0, r, t * r)
        y = z * s
        dy = s + z * (2.0 * t * r * r) * k0 * (1.0 + 3.0 * k1 * z * z)
    else:
        inv_sqrt2: tl.constexpr = 0.7071067811865476
        inv_sqrt_2pi: tl.constexpr = 0.3989422804014327
        cdf = 0.5 * (1.0 + tl.math.erf(z * inv_sqrt2))
        y = z * cdf
        dy = cdf + z * inv_sqrt_2pi * tl.exp(-0.5 * z * z)
    return y, dy


@triton.jit
def _bias_gelu_fwd_kernel(
    X,  # pointer to the input (M, N)
    B,  # pointer to the bias (N,)
    Y,  # pointer to the output (M, N)
    stride_x, stride_y,  # row strides
    M, N,
    ROWS_BUCKET,  # autotune key only (kernels._common.rows_bucket)
    APPROX_TANH: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
    y, _ = _gelu_and_grad(x + b[None, :], APPROX_TANH)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], round_to(y, Y.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    DY,  # pointer to the gradient of y (M, N)
    X,  # pointer to the forward's input (M, N)
    B,  # pointer to the bias (N,)
    DX,  # pointer to the gradient of x (M, N)
    DB,  # pointer to the fp32 partial dbias, one row per row-program (programs, N)
    stride_dy, stride_x, stride_dx,  # row strides
    M, N,
    rows_per_program,
    ROWS_BUCKET,  # autotune key only (kernels._common.rows_bucket)
    APPROX_TANH: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_start = pid_m.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for m in range(row_start, row_end, BLOCK_M):
        rows = m + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < row_end) & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        _, dgelu = _gelu_and_grad(x + b[None, :], APPROX_TANH)
        dx = tl.where(mask, dy * dgelu, 0.0)
        db += dx
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], round_to(dx, DX.dtype.element_ty, EMULATE_RTNE),
                 mask=mask)
    tl.store(DB + pid_m * N + cols, tl.sum(db, axis=0), mask=col_mask)


# Few configs on purpose: each one is compiled and timed on the first call for every new width.
def _tile_configs():
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in ((1, 1024, 4), (4, 512, 4), (8, 256, 4), (16, 256, 8), (8, 512, 8), (32, 128, 4))
    ]


# On CUDA the tile is tuned per width N and row-count bucket (M itself changes with every unpadded batch, so it
# is not a key; rows_bucket is: the power of two above M, clamped to 256..65536). The
# interpreter cannot autotune, and FASTBERT_AUTOTUNE=0 skips tuning (faster start-up): both launch the
# plain kernels with the fixed tile below.
_bias_gelu_fwd_kernel_tuned = triton.autotune(configs=_tile_configs(), key=["N", "ROWS_BUCKET"])(_bias_gelu_fwd_kernel)
_bias_gelu_bwd_kernel_tuned = triton.autotune(configs=_tile_configs(), key=["N", "ROWS_BUCKET"])(_bias_gelu_bwd_kernel)
_FIXED_TILE = dict(BLOCK_M=8, BLOCK_N=256, num_warps=4)


def bias_gelu_fwd(x, bias, approximate="none"):
    """``gelu(x + bias)`` for ``x`` ``(M, N)`` with unit column stride; the result has ``x``'s dtype."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    args = (x, bias, y, x.stride(0), y.stride(0), M, N, rows_bucket(M))
    flags = dict(APPROX_TANH=approximate == "tanh", EMULATE_RTNE=interpret_mode())
    launch(_bias_gelu_fwd_kernel, lambda c: (triton.cdiv(M, c["BLOCK_M"]), triton.cdiv(N, c["BLOCK_N"])), args,
           flags, _FIXED_TILE, tuned=_bias_gelu_fwd_kernel_tuned)
    return y


def _row_programs(m: int, device: torch.device) -> int:
    if device.type == "cuda":
        # ~64 rows per program at least, at most 2 waves of row-programs: the fp32 partials stay a few
        # percent of the traffic of dy, x and dx.
        return max(1, min(triton.cdiv(m, 64), 2 * sm_count(device.index if device.index is not None else 0)))
    return max(1, min(m, 3))  # the interpreter: a few programs, so uneven row splits get exercised


def bias_gelu_bwd(dy, x, bias, approximate="none"):
    """Gradients of ``gelu(x + bias)``: ``(dx, dbias)``, ``dx`` in ``x``'s dtype, ``dbias`` in fp32."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    programs = _row_programs(M, x.device)
    rows_per_program = triton.cdiv(M, programs) if M else 0
    programs = triton.cdiv(M, rows_per_program) if M else 1
    db_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return dx, db_partial.zero_().sum(dim=0)
    args = (dy, x, bias, dx, db_partial, dy.stride(0), x.stride(0), dx.stride(0), M, N, rows_per_program,
            rows_bucket(M))
    flags = dict(APPROX_TANH=approximate == "tanh", EMULATE_RTNE=interpret_mode())
    launch(_bias_gelu_bwd_kernel, lambda c: (programs, triton.cdiv(N, c["BLOCK_N"])), args, flags, _FIXED_TILE,
           tuned=_bias_gelu_bwd_kernel_tuned)
    return dx, db_partial.sum(dim=0)
