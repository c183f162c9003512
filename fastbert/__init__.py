"""fastbert: an exact, drop-in BERT with fused Triton kernels and a C++ WordPiece tokenizer.

``from fastbert import BertModel, BertTokenizer`` replaces the Hugging Face imports. Importing fastbert
never imports triton and never touches a GPU.
"""
from .configuration_bert import BertConfig
from .modeling_bert import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
    mean_pooling,
)
from .encode import SentenceEncoder
from .modeling_utils import CheckpointError
from .patching import install_import_hook as _install_import_hook
from .patching import is_patched, patch, unpatch

# attn_implementation="fastbert": registered when transformers' modeling is imported (never imported here).
_install_import_hook()

__version__ = "0.1.0"


def __getattr__(name):
    # The tokenizer loads the compiled extension: imported on first use.
    if name in ("BertTokenizer", "BertTokenizerFast"):
        from .tokenization_bert import BertTokenizer

        return BertTokenizer
    raise AttributeError(f"module 'fastbert' has no attribute {name!r}")


__all__ = [
    "BertConfig", "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
    "BertForSequenceClassification", "BertForMultipleChoice", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertPreTrainedModel", "BertTokenizer", "CheckpointError", "SentenceEncoder",
    "mean_pooling", "patch", "unpatch", "is_patched",
]
