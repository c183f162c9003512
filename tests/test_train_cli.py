"""The training CLI: typed flags, list options, one-line errors, defaults in --help."""
import json

import pytest

from fastbert.train.cli import build_config, main
from fastbert.train.finetune import FinetuneConfig
from fastbert.train.pretrain import PretrainConfig


def test_labels_take_one_or_many_values():
    assert build_config(FinetuneConfig, ["--labels", "pos", "--max-steps", "3"], "p").labels == ["pos"]
    assert build_config(FinetuneConfig, ["--labels", "neg", "pos", "--max-steps", "3"], "p").labels == ["neg", "pos"]


def test_typed_flags_and_config_file(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"max_steps": 7, "labels": ["a", "b"], "learning_rate": 1, "truncation": False}))
    cfg = build_config(FinetuneConfig, ["--config", str(cfg_file), "--batch-size", "4"], "p")
    assert (cfg.max_steps, cfg.labels, cfg.batch_size, cfg.truncation) == (7, ["a", "b"], 4, False)
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1.0
    cfg = build_config(PretrainConfig, ["--model-config", '{"hidden_size": 32}', "--train-files", "a", "b"], "p")
    assert cfg.model_config == {"hidden_size": 32} and cfg.train_files == ["a", "b"]


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "x"], "argument --max-steps: expected an integer, got 'x'"),
    (["--max-steps", "3", "--truncation", "maybe"], "argument --truncation: expected true or false"),
])
def test_unparsable_values_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", "cls", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "3", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--max-steps", "3", "--learning-rate", "-1"], "learning_rate must be > 0, got -1.0"),
    (["--max-steps", "3", "--warmup-ratio", "2"], "warmup_ratio must be between 0 and 1, got 2.0"),
    (["--max-steps", "3", "--labels", "a", "a"], "labels has duplicates: ['a', 'a']"),
    (["--max-steps", "0"], "give max_steps or epochs"),
])
def test_out_of_range_values_are_one_line_errors(argv, message, capsys):
    assert main(["finetune", "--task", "cls", *argv]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"fastbert finetune: error: {message}"]


def test_bad_value_in_config_file(tmp_path, capsys):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"max_steps": "many"}))
    assert main(["finetune", "--config", str(cfg_file)]) == 1
    assert "option 'max_steps'" in capsys.readouterr().err


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert "--max-length MAX_LENGTH" in out and "(default: 128)" in out and "(default: 5e-05)" in out
