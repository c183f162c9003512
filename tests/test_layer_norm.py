"""Fused residual + LayerNorm (fastbert.ops.layer_norm over kernels/layer_norm.py).

Every check compares with a float64 reference on fresh random inputs: the kernel's error must be at most
2x (outputs) / 3x (gradients) the error of PyTorch's own op in the same dtype, plus a floor of one fp32
rounding step at the reference's scale (fp32 errors can be ~0 for both; below that, the float64 comparison
is noise). Without a GPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py); every output buffer
is allocated filled with NaN so an element the kernel fails to write fails the test.
"""
import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import layer_norm
from fastbert.ops._dispatch import kernels, use_triton

# triton 3.6's interpreter warns on every loop whose bounds are tensors (numpy 2.x deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows..., hidden): awkward on purpose; 1 feature, BERT sizes, non-powers of two, large hidden.
SHAPES = [(1, 1), (3, 128), (7, 312), (2, 5, 384), (33, 1023), (5, 4096)]


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def poisoned(monkeypatch):
    """Every float tensor allocated with torch.empty / empty_like starts as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty_like(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@pytest.fixture
def launches(monkeypatch, device):
    """Counts kernel launches, so a silent fall-back to PyTorch cannot pass for the kernel."""
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the Triton path cannot run")
    mod = kernels("layer_norm")
    calls = {"fwd": 0, "bwd": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(mod, "layer_norm_fwd", counted("fwd", mod.layer_norm_fwd))
    monkeypatch.setattr(mod, "layer_norm_bwd", counted("bwd", mod.layer_norm_bwd))
    return calls


def _randn(shape, dtype, device, scale=1.0, shift=0.0):
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale + shift).to(dtype)


def _run(fn, inputs, grads_out):
    """Outputs of fn(*inputs) and the gradients of sum(out * g) w.r.t. every input requiring grad."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * g.double()).sum() for o, g in zip(outs, grads_out))
    wrt = [t for t in leaves if t.requires_grad]
    return outs, torch.autograd.grad(loss, wrt)


def _err(a, ref):
    return (a.double() - ref).abs().max().item() if ref.numel() else 0.0


def _assert_close_to_ref(name, kernel, torch_, ref, factor):
    assert kernel.dtype == torch_.dtype, f"{name}: dtype {kernel.dtype}, PyTorch gives {torch_.dtype}"
    assert kernel.shape == ref.shape, f"{name}: shape {tuple(kernel.shape)}, expected {tuple(ref.shape)}"
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values (unwritten output?)"
    err_k, err_t = _err(kernel, ref), _err(torch_, ref)
    scale = ref.abs().max().item() if ref.numel() else 0.0
    floor = torch.finfo(torch.float32).eps * scale
    if err_t != err_t or err_t == float("inf"):
        # PyTorch itself fails here (fp16 with eps=1e-12 and one feature: eps underflows, 0/0): hold the
        # kernel to one rounding step of its dtype instead.
        err_t, floor = 0.0, torch.finfo(kernel.dtype).eps * scale
    assert err_k <= factor * err_t + floor, (
        f"{name}: max error {err_k:.3g} vs float64, PyTorch's is {err_t:.3g} (allowed {factor}x + {floor:.2g})")


def _ref_layer_norm(x, w, b, eps, r=None, return_residual=False):
    z = x if r is None else x + r
    y = F.layer_norm(z, (z.shape[-1],), w, b, eps)
    return (y, z) if return_residual else y


def _check_against_reference(inputs, eps, return_residual, names):
    """Run the kernel, PyTorch in the same dtypes and float64; compare outputs and every gradient."""
    x, w, b, r = inputs
    has_r = r is not None
    args = [x, w, b] + ([r] if has_r else [])

    def kernel_fn(x, w, b, r=None):
        return layer_norm(x, w, b, eps=eps, residual=r, return_residual=return_residual)

    def torch_fn(x, w, b, r=None):
        return _ref_layer_norm(x, w, b, eps, r, return_residual)

    out_dtype = x.dtype if not has_r else torch.promote_types(x.dtype, r.dtype)
    grads_out = [_randn(x.shape, out_dtype, x.device) for _ in range(2 if return_residual else 1)]
    outs_k, grads_k = _run(kernel_fn, args, grads_out)
    outs_t, grads_t = _run(torch_fn, args, grads_out)
    outs_r, grads_r = _run(torch_fn, [a.double().requires_grad_(a.requires_grad) for a in args], grads_out)
    for i, (k, t, ref) in enumerate(zip(outs_k, outs_t, outs_r)):
        _assert_close_to_ref(("y", "x + residual")[i], k, t, ref, 2)
    for name, k, t, ref in zip(names, grads_k, grads_t, grads_r):
        _assert_close_to_ref(f"d{name}", k, t, ref, 3)


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True)
def _fixed_meta_parameters(request, monkeypatch):
    """Launch the fixed heuristic configs (FASTBERT_AUTOTUNE=0): on a GPU, autotuning every shape of this
    file would compile every config. test_autotuned_launch covers the tuned path. (The interpreter never
    autotunes.)"""
    if "autotuned" not in request.node.name:
        monkeypatch.setenv("FASTBERT_AUTOTUNE", "0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autotuning needs CUDA (the interpreter cannot)")
def test_autotuned_launch(device, launches):
    """The autotuned launch (the default on CUDA), BERT-base sizes, AMP dtypes."""
    x = _randn((300, 768), torch.bfloat16, device).requires_grad_()
    r = _randn((300, 768), torch.bfloat16, device).requires_grad_()
    w = _randn((768,), torch.float32, device, shift=1.0).requires_grad_()
    b = _randn((768,), torch.float32, device).requires_grad_()
    _check_against_reference((x, w, b, r), 1e-12, True, ["x", "weight", "bias", "residual"])
    assert launches == {"fwd": 1, "bwd": 1}



@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mode", ["plain", "residual", "residual+out"])
def test_matches_float64_reference(shape, dtype, mode, device, poisoned, launches):
    n = shape[-1]
    x = _randn(shape, dtype, device, scale=2.0, shift=0.5).requires_grad_()
    r = _randn(shape, dtype, device).requires_grad_() if mode != "plain" else None
    w = _randn((n,), dtype, device, scale=0.5, shift=1.0).requires_grad_()
    b = _randn((n,), dtype, device).requires_grad_()
    names = ["x", "weight", "bias"] + (["residual"] if r is not None else [])
    _check_against_reference((x, w, b, r), 1e-12, mode == "residual+out", names)
    assert launches == {"fwd": 1, "bwd": 1}


@pytest.mark.parametrize("act_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_activations_fp32_parameters(act_dtype, device, poisoned, launches):
    """BERT under AMP: half-precision activations, fp32 LayerNorm parameters."""
    shape, n = (9, 768), 768
    x = _randn(shape, act_dtype, device, scale=3.0).requires_grad_()
    r = _randn(shape, act_dtype, device).requires_grad_()
    w = _randn((n,), torch.float32, device, scale=0.3, shift=1.0).requires_grad_()
    b = _randn((n,), torch.float32, device).requires_grad_()
    y = layer_norm(x, w, b, residual=r)
    assert y.dtype == act_dtype
    _check_against_reference((x, w, b, r), 1e-12, True, ["x", "weight", "bias", "residual"])
    assert launches["fwd"] >= 1 and launches["bwd"] >= 1


@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)],
                         ids=["bf16+fp32", "fp16+bf16"])
def test_residual_dtype_is_promoted(x_dtype, r_dtype, device, poisoned, launches):
    """x + residual follows PyTorch's promotion (both cases give fp32); each gradient keeps its input's dtype."""
    shape, n = (6, 312), 312
    x = _randn(shape, x_dtype, device).requires_grad_()
    r = _randn(shape, r_dtype, device).requires_grad_()
    w = _randn((n,), torch.float32, device, shift=1.0).requires_grad_()
    b = _randn((n,), torch.float32, device).requires_grad_()
    y, z = layer_norm(x, w, b, residual=r, return_residual=True)
    assert y.dtype == z.dtype == torch.promote_types(x_dtype, r_dtype) == torch.float32
    dx, dr = torch.autograd.grad((y * torch.randn_like(y)).sum(), (x, r))
    assert dx.dtype == x_dtype and dr.dtype == r_dtype
    _check_against_reference((x, w, b, r), 1e-12, True, ["x", "weight", "bias", "residual"])


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_eps_is_used(eps, device, poisoned, launches):
    # Variance ~1e-6: eps=1e-5 changes the result a lot, so a kernel ignoring eps fails.
    x = _randn((5, 130), torch.float32, device, scale=1e-3).requires_grad_()
    w = _randn((130,), torch.float32, device, shift=1.0).requires_grad_()
    b = _randn((130,), torch.float32, device).requires_grad_()
    _check_against_reference((x, w, b, None), eps, False, ["x", "weight", "bias"])


def test_non_contiguous_inputs(device, poisoned, launches):
    n = 200
    big = _randn((11, n + 9), torch.float16, device)
    x = big[:, 4:4 + n].requires_grad_()  # row stride n + 9
    r = _randn((n, 11), torch.float16, device).t().requires_grad_()  # column stride 11
    w = _randn((2 * n,), torch.float16, device, shift=1.0)[::2].requires_grad_()  # stride 2
    b = _randn((n,), torch.float16, device).requires_grad_()
    assert not x.is_contiguous() and not r.is_contiguous() and not w.is_contiguous()
    _check_against_reference((x, w, b, r), 1e-12, True, ["x", "weight", "bias", "residual"])
    # A non-contiguous incoming gradient.
    y = layer_norm(x, w, b, residual=r)
    gy = _randn((n + 3, 11), torch.float16, device).t()[:, :n]
    dx, = torch.autograd.grad(y, (x,), grad_outputs=gy)
    xd = x.detach().double().requires_grad_()
    dx_ref, = torch.autograd.grad(_ref_layer_norm(xd, w.double(), b.double(), 1e-12, r.double()), (xd,),
                                  grad_outputs=gy.double())
    assert gy.stride(-1) != 1
    assert _err(dx, dx_ref) < 1e-2 * dx_ref.abs().max().item()  # fp16: a few ulps of the largest value


def test_only_residual_output_used(device, poisoned, launches):
    """y unused: the gradient flows through the returned x + residual alone (identity)."""
    x = _randn((4, 96), torch.float32, device).requires_grad_()
    r = _randn((4, 96), torch.float32, device).requires_grad_()
    w = _randn((96,), torch.float32, device).requires_grad_()
    b = _randn((96,), torch.float32, device).requires_grad_()
    _, z = layer_norm(x, w, b, residual=r, return_residual=True)
    g = _randn((4, 96), torch.float32, device)
    dx, dr, dw, db = torch.autograd.grad(z, (x, r, w, b), grad_outputs=g)
    assert torch.equal(dx, g) and torch.equal(dr, g)
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_no_grad_forward_and_deterministic_backward(device, poisoned, launches):
    x = _randn((37, 384), torch.float32, device).requires_grad_()
    r = _randn((37, 384), torch.float32, device)
    w = _randn((384,), torch.float32, device).requires_grad_()
    b = _randn((384,), torch.float32, device).requires_grad_()
    with torch.no_grad():
        y = layer_norm(x, w, b, residual=r)
    ref = _ref_layer_norm(x.double(), w.double(), b.double(), 1e-12, r.double())
    assert _err(y, ref) < 1e-5
    g = _randn((37, 384), torch.float32, device)
    first = torch.autograd.grad(layer_norm(x, w, b, residual=r), (x, w, b), grad_outputs=g)
    second = torch.autograd.grad(layer_norm(x, w, b, residual=r), (x, w, b), grad_outputs=g)
    assert all(torch.equal(a, c) for a, c in zip(first, second)), "backward is not deterministic"


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (3, 0)], ids=["no_rows", "no_tokens", "no_features"])
def test_empty_input(shape, device, poisoned, launches):
    n = shape[-1]
    x = torch.empty(shape, device=device).requires_grad_()
    r = torch.empty(shape, device=device)
    w = _randn((n,), torch.float32, device).requires_grad_()
    b = _randn((n,), torch.float32, device).requires_grad_()
    y, z = layer_norm(x, w, b, residual=r, return_residual=True)
    assert y.shape == z.shape == shape
    dw, db = torch.autograd.grad(y.sum() + z.sum(), (w, b))
    assert torch.equal(dw, torch.zeros(n, device=device)) and torch.equal(db, torch.zeros(n, device=device))


@pytest.mark.parametrize("case, error, match", [
    ("weight_size", ValueError, "weight has shape"),
    ("bias_size", ValueError, "bias has shape"),
    ("residual_shape", ValueError, "residual has shape"),
    ("int_input", TypeError, "dtype torch.int64"),
    ("no_weight", TypeError, "weight and bias are required"),
    ("scalar", ValueError, "at least one dimension"),
])
def test_bad_input_is_a_clear_error(case, error, match, device):
    x = _randn((3, 16), torch.float32, device)
    w = _randn((16,), torch.float32, device)
    b = _randn((16,), torch.float32, device)
    kwargs = {}
    if case == "weight_size":
        w = _randn((15,), torch.float32, device)
    elif case == "bias_size":
        b = _randn((3, 16), torch.float32, device)
    elif case == "residual_shape":
        kwargs["residual"] = _randn((16,), torch.float32, device)
    elif case == "int_input":
        x = torch.randint(0, 5, (3, 16), device=device)
    elif case == "no_weight":
        w = None
    elif case == "scalar":
        x = torch.tensor(1.0, device=device)
    with pytest.raises(error, match=match):
        layer_norm(x, w, b, **kwargs)


def test_float64_and_huge_hidden_take_the_pytorch_path(device, launches):
    x = torch.randn(3, 40, dtype=torch.float64, device=device)
    w, b = torch.randn(40, dtype=torch.float64, device=device), torch.randn(40, dtype=torch.float64, device=device)
    assert torch.equal(layer_norm(x, w, b, eps=1e-5), F.layer_norm(x, (40,), w, b, 1e-5))
    from fastbert.ops.layer_norm import MAX_HIDDEN_SIZE

    assert MAX_HIDDEN_SIZE == kernels("layer_norm").MAX_HIDDEN_SIZE  # the dispatch knows the kernel's limit
    n = kernels("layer_norm").MAX_HIDDEN_SIZE + 1
    x, w, b = torch.randn(2, n, device=device), torch.randn(n, device=device), torch.randn(n, device=device)
    torch.testing.assert_close(layer_norm(x, w, b), F.layer_norm(x, (n,), w, b, 1e-12))
    assert launches == {"fwd": 0, "bwd": 0}
    with pytest.raises(ValueError, match="too large for the fused LayerNorm"):
        kernels("layer_norm").layer_norm_fwd(x, w, b, 1e-12)


def test_pytorch_path_without_interpreter(monkeypatch):
    """On CPU without TRITON_INTERPRET the op is plain PyTorch, with the same semantics."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(4, 24, dtype=torch.bfloat16)
    r = torch.randn(4, 24, dtype=torch.bfloat16)
    w, b = torch.randn(24), torch.randn(24)
    assert not use_triton(x)
    y, z = layer_norm(x, w, b, eps=1e-6, residual=r, return_residual=True)
    assert y.dtype == z.dtype == torch.bfloat16
    assert torch.equal(z, x + r)
    torch.testing.assert_close(y, F.layer_norm((x + r).float(), (24,), w, b, 1e-6).to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------- CUDA codegen

_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastbert.kernels.layer_norm as L

fp32 = {"W": "*fp32", "B": "*fp32", "Mean": "*fp32", "Rstd": "*fp32", "DW": "*fp32", "DB": "*fp32", "DR": "*fp32"}
for fn, consts in [
    (L._layer_norm_fwd_kernel, dict(HAS_RESIDUAL=True, STORE_Z=True, STORE_STATS=True, EMULATE_RTNE=False,
                                    BLOCK_N=1024)),
    (L._layer_norm_bwd_kernel, dict(HAS_DZ=True, STORE_DR=True, EMULATE_RTNE=False, BLOCK_M=4, BLOCK_N=1024)),
]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "eps":
            sig[name] = "fp32"
        elif name.startswith("stride") or name in ("M", "N", "rows_per_program", "ROWS_BUCKET"):
            sig[name] = "i32"
        else:
            sig[name] = fp32.get(name, "*bf16")
    compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=4))
    assert compiled.asm["cubin"], fn.__name__
    print(fn.__name__, "ok")
"""


def test_kernels_compile_for_h100():
    """Without a GPU the interpreter never runs Triton's compiler: compile the CUDA variants (bf16
    activations, fp32 parameters, every optional path on) for sm_90 in a fresh process with the interpreter
    off, so a CUDA-only codegen error shows in CI. Compiles only; nothing runs."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(" ok") == 2


def test_double_backward_is_a_clear_error(device, launches):
    x = _randn((3, 32), torch.float32, device).requires_grad_()
    w = _randn((32,), torch.float32, device).requires_grad_()
    b = _randn((32,), torch.float32, device).requires_grad_()
    dx, = torch.autograd.grad(layer_norm(x, w, b).pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        dx.sum().backward()


# ---------------------------------------------------------------------------------------------- torch.compile


def test_custom_ops_pass_opcheck(device, launches):
    """The launchers registered as torch custom ops (what torch.compile sees): schema, fake tensors."""
    from fastbert.ops.layer_norm import _layer_norm_bwd_op, _layer_norm_fwd_op

    x = _randn((7, 130), torch.bfloat16, device)
    r = _randn((7, 130), torch.float32, device)
    w, b = _randn((130,), torch.float32, device), _randn((130,), torch.float32, device)
    torch.library.opcheck(_layer_norm_fwd_op, (x, r, w, b, 1e-12, True, True))
    torch.library.opcheck(_layer_norm_fwd_op, (x, None, w, b, 1e-5, False, False))
    y, z, mean, rstd = _layer_norm_fwd_op(x, r, w, b, 1e-12, True, True)
    dy = _randn((7, 130), torch.float32, device)
    torch.library.opcheck(_layer_norm_bwd_op, (dy, z, w, mean, rstd, dy, torch.bfloat16, torch.float32))
    torch.library.opcheck(_layer_norm_bwd_op, (dy, z, w, mean, rstd, None, torch.float32, torch.float32))


def test_torch_compile_fullgraph_matches_eager(device, launches):
    """torch.compile traces the op without a graph break and runs the same kernels, forward and backward."""
    x = _randn((2, 5, 96), torch.bfloat16, device).requires_grad_()
    r = _randn((2, 5, 96), torch.float32, device).requires_grad_()
    w = _randn((96,), torch.float32, device, shift=1.0).requires_grad_()
    b = _randn((96,), torch.float32, device).requires_grad_()
    g = _randn((2, 5, 96), torch.float32, device)

    def f(x, r, w, b):
        y, z = layer_norm(x, w, b, residual=r, return_residual=True)
        return ((y * g).sum() + z.sum()) + (layer_norm(x, w.to(x.dtype), b, eps=1e-5).float() * g).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, want = compiled(x, r, w, b), f(x, r, w, b)
    assert torch.equal(got, want)
    for a, c in zip(torch.autograd.grad(got, (x, r, w, b)), torch.autograd.grad(want, (x, r, w, b))):
        assert torch.equal(a, c)
