"""BertConfig: Hugging Face's BERT `config.json`, read and written as-is.

Unknown keys are kept (and written back), so a config survives a round trip through fastbert untouched.
fastbert adds two keys of its own, both ignored by Hugging Face:

- ``backend``: ``"auto"`` (Triton for CUDA tensors, PyTorch otherwise), ``"torch"`` or ``"triton"``.
- ``unpad``: with the Triton backend, remove padding once after the embeddings and run every layer on real
  tokens only (packed variable-length attention). Padded positions of ``last_hidden_state`` are then zero.
"""
import copy
import json
import os
from typing import Any, Dict, Optional

CONFIG_NAME = "config.json"

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
BACKENDS = ("auto", "torch", "triton")


class BertConfig:
    model_type = "bert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_embedding_type: str = "absolute",
        classifier_dropout: Optional[float] = None,
        is_decoder: bool = False,
        add_cross_attention: bool = False,
        num_labels: Optional[int] = None,
        id2label: Optional[Dict[Any, str]] = None,
        label2id: Optional[Dict[str, int]] = None,
        problem_type: Optional[str] = None,
        backend: str = "auto",
        unpad: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.position_embedding_type = position_embedding_type
        self.classifier_dropout = classifier_dropout
        self.is_decoder = is_decoder
        self.add_cross_attention = add_cross_attention
        self.problem_type = problem_type
        self.backend = backend
        self.unpad = unpad
        # Labels, as Hugging Face's PretrainedConfig: id2label wins, then num_labels, then 2 labels.
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        if num_labels is not None and num_labels != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        kwargs.pop("model_type", None)
        self._extra = kwargs  # unknown keys, kept for the round trip
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int):
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; choose one of {ACTIVATIONS}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.position_embedding_type != "absolute":
            raise NotImplementedError(
                f"position_embedding_type={self.position_embedding_type!r}: fastbert implements BERT's absolute "
                "position embeddings only"
            )
        if self.is_decoder or self.add_cross_attention:
            raise NotImplementedError("fastbert is an encoder: is_decoder/add_cross_attention are not supported")
        if not 0.0 <= self.hidden_dropout_prob < 1.0 or not 0.0 <= self.attention_probs_dropout_prob < 1.0:
            raise ValueError("dropout probabilities must be in [0, 1)")

    # ---- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        for key in self._extra:
            out[key] = copy.deepcopy(getattr(self, key))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **kwargs) -> "BertConfig":
        if not isinstance(config_dict, dict):
            raise ValueError(f"a BERT config must be a JSON object, got {type(config_dict).__name__}")
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != "bert":
            raise ValueError(
                f"this config is for model_type={model_type!r}, not 'bert': fastbert loads BERT checkpoints only"
            )
        return cls(**{**config_dict, **kwargs})

    @classmethod
    def from_json_file(cls, path, **kwargs) -> "BertConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); is it a BERT config.json?") from e
        return cls.from_dict(data, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> "BertConfig":
        """Read ``config.json`` from a local directory or file, or from a hub repository name."""
        from .hub import resolve_file

        path = name_or_path
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        elif not os.path.isfile(path):
            path = resolve_file(name_or_path, CONFIG_NAME)
        return cls.from_json_file(path, **kwargs)

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))

    def __eq__(self, other):
        return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"BertConfig {self.to_json_string()}"
