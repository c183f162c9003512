"""BertConfig: Hugging Face's BERT `config.json`, read and written as-is.

With ``transformers`` installed, ``fastbert.BertConfig`` *is* a ``transformers.BertConfig`` (a subclass), so
everything that takes a Hugging Face config takes it (Trainer, PEFT, pipelines, ``AutoModel`` of
transformers), and a directory it saves reloads in ``transformers`` unchanged (``model_type: "bert"``).
Without ``transformers`` a small stand-alone class with the same fields, the same ``config.json`` and the same
behaviour is used, so ``import fastbert`` never needs it. fastbert adds two keys of its own, both ignored by
Hugging Face:

- ``backend``: ``"auto"`` (Triton for CUDA tensors; for CPU tensors ``"cpu"`` in inference, PyTorch
  otherwise), ``"torch"``, ``"triton"`` or ``"cpu"`` (inference only: oneDNN GEMMs with the bias, GELU or
  residual add fused, every layer on real tokens only).
- ``unpad``: remove padding once after the embeddings and run every layer on real tokens only (the Triton and
  cpu backends; packed inputs stay packed on the PyTorch path too). Padded positions of
  ``last_hidden_state`` are then zero. ``False`` keeps the padded layout (the Triton and PyTorch paths).

Values fastbert cannot run (another activation, relative position embeddings, a decoder) raise at
construction, naming the key.
"""
import copy
import json
import os
from typing import Any, Dict, Optional

CONFIG_NAME = "config.json"

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
BACKENDS = ("auto", "torch", "triton", "cpu")

# FASTBERT_NO_TRANSFORMERS=1: the stand-alone classes even where transformers is installed (inference that
# never meets Trainer/PEFT starts faster: `fastbert encode` sets it for itself).
if os.environ.get("FASTBERT_NO_TRANSFORMERS", "") not in ("", "0"):
    _HFBertConfig = None
else:
    try:  # the configuration module only (transformers' modeling module is imported by modeling_utils)
        from transformers import BertConfig as _HFBertConfig
    except ImportError:  # transformers absent (or blocked): the stand-alone class below
        _HFBertConfig = None

HAS_TRANSFORMERS = _HFBertConfig is not None

# What ``config._attn_implementation`` says, and what each name runs:
ATTN_IMPLEMENTATIONS = {
    "eager": "the PyTorch path with an explicit softmax, as transformers' eager attention (backend='torch')",
    "sdpa": "the PyTorch path with torch's scaled_dot_product_attention (backend='torch')",
    "fastbert": "fastbert's Triton kernels for CUDA tensors; for CPU tensors its packed oneDNN path in inference "
                "and scaled_dot_product_attention otherwise (backend='auto'; 'triton' or 'cpu': that path only)",
}


class _AttnImplementation:
    """``_attn_implementation`` as transformers reads and sets it, told by the one setting fastbert runs by,
    ``backend``: 'eager' or 'sdpa' for backend='torch', 'fastbert' for 'auto', 'triton' and 'cpu'. Setting it sets the
    backend; a name fastbert cannot run raises, naming those it can. Calls that ask for attention probabilities
    (``output_attentions``, ``head_mask``) run the explicit softmax on every backend, as transformers' sdpa
    falls back to eager for them."""

    @property
    def _attn_implementation(self):
        if self.__dict__.get("backend", getattr(type(self), "backend", "auto")) == "torch":
            return "eager" if self.__dict__.get("_attn_implementation_internal") == "eager" else "sdpa"
        return "fastbert"

    @_attn_implementation.setter
    def _attn_implementation(self, value):
        if isinstance(value, dict):
            value = value.get("")
        if value is None:
            return  # fastbert's default: the backend decides
        check_attn_implementation(value)
        backend = self.__dict__.get("backend", "auto")
        if value in ("eager", "sdpa"):
            if backend == "triton":
                raise ValueError(f"attn_implementation={value!r} runs fastbert's PyTorch path, backend='triton' its "
                                 "Triton kernels: pass one of them")
            self.backend = "torch"
        elif backend == "torch":
            self.backend = "auto"
        self.__dict__["_attn_implementation_internal"] = value


def check_attn_implementation(value):
    """Raise for an ``attn_implementation`` fastbert cannot run, naming those it can."""
    if isinstance(value, dict):
        value = value.get("")
    if value is not None and value not in ATTN_IMPLEMENTATIONS:
        names = "; ".join(f"{k!r}: {v}" for k, v in ATTN_IMPLEMENTATIONS.items())
        raise ValueError(f"attn_implementation={value!r} is not one fastbert runs. It runs {names}; or pass None "
                         "(the backend decides)")


def _validate(config):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
            f"({config.num_attention_heads})"
        )
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported; choose one of {ACTIVATIONS}")
    if config.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {config.backend!r}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise NotImplementedError(
            f"position_embedding_type={config.position_embedding_type!r}: fastbert implements BERT's absolute "
            "position embeddings only"
        )
    if config.is_decoder or config.add_cross_attention:
        raise NotImplementedError("fastbert is an encoder: is_decoder/add_cross_attention are not supported")
    if not 0.0 <= config.hidden_dropout_prob < 1.0 or not 0.0 <= config.attention_probs_dropout_prob < 1.0:
        raise ValueError("dropout probabilities must be in [0, 1)")


def _check_model_type(config_dict):
    if not isinstance(config_dict, dict):
        raise ValueError(f"a BERT config must be a JSON object, got {type(config_dict).__name__}")
    model_type = config_dict.get("model_type")
    if model_type is not None and model_type != "bert":
        raise ValueError(
            f"this config is for model_type={model_type!r}, not 'bert': fastbert loads BERT checkpoints only"
        )


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); is it a BERT config.json?") from e


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _config_path(name_or_path, hub_kwargs):
    from .hub import resolve_file

    path = str(name_or_path)
    if os.path.isfile(path):
        return path
    return resolve_file(path, CONFIG_NAME, **hub_kwargs)


if HAS_TRANSFORMERS:

    class BertConfig(_AttnImplementation, _HFBertConfig):
        """``transformers.BertConfig`` plus fastbert's ``backend`` and ``unpad``, checked at construction."""

        backend: str = "auto"
        unpad: bool = True

        @property
        def output_attentions(self):
            return self._output_attentions

        @output_attentions.setter
        def output_attentions(self, value):  # every backend returns them (those calls run the explicit softmax)
            self._output_attentions = value

        def __post_init__(self, **kwargs):
            kwargs.pop("model_type", None)
            super().__post_init__(**kwargs)
            _validate(self)

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
            """Read ``config.json`` from a local directory or file, or from a hub repository name.
            Keywords that are config attributes override them; ``return_unused_kwargs=True`` returns
            ``(config, the other keywords)``, as in transformers."""
            hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
            for key in ("_from_auto", "_from_pipeline", "trust_remote_code"):
                kwargs.pop(key, None)
            data = _read_json(_config_path(pretrained_model_name_or_path, hub))
            return cls.from_dict(data, **kwargs)

        @classmethod
        def from_dict(cls, config_dict, **kwargs):
            _check_model_type(config_dict)
            return super().from_dict(dict(config_dict), **kwargs)

        @classmethod
        def from_json_file(cls, json_file):
            return cls.from_dict(_read_json(json_file))

else:

    class BertConfig(_AttnImplementation):
        """The stand-alone config (transformers not installed): the same fields and ``config.json``."""

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
            classifier_dropout: Optional[float] = None,
            is_decoder: bool = False,
            add_cross_attention: bool = False,
            tie_word_embeddings: bool = True,
            num_labels: Optional[int] = None,
            id2label: Optional[Dict[Any, str]] = None,
            label2id: Optional[Dict[str, int]] = None,
            problem_type: Optional[str] = None,
            output_hidden_states: bool = False,
            output_attentions: bool = False,
            return_dict: bool = True,
            architectures=None,
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
            self.classifier_dropout = classifier_dropout
            self.is_decoder = is_decoder
            self.add_cross_attention = add_cross_attention
            self.tie_word_embeddings = tie_word_embeddings
            self.problem_type = problem_type
            self.output_hidden_states = output_hidden_states
            self.output_attentions = output_attentions
            self.return_dict = return_dict
            self.architectures = architectures
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
            self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
            for key, value in kwargs.items():  # unknown keys, kept for the round trip
                setattr(self, key, value)
            _validate(self)

        @property
        def num_labels(self) -> int:
            return len(self.id2label)

        @num_labels.setter
        def num_labels(self, n: int):
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

        @property
        def name_or_path(self) -> str:
            return self._name_or_path

        @name_or_path.setter
        def name_or_path(self, value):
            self._name_or_path = str(value)

        def get_text_config(self, *args, **kwargs):
            return self

        # ---- serialisation --------------------------------------------------------------------------
        def to_dict(self) -> Dict[str, Any]:
            out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
            if self._name_or_path:
                out["_name_or_path"] = self._name_or_path
            out["id2label"] = {str(k): v for k, v in self.id2label.items()}
            out["model_type"] = self.model_type
            return dict(sorted(out.items()))

        def to_json_string(self) -> str:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

        def to_json_file(self, path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.to_json_string())

        @classmethod
        def from_dict(cls, config_dict: Dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
            _check_model_type(config_dict)
            config = cls(**config_dict)
            unused = {}
            for key, value in kwargs.items():  # as transformers: only keys that are config attributes
                if key == "num_labels" or hasattr(config, key):
                    setattr(config, key, value)
                else:
                    unused[key] = value
            _validate(config)
            return (config, unused) if return_unused_kwargs else config

        @classmethod
        def from_json_file(cls, path) -> "BertConfig":
            return cls.from_dict(_read_json(path))

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
            """Read ``config.json`` from a local directory or file, or from a hub repository name."""
            hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
            for key in ("_from_auto", "_from_pipeline", "trust_remote_code"):
                kwargs.pop(key, None)
            data = _read_json(_config_path(pretrained_model_name_or_path, hub))
            return cls.from_dict(data, **kwargs)

        def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
            if push_to_hub:
                raise NotImplementedError("push_to_hub needs transformers installed")
            if kwargs:  # transformers passes these on to push_to_hub only
                raise TypeError(f"BertConfig.save_pretrained got {sorted(kwargs)}: without transformers it only "
                                "writes config.json (push_to_hub needs transformers installed)")
            os.makedirs(save_directory, exist_ok=True)
            self.to_json_file(os.path.join(save_directory, CONFIG_NAME))

        def __eq__(self, other):
            return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

        def __repr__(self):
            return f"BertConfig {self.to_json_string()}"
