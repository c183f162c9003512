"""End to end on real text (Debian's fortune-cookie packages, fetched by scripts/get_text_data.sh):

- a tiny BERT pre-trained from scratch (MLM + NSP, CPU, 800 steps): the loss falls far below its start, and
  held-out MLM accuracy rises above the unigram baseline;
- the real all-MiniLM-L6-v2 fine-tuned to tell the language of a cookie (en/de/es/it; chance 25%), then
  loaded back in transformers;
- NER (who is quoted, B-PER/I-PER) and extractive QA ("Who said this?", windows with a stride) end to end
  with their metrics;
- bad fine-tuning input: a label outside the label set, a text too long without truncation, a vocab that
  does not match the tokenizer.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from fastbert.train.finetune import FinetuneConfig, entity_f1, squad_scores
from fastbert.train.finetune import run as finetune
from fastbert.train.pretrain import PretrainConfig
from fastbert.train.pretrain import run as pretrain

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FASTBERT_DATA", ROOT / "data")) / "text"


@pytest.fixture(scope="module")
def text_data():
    if not (DATA / ".complete").exists():
        r = subprocess.run(["bash", str(ROOT / "scripts" / "get_text_data.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot fetch Debian's fortunes packages (apt-get download failed): {r.stderr[-500:]}")
    return DATA


def _quiet(**kw):
    return dict(progress=False, log_every=0, device="cpu", **kw)


def test_pretrain_tiny_bert_from_scratch(text_data, minilm_dir, tmp_path):
    cfg = PretrainConfig(
        train_files=[str(text_data / "pretrain" / "train")], eval_files=[str(text_data / "pretrain" / "heldout")],
        tokenizer=str(minilm_dir), model_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                 "intermediate_size": 256, "max_position_embeddings": 128,
                                                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        max_seq_length=64, batch_size=16, max_steps=800, learning_rate=2e-3, warmup_steps=80, eval_batches=25,
        output_dir=str(tmp_path / "pt"), **_quiet())
    res = pretrain(cfg)
    print("pretrain:", json.dumps(res))
    from fastbert.train.loop import read_log

    log = read_log(tmp_path / "pt" / "train_log.csv")
    first = log[0]["mlm_loss"]
    last = sum(r["mlm_loss"] for r in log[-20:]) / 20
    assert first > 9.5  # ~ln(30522) = 10.3 at the start
    assert last < first - 2.5, (first, last)
    ev = res["eval"]
    assert ev["masked_tokens"] > 1000
    # Held out, the model predicts masked tokens from their context better than the best context-free guess
    # (the most frequent token). Measured on a quiet 2-core CPU in 41 s: MLM accuracy 9.4% vs unigram 5.6%,
    # MLM loss 6.54 (10.3 at the start).
    assert ev["mlm_loss"] < 7.0, ev
    assert ev["mlm_acc"] > 1.25 * ev["unigram_acc"], ev
    # the saved model loads in transformers and gives the same MLM logits
    transformers = pytest.importorskip("transformers")
    from fastbert import BertForPreTraining

    ours = BertForPreTraining.from_pretrained(tmp_path / "pt" / "model").eval()
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "pt" / "model").eval()
    ids = torch.tensor([[101, 1996, 103, 2003, 102]])
    torch.testing.assert_close(ours(ids).prediction_logits, hf(ids).prediction_logits, rtol=1e-4, atol=1e-4)


def test_finetune_minilm_language_of_a_cookie(text_data, minilm_dir, tmp_path):
    cfg = FinetuneConfig(task="cls", model=str(minilm_dir), train_file=str(text_data / "langid" / "train.jsonl"),
                         eval_file=str(text_data / "langid" / "eval.jsonl"), max_length=32, batch_size=8,
                         max_steps=30, learning_rate=2e-4, warmup_ratio=0.1, output_dir=str(tmp_path / "cls"),
                         eval_every=10, save_every=10, keep_last=1, **_quiet())
    res = finetune(cfg)
    print("cls:", json.dumps(res))
    assert res["eval"]["examples"] == 200
    assert res["eval"]["accuracy"] > 0.6, res  # chance: 0.25
    # evaluated at steps 10, 20 and 30; the best of them is kept beside the last checkpoint
    evals = [json.loads(line) for line in (tmp_path / "cls" / "eval_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [10, 20, 30]
    best = max(evals, key=lambda e: e["accuracy"])
    assert res["best_checkpoint"]["step"] == best["step"] and res["best_checkpoint"]["metric"] == "accuracy"
    kept = sorted(p.name for p in (tmp_path / "cls" / "checkpoints").glob("step-*"))
    assert kept == sorted({f"step-{best['step']:08d}", "step-00000030"})
    from fastbert import BertForSequenceClassification

    best_model = BertForSequenceClassification.from_pretrained(res["best_checkpoint"]["path"])
    assert best_model.config.id2label == {0: "de", 1: "en", 2: "es", 3: "it"}
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "cls" / "model"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert sorted(hf.config.id2label.values()) == ["de", "en", "es", "it"]
    enc = tok(["Der Hund bellt, wenn der Mond scheint."], return_tensors="pt")
    from fastbert import BertForSequenceClassification

    ours = BertForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(ours(**enc).logits, hf(**enc).logits, rtol=1e-4, atol=1e-4)


def test_finetune_ner_end_to_end(text_data, minilm_dir, tmp_path):
    cfg = FinetuneConfig(task="ner", model=str(minilm_dir), train_file=str(text_data / "ner" / "train.jsonl"),
                         eval_file=str(text_data / "ner" / "eval.jsonl"), max_length=40, batch_size=8,
                         max_steps=20, learning_rate=2e-4, warmup_ratio=0.1, output_dir=str(tmp_path / "ner"),
                         **_quiet())
    res = finetune(cfg)
    print("ner:", json.dumps(res))
    assert set(res["eval"]) >= {"precision", "recall", "f1"} and res["eval"]["examples"] > 100
    assert res["eval"]["f1"] > 0.3, res


def test_finetune_qa_end_to_end(text_data, minilm_dir, tmp_path):
    cfg = FinetuneConfig(task="qa", model=str(minilm_dir), train_file=str(text_data / "qa" / "train.jsonl"),
                         eval_file=str(text_data / "qa" / "eval.jsonl"), max_length=64, doc_stride=24,
                         batch_size=8, max_steps=20, learning_rate=2e-4, warmup_ratio=0.1,
                         output_dir=str(tmp_path / "qa"), **_quiet())
    res = finetune(cfg)
    print("qa:", json.dumps(res))
    assert res["train_features"] > 400  # long contexts were cut into several windows
    assert res["eval"]["examples"] == 100
    assert res["eval"]["f1"] > 20.0, res


# -- metrics -------------------------------------------------------------------------------------------
def test_entity_f1():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER"]]
    assert entity_f1(gold, gold)["f1"] == 1.0
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-PER"]]  # one of three entities cut short
    r = entity_f1(pred, gold)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)


def test_squad_scores():
    s = squad_scores(["the Mark Twain", "Twain", "nobody"], [["Mark Twain"], ["Mark Twain"], ["Lem"]])
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


# -- bad input -----------------------------------------------------------------------------------------
def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_label_outside_label_set(minilm_dir, tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a cat", "label": "pos"}, {"text": "a dog", "label": "neg"}])
    ev = _jsonl(tmp_path / "e.jsonl", [{"text": "a cow", "label": "neutral"}])
    cfg = FinetuneConfig(task="cls", model=str(minilm_dir), train_file=train, eval_file=ev, max_steps=1,
                         batch_size=1, output_dir=str(tmp_path / "o"), **_quiet())
    with pytest.raises(ValueError, match="label 'neutral', which is not in the label set"):
        finetune(cfg)


def test_text_longer_than_max_length(minilm_dir, tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "word " * 200, "label": "a"}])
    cfg = FinetuneConfig(task="cls", model=str(minilm_dir), train_file=train, max_steps=1, batch_size=1,
                         max_length=32, truncation=False, output_dir=str(tmp_path / "o"), **_quiet())
    with pytest.raises(ValueError, match="example 1 is 202 tokens long, more than max_length=32"):
        finetune(cfg)
    cfg.max_length, cfg.truncation = 1024, True
    with pytest.raises(ValueError, match="longer than the model allows"):
        finetune(cfg)


def test_vocab_mismatch_between_model_and_tokenizer(minilm_dir, tmp_path):
    small = tmp_path / "tok"
    small.mkdir()
    vocab = (Path(minilm_dir) / "vocab.txt").read_text().splitlines()[:5000]
    (small / "vocab.txt").write_text("\n".join(vocab) + "\n")
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a cat", "label": "pos"}])
    cfg = FinetuneConfig(task="cls", model=str(minilm_dir), tokenizer=str(small), train_file=train, max_steps=1,
                         batch_size=1, output_dir=str(tmp_path / "o"), **_quiet())
    with pytest.raises(ValueError, match="vocab_size=30522 but the tokenizer has 5000 tokens"):
        finetune(cfg)


def test_cli_reports_bad_input(minilm_dir, tmp_path, capsys):
    from fastbert.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train_files": [str(empty)], "tokenizer": str(minilm_dir), "max_steps": 1,
                               "model_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
                                                "intermediate_size": 32}}))
    assert main(["pretrain", "--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 1
    assert "corpus is empty" in capsys.readouterr().err
    cfg.write_text(json.dumps({"train_files": [str(empty)], "no_such_option": 1}))
    assert main(["pretrain", "--config", str(cfg)]) == 1
    assert "unknown option(s) ['no_such_option']" in capsys.readouterr().err
