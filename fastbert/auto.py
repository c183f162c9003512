"""Auto classes for BERT directories: ``fastbert.AutoModelForSequenceClassification.from_pretrained(path)`` in
place of transformers', with fastbert's classes. fastbert has BERT only: a directory whose ``config.json``
names another ``model_type`` raises ``ValueError`` naming it (use transformers' Auto classes for that model).
"""
import json
import os

from .configuration_bert import CONFIG_NAME, BertConfig


def _model_type(path):
    """The model_type of a local directory's config.json (None when there is none to read here)."""
    config_file = os.path.join(str(path), CONFIG_NAME)
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return None


def _check_bert(auto_name, path):
    model_type = _model_type(path)
    if model_type is not None and model_type != "bert":
        raise ValueError(
            f"fastbert.{auto_name}: {path} holds a model_type={model_type!r} model, not BERT; fastbert has BERT "
            f"only: load it with transformers.{auto_name}"
        )


class _AutoModel:
    _class_name = "BertModel"

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is built with {type(self).__name__}.from_pretrained(path) "
                               f"or {type(self).__name__}.from_config(config)")

    @classmethod
    def _target(cls):
        from . import modeling_bert

        return getattr(modeling_bert, cls._class_name)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        _check_bert(cls.__name__, pretrained_model_name_or_path)
        return cls._target().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        if getattr(config, "model_type", "bert") != "bert":
            raise ValueError(f"fastbert.{cls.__name__}: a {type(config).__name__} (model_type="
                             f"{config.model_type!r}) is not BERT; fastbert has BERT only")
        return cls._target()(config, **kwargs)


def _auto(name, class_name):
    return type(name, (_AutoModel,), {"_class_name": class_name, "__doc__": f"Builds fastbert.{class_name}."})


AutoModel = _auto("AutoModel", "BertModel")
AutoModelForPreTraining = _auto("AutoModelForPreTraining", "BertForPreTraining")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM", "BertForMaskedLM")
AutoModelForNextSentencePrediction = _auto("AutoModelForNextSentencePrediction", "BertForNextSentencePrediction")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", "BertForSequenceClassification")
AutoModelForMultipleChoice = _auto("AutoModelForMultipleChoice", "BertForMultipleChoice")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", "BertForTokenClassification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "BertForQuestionAnswering")


class AutoConfig:
    """``fastbert.BertConfig`` for a BERT directory (or ``for_model("bert", ...)``)."""

    def __init__(self, *args, **kwargs):
        raise EnvironmentError("AutoConfig is built with AutoConfig.from_pretrained(path)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        _check_bert("AutoConfig", pretrained_model_name_or_path)
        return BertConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def for_model(cls, model_type, *args, **kwargs):
        if model_type != "bert":
            raise ValueError(f"fastbert.AutoConfig: model_type={model_type!r} is not BERT; fastbert has BERT only")
        return BertConfig(*args, **kwargs)


class AutoTokenizer:
    """fastbert's C++ WordPiece ``BertTokenizer`` for a BERT directory."""

    def __init__(self, *args, **kwargs):
        raise EnvironmentError("AutoTokenizer is built with AutoTokenizer.from_pretrained(path)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        _check_bert("AutoTokenizer", pretrained_model_name_or_path)
        from .tokenization_bert import BertTokenizer

        return BertTokenizer.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


__all__ = ["AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForMultipleChoice",
           "AutoModelForNextSentencePrediction", "AutoModelForPreTraining", "AutoModelForQuestionAnswering",
           "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoTokenizer"]
