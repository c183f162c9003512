"""The pre-training loss against Hugging Face, gradient accumulation, the schedule, checkpoints written
atomically."""
import itertools
from pathlib import Path

import pytest
import torch

from fastbert import BertConfig, BertForPreTraining
from fastbert.train import checkpoint as ckpt
from fastbert.train.data import PretrainingStream, collate_packed, load_tokenizer, packed_to_padded, read_vocab
from fastbert.train.loop import DistInfo, Trainer, TrainArgs, linear_schedule
from fastbert.train.pretrain import LOG_FIELDS, PreTrainingLoss, count, report

CORPUS = Path(__file__).parent / "data" / "fortunes_science.txt"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def stream(minilm_dir):
    tok, vocab = load_tokenizer(minilm_dir), read_vocab(minilm_dir)
    return PretrainingStream([CORPUS], tok, vocab, max_seq_length=48, seed=1)


def _batches(stream, n, size):
    it = stream.instances(0)
    return [collate_packed([inst for _, inst in itertools.islice(it, size)]) for _ in range(n)]


def test_gathered_loss_equals_hf_bertforpretraining(stream, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=30522, **TINY)).eval()
    with torch.no_grad():  # a non-zero MLM bias and a non-trivial model
        model.cls.predictions.bias.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = _batches(stream, 1, 6)[0]
    ours, sums = PreTrainingLoss(model)(batch, count(batch))
    padded = packed_to_padded(batch)
    ref = hf(**padded).loss
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    rep = report(sums, count(batch))
    torch.testing.assert_close(torch.tensor(rep["loss"]), ref.detach(), rtol=1e-5, atol=1e-5)
    # and the gradients agree (tied decoder / embedding included)
    ours.backward()
    ref.backward()
    g_ours = model.bert.embeddings.word_embeddings.weight.grad
    g_ref = hf.bert.embeddings.word_embeddings.weight.grad
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def _trainer(tmp_path, accum, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY)
    model = BertForPreTraining(cfg)
    args = TrainArgs(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, grad_accum=accum, progress=False)
    return Trainer(PreTrainingLoss(model), model, args, DistInfo(), count, report, LOG_FIELDS), model


def test_grad_accumulation_equals_big_batch(stream, tmp_path):
    """2 micro-batches of 4 = 1 batch of 8: the loss is normalised by the step's total masked count."""
    b8 = _batches(stream, 2, 8)
    t1, m1 = _trainer(tmp_path / "a", 1)
    t2, m2 = _trainer(tmp_path / "b", 2)
    for b in b8:
        halves = []
        for lo, hi in ((0, 4), (4, 8)):
            cu = b["cu_seqlens"]
            a, z = int(cu[lo]), int(cu[hi])
            halves.append({"input_ids": b["input_ids"][a:z], "token_type_ids": b["token_type_ids"][a:z],
                           "labels": b["labels"][a:z], "next_sentence_label": b["next_sentence_label"][lo:hi],
                           "cu_seqlens": (cu[lo:hi + 1] - cu[lo]).to(torch.int32),
                           "max_seqlen": int((cu[lo + 1:hi + 1] - cu[lo:hi]).max())})
        r1, r2 = t1.train_step([b]), t2.train_step(halves)
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6)


def test_linear_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup=4, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_bad_precision():
    with pytest.raises(ValueError, match="precision must be"):
        TrainArgs(precision="fp8")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint({"step": step, "w": torch.full((1000,), float(step))}, d, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step-00000003", "step-00000004"]

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        f.truncate(100)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"step": 5, "w": torch.zeros(1000)}, d, 5, keep_last=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in d.iterdir()) == ["step-00000003", "step-00000004"]  # no temp dir left
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(d))["step"] == 4
    # A directory killed before its rename (no cleanup at all) is never listed.
    (d / ".tmp-step-00000006-x").mkdir()
    (d / "step-00000007").mkdir()  # no training state inside: not a checkpoint
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step-00000003", "step-00000004"]


def test_keep_last_never_removes_the_best(tmp_path):
    d = tmp_path / "ck"
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint({"step": step}, d, step, keep_last=2, keep=[1])
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step-00000001", "step-00000003", "step-00000004"]


def test_checkpoint_is_a_model_directory(tmp_path):
    """A checkpoint loads with from_pretrained (fastbert's and transformers'), tied MLM weights included."""
    transformers = pytest.importorskip("transformers")
    from fastbert import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    model = BertForMaskedLM(cfg).eval()
    path = ckpt.save_checkpoint({"step": 3}, tmp_path, 3, model=model,
                                add_files=lambda p: (p / "vocab.txt").write_text("x\n"))
    assert (path / "config.json").is_file() and (path / "vocab.txt").is_file()
    ids = torch.randint(0, 50, (2, 7))
    want = model(input_ids=ids).logits
    torch.testing.assert_close(BertForMaskedLM.from_pretrained(path)(input_ids=ids).logits, want)
    theirs = transformers.BertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
    torch.testing.assert_close(theirs(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 3 and "bert.embeddings.word_embeddings.weight" in state["model"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(stream, tmp_path, precision):
    """AMP on CPU: bf16 autocast, and fp16 autocast with a GradScaler; the loss stays near fp32's."""
    batches = _batches(stream, 2, 4)
    ref, _ = _trainer(tmp_path / "ref", 1)
    t, _ = _trainer(tmp_path / precision, 1)
    t.args.precision = precision
    t.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    t.scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    for b in batches:
        r, a = ref.train_step([b]), t.train_step([b])
        assert a["loss"] == pytest.approx(r["loss"], rel=2e-2)
    assert t.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert t.scaler.get_scale() > 0


def test_gradient_checkpointing_same_update(stream, tmp_path):
    batches = _batches(stream, 2, 4)
    a, ma = _trainer(tmp_path / "a", 1)
    b, mb = _trainer(tmp_path / "b", 1)
    mb.gradient_checkpointing_enable()
    for batch in batches:
        assert a.train_step([batch])["loss"] == pytest.approx(b.train_step([batch])["loss"], rel=1e-6)
    for p1, p2 in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-7)
