"""Host round trips on the Triton path, counted: at most one device->host read per forward (input checks
and unpadding metadata fused into one), none in backward, none when the caller hands host-known packed
inputs (the tokenizer's packed output). On a GPU each such read stalls the CPU until the GPU catches up.

On this CPU machine (Triton interpreter) every tensor lives in host memory, so the counter counts the
operations that *would* read a device tensor back on a GPU: ``.item()`` / ``int()`` / ``bool()`` / ``float()``
(aten._local_scalar_dense), ``.tolist()``, ``.cpu()`` / ``.to("cpu")`` / ``.numpy()``, and the ops whose
output size depends on the data (``nonzero``, ``masked_select``, boolean indexing, ``unique``), outside the
Triton launches themselves (the interpreter's own host work). Tensors the test hands in as host-known are
not counted."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import HAS_CUDA
import fastbert.model_inputs
from fastbert import BertConfig, BertModel

# The counter runs the model on CPU tensors under the Triton interpreter; on a GPU machine (no interpreter)
# the same property is checked with torch.cuda.set_sync_debug_mode in tests/test_gpu_syncs.py.
pytestmark = pytest.mark.skipif(HAS_CUDA, reason="counts host reads under the Triton interpreter (CPU machines)")
aten = torch.ops.aten
_DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                   aten.nonzero_static.default, aten._unique2.default, aten.unique_consecutive.default,
                   aten.index.Tensor}


class HostReads(TorchDispatchMode):
    """Counts device->host reads (see the module docstring), with where they came from."""

    def __init__(self, host_known=()):
        super().__init__()
        self.host = {t.untyped_storage().data_ptr() for t in host_known}
        self.reads, self._in_launch = [], 0

    def _record(self, what, t):
        if self._in_launch or (isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.host):
            return
        import traceback

        frame = next((f for f in reversed(traceback.extract_stack()[:-2]) if "/fastbert/" in f.filename
                      and "test_host_syncs" not in f.filename), None)
        self.reads.append(f"{what} at {frame.filename.split('/fastbert/')[-1]}:{frame.lineno}" if frame else what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _DATA_DEPENDENT:
            index_bool = func is aten.index.Tensor and any(
                i is not None and i.dtype == torch.bool for i in args[1])
            if func is not aten.index.Tensor or index_bool:
                self._record(str(func), args[0])
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def patched(self):
        """Also count the Python-level reads that do not dispatch on CPU tensors, and pause inside launches."""
        import triton.runtime.interpreter as interp

        originals = {}

        def wrap(name):
            orig = getattr(torch.Tensor, name)
            originals[name] = orig

            def method(t, *a, **k):
                if name != "to" or _to_cpu(a, k):
                    self._record(f"Tensor.{name}", t)
                return orig(t, *a, **k)
            setattr(torch.Tensor, name, method)

        for name in ("tolist", "cpu", "numpy", "to"):
            wrap(name)
        call = interp.InterpretedFunction.__call__

        def launch(fn, *a, **k):
            self._in_launch += 1
            try:
                return call(fn, *a, **k)
            finally:
                self._in_launch -= 1

        get_item = interp.InterpretedFunction.__getitem__

        def getitem(fn, grid):
            run = get_item(fn, grid)

            def launched(*a, **k):
                self._in_launch += 1
                try:
                    return run(*a, **k)
                finally:
                    self._in_launch -= 1
            return launched

        interp.InterpretedFunction.__call__ = launch
        interp.InterpretedFunction.__getitem__ = getitem
        try:
            with self:
                yield self
        finally:
            for name, orig in originals.items():
                setattr(torch.Tensor, name, orig)
            interp.InterpretedFunction.__call__ = call
            interp.InterpretedFunction.__getitem__ = get_item


def _to_cpu(args, kwargs):
    dev = kwargs.get("device", args[0] if args else None)
    return dev is not None and not isinstance(dev, torch.dtype) and torch.device(dev).type == "cpu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, backend="triton",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg)


def _padded(B=3, S=11):
    ids = torch.randint(0, 120, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def test_counter_catches_planted_reads(model):
    ids, mask = _padded()
    with HostReads().patched() as counter:
        int(ids[0, 0])
        ids.nonzero()
        ids.tolist()
        ids[mask.bool()]
    assert len(counter.reads) == 4, counter.reads


def test_padded_forward_reads_once(model):
    ids, mask = _padded()
    model.eval()
    with torch.no_grad(), HostReads().patched() as counter:
        model(input_ids=ids, attention_mask=mask)
    assert len(counter.reads) == 1, counter.reads


def test_padded_unpadded_batch_reads_once(model):
    ids = torch.randint(0, 120, (2, 9))
    model.eval()
    with torch.no_grad(), HostReads().patched() as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(counter.reads) == 1, counter.reads


def test_padded_forward_backward_reads_once(model):
    ids, mask = _padded()
    model.train()
    with HostReads().patched() as counter:
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        n_forward = len(counter.reads)
        (out.float() ** 2).sum().backward()
    assert n_forward == 1 and len(counter.reads) == 1, counter.reads


def test_packed_device_lengths_read_once(model):
    cu = torch.tensor([0, 5, 12, 13], dtype=torch.int32)
    ids = torch.randint(0, 120, (13,))
    model.eval()
    with torch.no_grad(), HostReads(host_known=()).patched() as counter:
        model(input_ids=ids, cu_seqlens=cu, max_seqlen=7)
    assert len(counter.reads) == 1, counter.reads


def test_packed_host_known_inputs_read_nothing(model, monkeypatch):
    """The tokenizer's packed output (ids and cu_seqlens in host memory) for a model on a GPU is checked on the
    host and copied: no device read. (Here the model is on the CPU too, so the host path is switched on.)"""
    cu = torch.tensor([0, 5, 12, 13], dtype=torch.int32)
    ids = torch.randint(0, 120, (13,))
    model.eval()
    monkeypatch.setattr(fastbert.model_inputs, "host_known", lambda *args: True)
    with pytest.raises(ValueError, match="input_ids holds ids outside"):
        model(input_ids=torch.full((13,), 500), cu_seqlens=cu, max_seqlen=7)
    with torch.no_grad(), HostReads(host_known=(cu, ids)).patched() as counter:
        model(input_ids=ids, cu_seqlens=cu, max_seqlen=7)
    assert counter.reads == [], counter.reads


def test_fused_qkv_follows_every_parameter_update(model):
    """The fused Q/K/V is never stale: fused AdamW (the HF Trainer's default) updates parameters in place
    without bumping their version counters, so no cache keyed on them could notice."""
    attn = model.encoder.layer[0].attention.self
    x = torch.randn(5, attn.query.in_features)

    def separate():
        return torch.cat([attn.query(x), attn.key(x), attn.value(x)], -1)

    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.linear(x, *attn._fused_qkv()), separate())
    opt = torch.optim.AdamW(attn.parameters(), lr=0.1, fused=True)
    for p in attn.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in attn.parameters()]
    opt.step()
    assert versions == [p._version for p in attn.parameters()]  # no trace of the update...
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.linear(x, *attn._fused_qkv()), separate())  # ...yet fresh
    w, _ = attn._fused_qkv()  # recording autograd: differentiable
    assert w.requires_grad and w.grad_fn is not None


_NOT_LAUNCHES = {"empty", "promote_types", "view", "_unsafe_view", "unbind", "select", "slice", "t", "transpose",
                 "expand", "reshape", "as_strided", "detach", "alias", "unsqueeze", "squeeze", "permute", "split",
                 "lift_fresh", "empty_like", "new_empty"}


class Launches(HostReads):
    """Counts the aten ops that launch a kernel (allocations and views excluded) and the Triton launches."""

    def __init__(self):
        super().__init__()
        self.aten, self.triton = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not self._in_launch and name not in _NOT_LAUNCHES:
            self.aten.append(name)
        return func(*args, **(kwargs or {}))


def _launches(layers, train):
    import triton.runtime.interpreter as interp

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, backend="triton",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(cfg).train(train)
    ids, mask = _padded()
    counter = Launches()
    get_item = interp.InterpretedFunction.__getitem__

    def getitem(fn, grid):
        counter.triton.append(fn.fn.__name__)
        return get_item(fn, grid)

    with torch.set_grad_enabled(train):
        model(input_ids=ids, attention_mask=mask)  # builds the inference QKV cache
        interp.InterpretedFunction.__getitem__ = getitem
        try:
            with counter.patched():
                model(input_ids=ids, attention_mask=mask)
        finally:
            interp.InterpretedFunction.__getitem__ = get_item
    return counter


@pytest.mark.parametrize("train, gemms", [(False, 6), (True, 6)])
def test_launches_per_layer(train, gemms):
    """Per encoder layer: 4 GEMMs (QKV, attention output, intermediate, output), the 2 Q/K/V concatenations
    (weight and bias; never cached, see test_fused_qkv_follows_every_parameter_update) and 4 Triton kernels
    (attention, 2 residual+LayerNorm, bias+GELU)."""
    one, two = _launches(1, train), _launches(2, train)
    aten = len(two.aten) - len(one.aten)
    triton = len(two.triton) - len(one.triton)
    assert triton == 4, two.triton
    assert aten == gemms, sorted(two.aten)


def test_training_with_dropout_reads_once():
    """Attention dropout's seed is drawn on the device: training with dropout still reads back once."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, backend="triton",
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = BertModel(cfg).train()
    ids, mask = _padded()
    with HostReads().patched() as counter:
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        (out.float() ** 2).sum().backward()
    assert len(counter.reads) == 1, counter.reads



def test_pretraining_loss_selects_masked_rows_without_a_host_read():
    """The pre-training loss takes the masked positions the collate found on the host (``mlm_index``): the step
    adds no read of its own to the model's one (a ``nonzero`` on the labels would be a second)."""
    from fastbert import BertConfig, BertForPreTraining
    from fastbert.train.data import IGNORE_INDEX
    from fastbert.train.pretrain import PreTrainingLoss

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, backend="triton")).eval()
    lengths = [5, 9]
    labels = torch.full((14,), IGNORE_INDEX)
    labels[[1, 7, 12]] = torch.tensor([5, 6, 7])
    batch = {"input_ids": torch.randint(5, 120, (14,)), "token_type_ids": torch.zeros(14, dtype=torch.long),
             "labels": labels, "next_sentence_label": torch.tensor([0, 1]),
             "cu_seqlens": torch.tensor([0, 5, 14], dtype=torch.int32), "max_seqlen": max(lengths)}
    denom = torch.tensor([3.0, 2.0])
    task = PreTrainingLoss(model)
    with HostReads().patched() as without_index:
        ref = task(batch, denom)[0]
    batch["mlm_index"] = torch.tensor([1, 7, 12])
    with HostReads().patched() as with_index:
        loss = task(batch, denom)[0]
    torch.testing.assert_close(loss, ref)
    assert any("nonzero" in r for r in without_index.reads), without_index.reads
    assert not any("nonzero" in r for r in with_index.reads), with_index.reads
    assert len(with_index.reads) == len(without_index.reads) - 1, (with_index.reads, without_index.reads)
