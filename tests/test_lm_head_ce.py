"""Fused vocabulary projection + cross-entropy (kernels/lm_head_ce.py) against float64, forward and every
gradient, on awkward shapes; ignored rows; the MLM loss of pre-training through it equals the unfused one."""
import pytest
import torch
import torch.nn.functional as F

from fastbert.ops.lm_head_ce import linear_cross_entropy

IGNORE = -100


def _inputs(n, k, v, dtype, device, ignored=0.3, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, k, generator=g) * 0.5
    weight = torch.randn(v, k, generator=g) * 0.3
    b = torch.randn(v, generator=g) * 0.5 if bias else None
    target = torch.randint(0, v, (n,), generator=g)
    target[torch.rand(n, generator=g) < ignored] = IGNORE
    to = lambda t: None if t is None else t.to(device, dtype).requires_grad_()  # noqa: E731
    return to(hidden), to(weight), to(b), target.to(device)


def _reference(hidden, weight, bias, target):
    """float64 per-row loss and its gradients for the upstream gradient ``dloss``."""
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b = None if bias is None else bias.detach().double().requires_grad_()
    logits = F.linear(h, w, b)
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    return loss, logits.argmax(-1), (h, w, b)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, k, v, bias", [(37, 24, 101, True), (1, 16, 67, False), (70, 40, 200, True)])
def test_matches_float64(n, k, v, bias, dtype, device):
    hidden, weight, b, target = _inputs(n, k, v, dtype, device, bias=bias)
    loss, argmax = linear_cross_entropy(hidden, weight, b, target, ignore_index=IGNORE)
    ref_loss, ref_arg, leaves = _reference(hidden, weight, b, target)
    assert loss.dtype == torch.float32 and loss.shape == (n,)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(loss.double().cpu(), ref_loss.cpu(), rtol=tol, atol=tol)
    valid = target != IGNORE
    assert torch.all(loss[~valid] == 0)
    # argmax: equal wherever the top two logits are not within rounding of each other
    logits64 = F.linear(*[t.detach().double() for t in leaves[:2]], None if b is None else leaves[2].detach())
    top2 = logits64.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert torch.equal(argmax[clear].cpu(), ref_arg[clear].cpu())

    dloss = torch.randn(n, device=device) * valid.float()  # fresh upstream gradient, as from a weighted sum
    loss.backward(dloss)
    ref_loss.backward(dloss.double())
    # the kernel's error is within 2x (plus rounding) of PyTorch's own in the same dtype
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    b2 = None if b is None else b.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(h2, w2, b2).float(), target, ignore_index=IGNORE, reduction="none").backward(dloss)
    pairs = [("hidden", hidden, h2, leaves[0]), ("weight", weight, w2, leaves[1])]
    if b is not None:
        pairs.append(("bias", b, b2, leaves[2]))
    for name, ours, torch_same, ref in pairs:
        assert ours.grad is not None and ours.grad.dtype == dtype, name
        err, base = _rel(ours.grad.cpu(), ref.grad), _rel(torch_same.grad.cpu(), ref.grad)
        assert err <= 2 * base + (1e-6 if dtype == torch.float32 else 2e-3), (name, err, base)


def test_all_rows_ignored(device):
    hidden, weight, b, target = _inputs(9, 16, 50, torch.float32, device)
    target[:] = IGNORE
    loss, _ = linear_cross_entropy(hidden, weight, b, target, ignore_index=IGNORE)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0) and torch.all(b.grad == 0)


def test_bad_inputs_raise(device):
    hidden, weight, b, target = _inputs(4, 16, 20, torch.float32, device)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_cross_entropy(hidden.half(), weight, b, target)
    with pytest.raises(ValueError, match="target must be"):
        linear_cross_entropy(hidden, weight, b, target[:3])
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :8], b, target)


def test_pretraining_loss_fused_equals_unfused(device, monkeypatch):
    """PreTrainingLoss through the fused op (Triton path) gives the loss, sums and gradients of the unfused one."""
    from fastbert import BertConfig, BertForPreTraining
    from fastbert.train import pretrain

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     backend="torch")
    model = BertForPreTraining(cfg).to(device)
    lens = [7, 12, 3]
    T = sum(lens)
    labels = torch.full((T,), IGNORE)
    pick = torch.rand(T) < 0.4
    pick[0] = True
    labels[pick] = torch.randint(0, 90, (int(pick.sum()),))
    batch = {"input_ids": torch.randint(0, 90, (T,)), "token_type_ids": torch.zeros(T, dtype=torch.long),
             "cu_seqlens": torch.tensor([0, 7, 19, 22], dtype=torch.int32), "max_seqlen": 12, "labels": labels,
             "next_sentence_label": torch.tensor([0, 1, 0])}
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    denom = pretrain.count(batch).to(device)
    from fastbert.ops._dispatch import kernels

    module, launches = kernels("lm_head_ce"), []
    real_fwd = module.lm_head_ce_fwd
    monkeypatch.setattr(module, "lm_head_ce_fwd", lambda *a: launches.append(1) or real_fwd(*a))
    results = []
    for fused in (False, True):
        model.zero_grad()
        loss, sums = pretrain.PreTrainingLoss(model, fused_loss=fused)(batch, denom)
        loss.backward()
        results.append((loss.detach(), sums, {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None}))
    (l0, s0, g0), (l1, s1, g1) = results
    assert len(launches) == 1  # the fused kernel ran, once, in the fused run only
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


_COMPILE = r"""
import json, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import fastbert.kernels.lm_head_ce as C

C.interpret_mode = lambda: False
for dtype, torch_dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
    import torch
    for fn, backward in ((C._lm_ce_fwd_kernel, False), (C._lm_ce_bwd_kernel, True)):
        blocks, warps = C._config(getattr(torch, torch_dtype), backward)
        consts = dict(HAS_BIAS=True, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", **blocks)
        sig = {n: "constexpr" if n in consts else "*" + dtype if n in ("H", "W", "B") else "*i64"
               if n in ("T", "ARGMAX") else "*fp32" if n in ("LOSS", "LSE", "DLOSS", "DH", "DW", "DB") else "i32"
               for n in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=warps, num_stages=3))
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(k.asm["ptx"])
            f.flush()
            r = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                               capture_output=True, text=True, check=True)
        print(json.dumps({"kernel": fn.__name__, "dtype": dtype, "report": r.stderr}))
"""


def test_sm90_compile_has_no_spills():
    """Compile both kernels for sm_90 with the configs a GPU launches (no GPU needed) and read ptxas's report."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    res = subprocess.run([sys.executable, "-c", _COMPILE], env=dict(os.environ, TRITON_INTERPRET="0"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert "0 bytes spill stores" in row["report"] and "Used" in row["report"], row
