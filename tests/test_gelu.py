"""Fused bias + GELU (fastbert.ops.bias_gelu over kernels/gelu.py).

Every check compares with a float64 reference on fresh random inputs: the kernel's error must be at most
2x (outputs) / 3x (gradients) the error of PyTorch's own ``F.gelu(x + bias)`` in the same dtype, plus a
floor of one fp32 rounding step at the reference's scale (fp32 errors can be ~0 for both; below that, the
float64 comparison is noise). Without a GPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py);
every output buffer is allocated filled with NaN so an element the kernel fails to write fails the test.
"""
import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import bias_gelu
from fastbert.ops._dispatch import kernels, use_triton

# triton 3.6's interpreter warns on every loop whose bounds are tensors (numpy 2.x deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows..., features): awkward on purpose; BERT's intermediate sizes 1536 (MiniLM) and 3072 (base).
SHAPES = [(1, 1), (3, 7, 130), (33, 1023), (5, 1536), (2, 3072)]
APPROXIMATE = ["none", "tanh"]


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
    mod = kernels("gelu")
    calls = {"fwd": 0, "bwd": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(mod, "bias_gelu_fwd", counted("fwd", mod.bias_gelu_fwd))
    monkeypatch.setattr(mod, "bias_gelu_bwd", counted("bwd", mod.bias_gelu_bwd))
    return calls


def _randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)


def _err(a, ref):
    return (a.double() - ref).abs().max().item() if ref.numel() else 0.0


def _assert_close_to_ref(name, kernel, torch_, ref, factor):
    assert kernel.dtype == torch_.dtype, f"{name}: dtype {kernel.dtype}, PyTorch gives {torch_.dtype}"
    assert kernel.shape == ref.shape, f"{name}: shape {tuple(kernel.shape)}, expected {tuple(ref.shape)}"
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values (unwritten output?)"
    err_k, err_t = _err(kernel, ref), _err(torch_, ref)
    floor = torch.finfo(torch.float32).eps * (ref.abs().max().item() if ref.numel() else 0.0)
    assert err_k <= factor * err_t + floor, (
        f"{name}: max error {err_k:.3g} vs float64, PyTorch's is {err_t:.3g} (allowed {factor}x + {floor:.2g})")


def _run(fn, x, b, gy):
    x, b = (t.detach().clone().requires_grad_() for t in (x, b))
    y = fn(x, b)
    dx, db = torch.autograd.grad((y.double() * gy.double()).sum(), (x, b))
    return y, dx, db


def _check_against_reference(x, b, approximate, torch_fn=None):
    """Kernel, PyTorch in the same dtypes, float64: compare y, dx and dbias."""
    torch_fn = torch_fn or (lambda x, b: F.gelu(x + b, approximate=approximate))
    gy = _randn(x.shape, x.dtype, x.device)
    got = _run(lambda x, b: bias_gelu(x, b, approximate), x, b, gy)
    base = _run(torch_fn, x, b, gy)
    ref = _run(lambda x, b: F.gelu(x + b, approximate=approximate), x.double(), b.double(), gy)
    for name, k, t, r, factor in zip(("y", "dx", "dbias"), got, base, ref, (2, 3, 3)):
        _assert_close_to_ref(name, k, t, r, factor)


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
    x = _randn((300, 3072), torch.bfloat16, device, scale=3.0)
    b = _randn((3072,), torch.float32, device)
    _check_against_reference(x, b, "none", torch_fn=lambda x, b: F.gelu(x + b.to(x.dtype)))
    assert launches == {"fwd": 1, "bwd": 1}



@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("approximate", APPROXIMATE)
def test_matches_float64_reference(shape, dtype, approximate, device, poisoned, launches):
    # Scale 3: most of the mass in GELU's curved region, and tails out to ~+-15.
    x = _randn(shape, dtype, device, scale=3.0)
    b = _randn(shape[-1:], dtype, device)
    _check_against_reference(x, b, approximate)
    assert launches == {"fwd": 1, "bwd": 1}


@pytest.mark.parametrize("approximate", APPROXIMATE)
def test_extreme_values_stay_finite(approximate, device, poisoned, launches):
    """Large |x| (exp overflow territory in a naive tanh / sigmoid) gives exact limits, no NaN."""
    x = torch.tensor([[-1e4, -200.0, -30.0, -9.0, 0.0, 9.0, 30.0, 200.0, 1e4]], device=device)
    b = torch.zeros(9, device=device)
    _check_against_reference(x, b, approximate)


@pytest.mark.parametrize("act_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_activations_fp32_bias(act_dtype, device, poisoned, launches):
    """BERT under AMP: a half-precision matmul output plus an fp32 bias; the result keeps x's dtype."""
    x = _randn((9, 1536), act_dtype, device, scale=3.0)
    b = _randn((1536,), torch.float32, device)
    y = bias_gelu(x, b)
    assert y.dtype == act_dtype
    # PyTorch's AMP equivalent (autocast's addmm adds the bias in the activation dtype).
    _check_against_reference(x, b, "none", torch_fn=lambda x, b: F.gelu(x + b.to(x.dtype)))
    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    dx, db = torch.autograd.grad(bias_gelu(xg, bg).sum(), (xg, bg))
    assert dx.dtype == act_dtype and db.dtype == torch.float32


def test_non_contiguous_inputs(device, poisoned, launches):
    n = 300
    big = _randn((13, n + 7), torch.float32, device, scale=3.0)
    x = big[:, 5:5 + n]  # row stride n + 7
    assert not x.is_contiguous()
    _check_against_reference(x, _randn((2 * n,), torch.float32, device)[::2], "tanh")
    xt = _randn((n, 13), torch.bfloat16, device, scale=3.0).t()  # column stride 13
    _check_against_reference(xt, _randn((n,), torch.bfloat16, device), "none")
    # A non-contiguous incoming gradient.
    xg = x.clone().requires_grad_()
    gy = _randn((n + 2, 13), torch.float32, device).t()[:, :n]
    dx, = torch.autograd.grad(bias_gelu(xg, torch.zeros(n, device=device)), (xg,), grad_outputs=gy)
    xd = x.double().requires_grad_()
    dx_ref, = torch.autograd.grad(F.gelu(xd), (xd,), grad_outputs=gy.double())
    assert _err(dx, dx_ref) < 1e-5


def test_deterministic_backward(device, launches):
    x = _randn((70, 515), torch.float32, device, scale=3.0).requires_grad_()
    b = _randn((515,), torch.float32, device).requires_grad_()
    g = _randn((70, 515), torch.float32, device)
    first = torch.autograd.grad(bias_gelu(x, b), (x, b), grad_outputs=g)
    second = torch.autograd.grad(bias_gelu(x, b), (x, b), grad_outputs=g)
    assert all(torch.equal(a, c) for a, c in zip(first, second)), "backward is not deterministic"


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (3, 0)], ids=["no_rows", "no_tokens", "no_features"])
def test_empty_input(shape, device, poisoned, launches):
    n = shape[-1]
    x = torch.empty(shape, device=device).requires_grad_()
    b = _randn((n,), torch.float32, device).requires_grad_()
    y = bias_gelu(x, b)
    assert y.shape == shape
    db, = torch.autograd.grad(y.sum(), (b,))
    assert torch.equal(db, torch.zeros(n, device=device))


@pytest.mark.parametrize("case, error, match", [
    ("bias_size", ValueError, "bias has shape"),
    ("bias_2d", ValueError, "bias has shape"),
    ("approximate", ValueError, "approximate must be"),
    ("int_input", TypeError, "dtype torch.int64"),
    ("no_bias", TypeError, "must be tensors"),
    ("scalar", ValueError, "at least one dimension"),
])
def test_bad_input_is_a_clear_error(case, error, match, device):
    x = _randn((3, 16), torch.float32, device)
    b = _randn((16,), torch.float32, device)
    approximate = "none"
    if case == "bias_size":
        b = _randn((15,), torch.float32, device)
    elif case == "bias_2d":
        b = _randn((1, 16), torch.float32, device)
    elif case == "approximate":
        approximate = "erf"
    elif case == "int_input":
        x = torch.randint(0, 5, (3, 16), device=device)
    elif case == "no_bias":
        b = None
    elif case == "scalar":
        x = torch.tensor(1.0, device=device)
    with pytest.raises(error, match=match):
        bias_gelu(x, b, approximate)


def test_float64_takes_the_pytorch_path(device, launches):
    x = torch.randn(3, 40, dtype=torch.float64, device=device)
    b = torch.randn(40, dtype=torch.float64, device=device)
    assert torch.equal(bias_gelu(x, b, "tanh"), F.gelu(x + b, approximate="tanh"))
    assert launches == {"fwd": 0, "bwd": 0}


def test_pytorch_path_without_interpreter(monkeypatch):
    """On CPU without TRITON_INTERPRET the op is plain PyTorch, with the same semantics."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(4, 24, dtype=torch.bfloat16)
    b = torch.randn(24)
    assert not use_triton(x)
    y = bias_gelu(x, b)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.gelu(x + b.to(torch.bfloat16)))


# ---------------------------------------------------------------------------------------------- CUDA codegen

_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastbert.kernels.gelu as G

for fn in (G._bias_gelu_fwd_kernel, G._bias_gelu_bwd_kernel):
    for tanh in (False, True):
        consts = dict(APPROX_TANH=tanh, EMULATE_RTNE=False, BLOCK_M=8, BLOCK_N=256)
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.startswith("stride") or name in ("M", "N", "rows_per_program", "ROWS_BUCKET"):
                sig[name] = "i32"
            else:
                sig[name] = {"B": "*fp32", "DB": "*fp32"}.get(name, "*bf16")
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4))
        assert compiled.asm["cubin"], fn.__name__
        print(fn.__name__, tanh, "ok")
"""


def test_kernels_compile_for_h100():
    """Without a GPU the interpreter never runs Triton's compiler: compile the CUDA variants (bf16
    activations, fp32 bias, erf and tanh) for sm_90 in a fresh process with the interpreter off, so a
    CUDA-only codegen error shows in CI. Compiles only; nothing runs."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(" ok") == 4


def test_double_backward_is_a_clear_error(device, launches):
    x = _randn((3, 32), torch.float32, device).requires_grad_()
    b = _randn((32,), torch.float32, device)
    dx, = torch.autograd.grad(bias_gelu(x, b).pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        dx.sum().backward()


# ---------------------------------------------------------------------------------------------- torch.compile


def test_custom_ops_pass_opcheck(device, launches):
    """The launchers registered as torch custom ops (what torch.compile sees): schema, fake tensors."""
    from fastbert.ops.gelu import _bias_gelu_bwd_op, _bias_gelu_fwd_op

    x = _randn((7, 130), torch.bfloat16, device, scale=3.0)
    b = _randn((130,), torch.float32, device)
    torch.library.opcheck(_bias_gelu_fwd_op, (x, b, "none"))
    torch.library.opcheck(_bias_gelu_fwd_op, (x, b, "tanh"))
    torch.library.opcheck(_bias_gelu_bwd_op, (_randn((7, 130), torch.bfloat16, device), x, b, "none"))


def test_torch_compile_fullgraph_matches_eager(device, launches):
    """torch.compile traces the op without a graph break and runs the same kernels, forward and backward."""
    x = _randn((2, 5, 96), torch.bfloat16, device, scale=3.0).requires_grad_()
    b = _randn((96,), torch.float32, device).requires_grad_()
    g = _randn((2, 5, 96), torch.float32, device)

    def f(x, b):
        return (bias_gelu(x, b).float() * g).sum() + (bias_gelu(x.float(), b, "tanh") * g).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, want = compiled(x, b), f(x, b)
    assert torch.equal(got, want)
    for a, c in zip(torch.autograd.grad(got, (x, b)), torch.autograd.grad(want, (x, b))):
        assert torch.equal(a, c)
