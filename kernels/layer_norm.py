"""Fused residual + LayerNorm in Triton: ``y = LN(x + residual) * weight + bias``, forward and backward.

One program normalizes one row (the whole hidden dimension sits in one block, so a row is read once);
statistics are fp32 whatever the input dtype. The backward splits the rows into a fixed number of
programs; each keeps its share of dweight/dbias in fp32 registers and writes one partial row, and the
launcher sums the partials (deterministic: no atomics).

Layout: ``x``, ``residual`` and ``dy`` are 2-D ``(rows, hidden)`` with unit column stride (any row stride);
``weight`` and ``bias`` are contiguous ``(hidden,)``. The autograd Function and argument checks live in
fastbert/ops/layer_norm.py; this module is imported only when a kernel is first launched.
"""
import torch
import triton
import triton.language as tl

from ..ops._dispatch import interpret_mode
from ._common import launch, round_to, rows_bucket, sm_count

# The whole row sits in one block, computed in fp32: past 16384 features (64 KiB of fp32 per row) registers
# spill badly. BERT's hidden sizes are far below this.
MAX_HIDDEN_SIZE = 16384


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # pointer to the input (rows, N)
    R,  # pointer to the residual (rows, N); unused unless HAS_RESIDUAL
    W,  # pointer to the weight (N,)
    B,  # pointer to the bias (N,)
    Y,  # pointer to the output (rows, N)
    Z,  # pointer to the output x + residual (rows, N); unused unless STORE_Z
    Mean,  # pointer to the per-row mean, fp32 (rows,); unused unless STORE_STATS
    Rstd,  # pointer to the per-row 1/std, fp32 (rows,); unused unless STORE_STATS
    stride_x, stride_r, stride_y, stride_z,  # row strides
    N,  # hidden size
    eps,
    ROWS_BUCKET,  # autotune key only (kernels._common.rows_bucket)
    HAS_RESIDUAL: tl.constexpr,
    STORE_Z: tl.constexpr,
    STORE_STATS: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the activation dtype, as `LN(x + residual)` in PyTorch does, so the kernel
        # normalizes exactly the tensor it returns (and the backward re-reads).
        x = round_to(x, Y.dtype.element_ty, EMULATE_RTNE).to(tl.float32)
        if STORE_Z:
            tl.store(Z + row * stride_z + cols, round_to(x, Z.dtype.element_ty, EMULATE_RTNE), mask=mask)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    if STORE_STATS:
        tl.store(Mean + row, mean)
        tl.store(Rstd + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * stride_y + cols, round_to(y, Y.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(
    Z,  # pointer to the LayerNorm input, x + residual (rows, N)
    W,  # pointer to the weight (N,)
    DY,  # pointer to the gradient of y (rows, N)
    DZ,  # pointer to the gradient of the returned x + residual (rows, N); unused unless HAS_DZ
    DX,  # pointer to the gradient of x (rows, N)
    DR,  # pointer to the gradient of the residual (rows, N); unused unless STORE_DR
    Mean,  # pointer to the per-row mean, fp32 (rows,)
    Rstd,  # pointer to the per-row 1/std, fp32 (rows,)
    DW,  # pointer to the fp32 partial dweight, one row per program (programs, N)
    DB,  # pointer to the fp32 partial dbias, one row per program (programs, N)
    stride_z, stride_dy, stride_dz, stride_dx, stride_dr,  # row strides
    M,  # number of rows
    N,  # hidden size
    rows_per_program,
    ROWS_BUCKET,  # autotune key only (kernels._common.rows_bucket)
    HAS_DZ: tl.constexpr,
    STORE_DR: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per step: BLOCK_M independent rows in flight per program
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for m in range(row_start, row_end, BLOCK_M):
        rows = m + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DZ:
            dx += tl.load(DZ + rows[:, None] * stride_dz + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], round_to(dx, DX.dtype.element_ty, EMULATE_RTNE),
                 mask=mask)
        if STORE_DR:
            tl.store(DR + rows[:, None] * stride_dr + cols[None, :], round_to(dx, DR.dtype.element_ty, EMULATE_RTNE),
                     mask=mask)
    tl.store(DW + pid * N + cols, dw, mask=col_mask)
    tl.store(DB + pid * N + cols, db, mask=col_mask)


# Few configs on purpose: each one is compiled and timed on the first call for every new hidden size.
def _fwd_configs():
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16)]


def _bwd_configs():
    return [triton.Config({"BLOCK_M": bm}, num_warps=w)
            for bm, w in ((1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (4, 4), (4, 8), (8, 8))]


def _prune(configs, named_args, **kwargs):
    # Every thread holds between 1 and 64 elements of a step (BLOCK_M x BLOCK_N), and a step at most 16K
    # (past that, registers spill).
    def step(c):
        return c.kwargs.get("BLOCK_M", 1) * kwargs["BLOCK_N"]

    kept = [c for c in configs if 32 * c.num_warps <= step(c) <= min(2048 * c.num_warps, 16384)]
    return kept or configs[:1]


# On CUDA the warps per row (and the backward's rows per step) are tuned per hidden size and row-count bucket. The interpreter
# cannot autotune, and FASTBERT_AUTOTUNE=0 skips tuning (faster start-up): both launch the plain kernels
# with the heuristic meta-parameters below.
_layer_norm_fwd_kernel_tuned = triton.autotune(configs=_fwd_configs(), key=["N", "ROWS_BUCKET"],
                                               prune_configs_by={"early_config_prune": _prune})(_layer_norm_fwd_kernel)
_layer_norm_bwd_kernel_tuned = triton.autotune(configs=_bwd_configs(), key=["N", "ROWS_BUCKET"],
                                               prune_configs_by={"early_config_prune": _prune})(_layer_norm_bwd_kernel)


def _fwd_meta(block_n: int) -> dict:
    return dict(num_warps=min(16, max(1, block_n // 256)))


def _bwd_meta(block_n: int) -> dict:
    block_m = max(1, min(8, 2048 // block_n))
    return dict(BLOCK_M=block_m, num_warps=min(16, max(1, block_m * block_n // 256)))


def _block_n(n: int) -> int:
    if n > MAX_HIDDEN_SIZE:
        raise ValueError(
            f"hidden size {n} is too large for the fused LayerNorm kernel (at most {MAX_HIDDEN_SIZE}); "
            "use torch.nn.functional.layer_norm instead"
        )
    return triton.next_power_of_2(max(n, 1))


def layer_norm_fwd(x, weight, bias, eps, residual=None, store_residual=False, store_stats=False):
    """Launch the forward kernel.

    ``x``, ``residual``: ``(M, N)`` with unit column stride. Returns ``(y, z, mean, rstd)``: ``y`` and
    ``z = x + residual`` in the promoted dtype of ``x`` and ``residual`` (``z`` is None unless
    ``store_residual`` and a residual is given), ``mean`` / ``rstd`` fp32 ``(M,)`` (None unless
    ``store_stats``).
    """
    M, N = x.shape
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    block_n = _block_n(N)
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    z = torch.empty((M, N), dtype=out_dtype, device=x.device) if store_residual and residual is not None else None
    mean = torch.empty((M,), dtype=torch.float32, device=x.device) if store_stats else None
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device) if store_stats else None
    if M == 0 or N == 0:
        if store_stats:
            mean.zero_()
            rstd.zero_()
        return y, z, mean, rstd
    args = (x, residual if residual is not None else x, weight, bias, y,
            z if z is not None else y, mean if store_stats else y, rstd if store_stats else y,
            x.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
            z.stride(0) if z is not None else 0,
            N, eps, rows_bucket(M))
    flags = dict(HAS_RESIDUAL=residual is not None, STORE_Z=z is not None, STORE_STATS=store_stats, BLOCK_N=block_n,
                 EMULATE_RTNE=interpret_mode())
    launch(_layer_norm_fwd_kernel, lambda c: (M,), args, flags, _fwd_meta(block_n), tuned=_layer_norm_fwd_kernel_tuned)
    return y, z, mean, rstd


def _bwd_programs(m: int, device: torch.device) -> int:
    if device.type == "cuda":
        # One to four programs per SM, each working through >= 16 rows BLOCK_M at a time, so the fp32
        # partials (programs x N x 8 bytes) stay under ~10% of the traffic of dy, z and dx. Not tuned on a
        # GPU yet: more programs hide more latency but write more partials.
        sms = sm_count(device.index if device.index is not None else 0)
        return max(1, min(m, 4 * sms, max(sms, triton.cdiv(m, 16))))
    return max(1, min(m, 4))  # the interpreter: a few programs, so uneven row splits get exercised


def layer_norm_bwd(dy, z, weight, mean, rstd, dz=None, dx_dtype=None, dres_dtype=None):
    """Launch the backward kernel and reduce the partial dweight/dbias.

    ``z`` is the LayerNorm input (``x + residual``, or ``x``); ``dz`` the gradient flowing into the
    returned ``x + residual``, if any. ``dx`` is written in ``dx_dtype`` (default ``z.dtype``); when
    ``dres_dtype`` is given the residual's gradient too: the same tensor as ``dx`` when the dtypes agree,
    else a second store in ``dres_dtype``. Returns ``(dx, dres, dweight, dbias)``, the last two in fp32
    (the caller casts them to the parameters' dtypes).
    """
    M, N = z.shape
    block_n = _block_n(N)
    dx_dtype = dx_dtype or z.dtype
    dx = torch.empty((M, N), dtype=dx_dtype, device=z.device)
    store_dr = dres_dtype is not None and dres_dtype != dx_dtype
    dr = torch.empty((M, N), dtype=dres_dtype, device=z.device) if store_dr else None
    programs = _bwd_programs(M, z.device)
    rows_per_program = triton.cdiv(M, programs) if M else 0
    programs = triton.cdiv(M, rows_per_program) if M else 1
    # partial[0]: dweight, partial[1]: dbias, one fp32 row per program; reduced below in one launch.
    partial = torch.empty((2, programs, N), dtype=torch.float32, device=z.device)
    if M == 0 or N == 0:
        partial.zero_()
    else:
        args = (z, weight, dy, dz if dz is not None else dy, dx, dr if dr is not None else dx,
                mean, rstd, partial[0], partial[1],
                z.stride(0), dy.stride(0), dz.stride(0) if dz is not None else 0, dx.stride(0),
                dr.stride(0) if dr is not None else 0,
                M, N, rows_per_program, rows_bucket(M))
        flags = dict(HAS_DZ=dz is not None, STORE_DR=store_dr, BLOCK_N=block_n, EMULATE_RTNE=interpret_mode())
        launch(_layer_norm_bwd_kernel, lambda c: (programs,), args, flags, _bwd_meta(block_n),
               tuned=_layer_norm_bwd_kernel_tuned)
    dw, db = partial.sum(dim=1)
    if dres_dtype is None:
        dr = None
    elif not store_dr:
        dr = dx
    return dx, dr, dw, db
