"""Distillation: the student starts from the chosen teacher layers, the losses are zero for a student that
is the teacher, the embedding objective pools as sentence-transformers does, and `fastbert distill` runs
end to end (both objectives) and saves a directory that loads in fastbert and sentence-transformers."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from fastbert import BertConfig, BertForMaskedLM, BertModel
from fastbert.train import distill
from fastbert.train.data import collate_packed

CORPUS = Path(__file__).parent / "data" / "fortunes_science.txt"


def _tiny_teacher(tmp_path, minilm_dir, layers=4):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    teacher = BertForMaskedLM(cfg).eval()
    out = tmp_path / "teacher"
    teacher.save_pretrained(out)
    shutil.copyfile(Path(minilm_dir) / "vocab.txt", out / "vocab.txt")
    return teacher, out


def test_default_layers():
    assert distill.default_layers(6) == [1, 3, 5]
    assert distill.default_layers(12) == [1, 3, 5, 7, 9, 11]
    assert distill.default_layers(3) == [0, 2]


def test_student_starts_from_the_chosen_teacher_layers(tmp_path, minilm_dir):
    teacher, _ = _tiny_teacher(tmp_path, minilm_dir)
    student = distill.make_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and type(student) is BertForMaskedLM
    for i, j in enumerate([1, 3]):
        for (n, a), (_, b) in zip(student.bert.encoder.layer[i].named_parameters(),
                                  teacher.bert.encoder.layer[j].named_parameters()):
            assert torch.equal(a, b), n
    assert torch.equal(student.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)
    random_student = distill.make_student(teacher, [1, 3], init="random", seed=1)
    assert not torch.equal(random_student.bert.encoder.layer[0].output.dense.weight,
                           teacher.bert.encoder.layer[1].output.dense.weight)
    with pytest.raises(ValueError, match="student_layers"):
        distill.make_student(teacher, [0, 7])


def test_losses_vanish_when_the_student_is_the_teacher(tmp_path, minilm_dir):
    teacher, tdir = _tiny_teacher(tmp_path, minilm_dir)
    student = distill.make_student(teacher, [0, 1, 2, 3]).eval()
    from fastbert.train.data import PretrainingStream, load_tokenizer, read_vocab

    stream = PretrainingStream([CORPUS], load_tokenizer(tdir), read_vocab(tdir), 32, seed=0)
    batch = collate_packed([inst for _, inst in zip(range(4), (i for _, i in stream.instances(0)))])
    count = distill.mlm_count(batch)
    task = distill.MLMDistillLoss(student, teacher, distill.DistillConfig(max_steps=1))
    _, sums = task(batch, count)
    report = distill.mlm_report(sums, count)
    assert abs(report["soft_loss"]) < 1e-5 and report["hidden_cos_loss"] < 1e-5 and report["teacher_agree"] == 1.0
    # a student of fewer layers disagrees, and gets gradients from every term
    small = distill.make_student(teacher, [3]).train()
    task = distill.MLMDistillLoss(small, teacher, distill.DistillConfig(max_steps=1))
    loss, sums = task(batch, count)
    assert float(sums[0]) > 0 and float(sums[2]) > 0
    loss.backward()
    assert small.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_sentence_pipeline_reads_the_teacher_directory(tmp_path, minilm_dir):
    spec = distill.sentence_pipeline(minilm_dir)
    assert spec == {"pooling": "mean_tokens", "normalize": True, "max_seq_length": 256, "do_lower_case": False}
    bad = tmp_path / "bad"
    shutil.copytree(minilm_dir, bad)
    pc = json.loads((bad / "1_Pooling" / "config.json").read_text())
    pc["pooling_mode_weightedmean_tokens"] = True
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(pc))
    with pytest.raises(NotImplementedError, match="pooling"):
        distill.sentence_pipeline(bad)


def test_pooling_equals_sentence_transformers(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    from fastbert.tokenization_bert import BertTokenizer

    texts = ["A man is eating food.", "Science is what we do when we do not know what we are doing, really."]
    ref = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_tensor=True)
    model = BertModel.from_pretrained(minilm_dir).eval()
    enc = BertTokenizer.from_pretrained(minilm_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    ours = distill.pool(h, enc["attention_mask"], distill.sentence_pipeline(minilm_dir))
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.99999


@pytest.mark.parametrize("objective", ["mlm", "embedding"])
def test_distill_runs_end_to_end(objective, tmp_path, minilm_dir):
    if objective == "mlm":
        _, teacher_dir = _tiny_teacher(tmp_path, minilm_dir)
    else:
        teacher_dir = minilm_dir
    cfg = distill.DistillConfig(teacher=str(teacher_dir), train_files=[str(CORPUS)], eval_files=[str(CORPUS)],
                                max_steps=4, eval_every=2, batch_size=4, max_seq_length=32, eval_sentences=40,
                                output_dir=str(tmp_path / "run"), progress=False, log_every=0, device="cpu")
    res = distill.run(cfg)
    assert res["objective"] == objective and res["steps"] == 4
    metric = "teacher_agree" if objective == "mlm" else "pair_spearman"
    assert res["best_checkpoint"]["metric"] == metric and 0.0 <= res["eval"][metric] <= 1.0
    out = tmp_path / "run" / "model"
    cls = BertForMaskedLM if objective == "mlm" else BertModel
    assert cls.from_pretrained(out).config.num_hidden_layers == (2 if objective == "mlm" else 3)
    if objective == "embedding":
        st = pytest.importorskip("sentence_transformers")
        emb = st.SentenceTransformer(str(out), device="cpu").encode(["a test sentence"])
        assert emb.shape == (1, 384)
