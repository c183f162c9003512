"""fastbert where users live: Hugging Face's Trainer, PEFT's LoRA, Auto classes, pickling.

The same Trainer script runs once with transformers' classes and once with fastbert's (one import changed):
tiny BERT, CPU, fp32, dropout on, same seed. The logged training and evaluation losses must agree — the
reference is transformers itself, so a silent difference (a dropout drawn in another order, a loss averaged
differently, a head left out) fails here.
"""
import copy
import pickle

import pytest
import torch
import transformers

import fastbert

pytest.importorskip("accelerate")  # transformers' Trainer needs it

WORDS = ("good bad film movie plot actor great awful fine boring story music scene ending long short fun dull "
         "the a was is and but very not really quite").split()
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)
RTOL = 2e-5  # fp32: the two models run the same operations in the same order, up to SDPA's rounding


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tokenizer directory (written by transformers) and two reference checkpoints saved by transformers."""
    root = tmp_path_factory.mktemp("hf_trainer")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    fastbert.BertTokenizer.from_pretrained(root / "vocab.txt").save_pretrained(root / "tok")
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "tok")
    assert hf_tok("good film")["input_ids"] == [2, 5, 7, 3]  # the vocabulary, not [UNK]s
    cfg = transformers.BertConfig(vocab_size=len(vocab), **TINY)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(root / "cls_init")
    torch.manual_seed(0)
    transformers.BertForMaskedLM(cfg).save_pretrained(root / "mlm_init")
    return root


def texts(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(4, 12, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


def dataset(tok, n, seed, labels=True):
    rows = []
    for text in texts(n, seed):
        enc = dict(tok(text, truncation=True, max_length=32))
        if labels:
            enc["labels"] = int("good" in text.split() or "great" in text.split())
        rows.append({k: list(v) if not isinstance(v, int) else v for k, v in enc.items()})
    return rows


def train(lib, task, workdir, out, *, steps=6, resume=None, **args):
    """The user's script: ``lib`` is the module the classes come from (transformers or fastbert)."""
    tok = lib.AutoTokenizer.from_pretrained(workdir / "tok")
    if task == "cls":
        model = lib.AutoModelForSequenceClassification.from_pretrained(workdir / "cls_init")
        collator = transformers.DataCollatorWithPadding(tok)
    else:
        model = lib.AutoModelForMaskedLM.from_pretrained(workdir / "mlm_init")
        collator = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.3)
    training_args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=3, save_steps=3, seed=0,
        report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, **args)
    trainer = transformers.Trainer(
        model=model, args=training_args, processing_class=tok, data_collator=collator,
        train_dataset=dataset(tok, 40, seed=1, labels=task == "cls"),
        eval_dataset=dataset(tok, 16, seed=2, labels=task == "cls"))
    trainer.train(resume_from_checkpoint=resume)
    logs = trainer.state.log_history
    return (trainer, {int(r["step"]): r["loss"] for r in logs if "loss" in r},
            {int(r["step"]): r["eval_loss"] for r in logs if "eval_loss" in r})


def assert_same(ours, theirs):
    assert ours.keys() == theirs.keys() and ours, (ours, theirs)
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=RTOL), (step, ours, theirs)


@pytest.fixture(scope="module")
def cls_runs(workdir):
    hf = train(transformers, "cls", workdir, workdir / "hf_cls", gradient_checkpointing=True)
    fb = train(fastbert, "cls", workdir, workdir / "fb_cls", gradient_checkpointing=True)
    return hf, fb


def test_classification_same_losses_as_transformers(cls_runs):
    (hf_trainer, hf_loss, hf_eval), (fb_trainer, fb_loss, fb_eval) = cls_runs
    assert isinstance(fb_trainer.model, fastbert.BertForSequenceClassification)
    assert isinstance(fb_trainer.model, transformers.PreTrainedModel)
    assert isinstance(fb_trainer.processing_class, fastbert.BertTokenizer)
    assert fb_trainer.model.is_gradient_checkpointing
    assert len(fb_loss) == 6 and len(fb_eval) == 2
    assert_same(fb_loss, hf_loss)
    assert_same(fb_eval, hf_eval)
    assert len(set(fb_loss.values())) > 1  # it trained


def test_save_model_reloads_in_fastbert_and_transformers(cls_runs, workdir, tmp_path):
    _, (trainer, _, _) = cls_runs
    trainer.save_model(tmp_path)
    trained = trainer.model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)  # fastbert's tokenizer, saved by Trainer
    batch = tok(texts(5, seed=3), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = trained(**batch).logits
        ours = fastbert.BertForSequenceClassification.from_pretrained(tmp_path, strict=True)(**batch).logits
        theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(**batch).logits
    assert torch.equal(ours, expected)
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-6)


def test_resume_from_checkpoint_gives_the_same_losses(cls_runs, workdir):
    _, (_, full_loss, _) = cls_runs
    _, resumed, _ = train(fastbert, "cls", workdir, workdir / "fb_cls", gradient_checkpointing=True,
                          resume=str(workdir / "fb_cls" / "checkpoint-3"))
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # 1-3 from the checkpoint's state, 4-6 trained again
    for step in resumed:
        assert resumed[step] == pytest.approx(full_loss[step], rel=1e-6), (step, resumed, full_loss)


def test_masked_lm_with_gradient_accumulation_same_losses(workdir, tmp_path):
    # Trainer passes num_items_in_batch to heads that take **kwargs and then does not divide their loss by the
    # accumulation steps: fastbert's heads must take (and ignore) it exactly as transformers' do.
    hf_trainer, hf_loss, hf_eval = train(transformers, "mlm", workdir, tmp_path / "hf", steps=4,
                                         gradient_accumulation_steps=2)
    fb_trainer, fb_loss, fb_eval = train(fastbert, "mlm", workdir, tmp_path / "fb", steps=4,
                                         gradient_accumulation_steps=2)
    assert_same(fb_loss, hf_loss)
    assert_same(fb_eval, hf_eval)
    model = fb_trainer.model
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    fb_trainer.save_model(tmp_path / "saved")  # tied weights: safetensors would refuse shared tensors
    ids = torch.tensor([[2, 10, 4, 12, 3]])
    with torch.no_grad():
        expected = model.eval()(ids).logits
        ours = fastbert.AutoModelForMaskedLM.from_pretrained(tmp_path / "saved", strict=True)
        theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path / "saved").eval()
        assert torch.equal(ours(ids).logits, expected)
        torch.testing.assert_close(theirs(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight


def test_lora_with_peft_same_losses(workdir, tmp_path):
    peft = pytest.importorskip("peft")

    def run(lib, out):
        tok = lib.AutoTokenizer.from_pretrained(workdir / "tok")
        model = lib.AutoModelForSequenceClassification.from_pretrained(workdir / "cls_init")
        torch.manual_seed(0)  # LoRA's A matrices are drawn at random
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                           target_modules=["query", "value"]))
        before = {k: v.clone() for k, v in model.named_parameters()}
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1,
            seed=0, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
        trainer = transformers.Trainer(model=model, args=args, processing_class=tok,
                                       data_collator=transformers.DataCollatorWithPadding(tok),
                                       train_dataset=dataset(tok, 16, seed=1))
        trainer.train()
        changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
        return {int(r["step"]): r["loss"] for r in trainer.state.log_history if "loss" in r}, changed, model

    hf_loss, hf_changed, _ = run(transformers, tmp_path / "hf")
    fb_loss, fb_changed, fb_model = run(fastbert, tmp_path / "fb")
    assert_same(fb_loss, hf_loss)
    assert fb_changed == hf_changed and any("lora_A" in k for k in fb_changed)
    assert not any("lora" not in k and "classifier" not in k for k in fb_changed)  # the encoder stays frozen
    fb_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_pickle_and_torch_save_whole_model(tmp_path):
    torch.manual_seed(0)
    cfg = fastbert.BertConfig(vocab_size=40, hidden_act="gelu_new", **TINY)
    model = fastbert.BertForMaskedLM(cfg).eval()
    ids = torch.randint(0, 40, (2, 7))
    clone = pickle.loads(pickle.dumps(model))
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(clone(ids).logits, model(ids).logits)
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert clone.cls.predictions.decoder.weight is clone.bert.embeddings.word_embeddings.weight
    assert copy.deepcopy(model).config.hidden_act == "gelu_new"
