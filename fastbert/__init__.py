"""fastbert: an exact, drop-in BERT with fused Triton kernels and a C++ WordPiece tokenizer.

``from fastbert import BertModel, BertTokenizer`` replaces the Hugging Face imports. Importing fastbert
never imports triton and never touches a GPU. Its names are imported on first use: ``import fastbert`` stays
fast, and ``fastbert.BertModel`` pays for transformers' ``PreTrainedModel`` (its base class when transformers
is installed) only when it is used.
"""
import importlib

from .patching import install_import_hook as _install_import_hook
from .patching import is_patched, patch, unpatch

# attn_implementation="fastbert": registered when transformers' modeling is imported (never imported here).
_install_import_hook()

__version__ = "0.1.0"

_LAZY = {
    "BertConfig": "configuration_bert",
    **{name: "modeling_bert" for name in (
        "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
        "BertForSequenceClassification", "BertForMultipleChoice", "BertForTokenClassification",
        "BertForQuestionAnswering", "BertPreTrainedModel", "mean_pooling")},
    "CheckpointError": "modeling_utils",
    "SentenceEncoder": "encode",
    # The tokenizer loads the compiled extension.
    "BertTokenizer": "tokenization_bert",
    "BertTokenizerFast": "tokenization_bert",
    **{name: "auto" for name in (
        "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForMultipleChoice",
        "AutoModelForNextSentencePrediction", "AutoModelForPreTraining", "AutoModelForQuestionAnswering",
        "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoTokenizer")},
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastbert' has no attribute {name!r}")
    attr = "BertTokenizer" if name == "BertTokenizerFast" else name
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BertConfig", "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
    "BertForSequenceClassification", "BertForMultipleChoice", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertPreTrainedModel", "BertTokenizer", "CheckpointError", "SentenceEncoder",
    "mean_pooling", "patch", "unpatch", "is_patched", "AutoConfig", "AutoModel", "AutoModelForMaskedLM",
    "AutoModelForMultipleChoice", "AutoModelForNextSentencePrediction", "AutoModelForPreTraining",
    "AutoModelForQuestionAnswering", "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
    "AutoTokenizer",
]
