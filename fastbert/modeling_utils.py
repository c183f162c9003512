"""Weights in and out: initialisation, tied weights, ``from_pretrained`` and ``save_pretrained``.

Checkpoints are Hugging Face's: ``model.safetensors`` (or sharded with ``model.safetensors.index.json``),
or ``pytorch_model.bin``; legacy ``LayerNorm.gamma/beta`` names are accepted. Loading is strict by default:
missing, unexpected or mis-shaped weights raise a ``CheckpointError`` that lists them. The one allowance is
Hugging Face's "newly initialised head": weights outside the base ``bert.`` model (a classifier on top of a
pre-trained encoder) and the pooler may be missing — they keep their fresh initialisation and a warning
names them — and head weights of another head class in the checkpoint are ignored.
"""
import inspect
import json
import logging
import os
import tempfile
import warnings
from typing import Dict, Optional

import torch
from torch import nn

from .configuration_bert import BertConfig

logger = logging.getLogger("fastbert")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# Non-persistent buffers that older transformers versions saved.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (missing, unexpected or mis-shaped weights) or cannot be read."""


class BertPreTrainedModel(nn.Module):
    config_class = BertConfig
    base_model_prefix = "bert"
    _tied_weights_keys: Dict[str, str] = {}

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a fastbert.BertConfig, got {type(config).__name__}")
        self.config = config

    # ---- initialisation ---------------------------------------------------------------------------
    def post_init(self):
        self.apply(self._init_weights)
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif hasattr(module, "decoder") and hasattr(module, "bias") and isinstance(module.bias, nn.Parameter):
            module.bias.zero_()  # BertLMPredictionHead

    def get_output_embeddings(self):
        return None

    def get_input_embeddings(self):
        base = getattr(self, self.base_model_prefix, self)
        return base.embeddings.word_embeddings

    def tie_weights(self):
        out = self.get_output_embeddings()
        if out is not None and getattr(self.config, "tie_word_embeddings", True):
            out.weight = self.get_input_embeddings().weight

    def gradient_checkpointing_enable(self):
        base = getattr(self, self.base_model_prefix, self)
        base.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        base = getattr(self, self.base_model_prefix, self)
        base.encoder.gradient_checkpointing = False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in set(self.parameters()))

    # ---- saving -----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, safe_serialization: bool = True):
        """Write ``config.json`` and ``model.safetensors`` (tied copies left out, as Hugging Face does)."""
        os.makedirs(save_directory, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        if "architectures" not in self.config._extra:
            self.config._extra["architectures"] = self.config.architectures
        self.config.save_pretrained(save_directory)
        state = self.state_dict()
        for key, source in self._tied_weights_keys.items():
            if key in state and source in state and state[key].data_ptr() == state[source].data_ptr():
                del state[key]
        state = {k: v.detach().contiguous() for k, v in state.items()}
        if safe_serialization:
            from safetensors.torch import save_file

            _atomic_write(os.path.join(save_directory, SAFE_WEIGHTS_NAME),
                          lambda path: save_file(state, path, metadata={"format": "pt"}))
        else:
            _atomic_write(os.path.join(save_directory, WEIGHTS_NAME), lambda path: torch.save(state, path))

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config: Optional[BertConfig] = None,
                        dtype=None, torch_dtype=None, device=None, strict: bool = False,
                        ignore_mismatched_sizes: bool = False, revision: Optional[str] = None, **kwargs):
        """Load a Hugging Face BERT checkpoint from a local directory (or a hub name, with a network).

        ``kwargs`` that ``__init__`` takes (``add_pooling_layer``) go to the model, the rest override the
        config (``num_labels=3``, ``backend="triton"``, ...). ``strict=True`` turns the newly-initialised-head
        allowance off. ``dtype``: a torch dtype, or "auto" for the checkpoint's own.
        """
        path = str(pretrained_model_name_or_path)
        init_params = set(inspect.signature(cls.__init__).parameters) - {"self", "config"}
        model_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in init_params}
        if config is None:
            config = BertConfig.from_pretrained(path, **kwargs)
        elif kwargs:
            for key, value in kwargs.items():
                setattr(config, key, value)
        state = load_state_dict(path, revision=revision)
        model = cls(config, *model_args, **model_kwargs)
        model._load_checkpoint(state, strict=strict, ignore_mismatched_sizes=ignore_mismatched_sizes, source=path)
        dtype = dtype if dtype is not None else torch_dtype
        if dtype == "auto":
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        if dtype is not None:
            model = model.to(dtype)
        if device is not None:
            model = model.to(device)
        model.eval()  # as Hugging Face: a loaded model starts in eval mode
        return model

    def _load_checkpoint(self, state: Dict[str, torch.Tensor], *, strict=False, ignore_mismatched_sizes=False,
                         source="checkpoint"):
        prefix = self.base_model_prefix + "."
        is_head_model = hasattr(self, self.base_model_prefix)
        state = _normalize_keys(state)
        ckpt_has_prefix = any(k.startswith(prefix) for k in state)
        if is_head_model and not ckpt_has_prefix:
            state = {prefix + k: v for k, v in state.items()}  # a bare BertModel checkpoint under a head
        elif not is_head_model and ckpt_has_prefix:
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}

        expected = self.state_dict()
        tied = set(self._tied_weights_keys) if getattr(self.config, "tie_word_embeddings", True) else set()

        def in_base_body(key):  # embeddings and encoder: never newly initialised, never ignored
            if is_head_model:
                if not key.startswith(prefix):
                    return False
                key = key[len(prefix):]
            return key.split(".")[0] in ("embeddings", "encoder")

        missing = [k for k in expected if k not in state and k not in tied]
        unexpected = [k for k in state if k not in expected]
        mismatched = [(k, tuple(state[k].shape), tuple(expected[k].shape))
                      for k in expected if k in state and state[k].shape != expected[k].shape]

        errors = []
        bad_missing = [k for k in missing if strict or in_base_body(k)]
        bad_unexpected = [k for k in unexpected if strict or in_base_body(k)]
        if bad_missing:
            errors.append(f"missing weights ({len(bad_missing)}): {_short(bad_missing)}")
        if bad_unexpected:
            errors.append(f"unexpected weights ({len(bad_unexpected)}): {_short(bad_unexpected)}")
        bad_mismatched = [m for m in mismatched if not (ignore_mismatched_sizes and not in_base_body(m[0]))]
        if bad_mismatched:
            errors.append("weights of the wrong shape: " + ", ".join(
                f"{k} (checkpoint {a}, model {b})" for k, a, b in bad_mismatched[:20]))
        if errors:
            raise CheckpointError(
                f"{source} does not fit {type(self).__name__} with this config: " + "; ".join(errors)
                + ". Check that config.json belongs to these weights (layers, hidden size, vocab size)."
            )

        load = {k: v for k, v in state.items() if k in expected and state[k].shape == expected[k].shape}
        result = self.load_state_dict(load, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        new = missing + [m[0] for m in mismatched]
        if new:
            warnings.warn(
                f"{type(self).__name__}: these weights are not in {source} and are newly initialised: "
                f"{_short(new)}. Train the model on a downstream task before using it for predictions.",
                stacklevel=3,
            )
        ignored = [k for k in unexpected if k not in bad_unexpected]
        if ignored:
            logger.info("ignored checkpoint weights not used by %s: %s", type(self).__name__, _short(ignored))
        self.tie_weights()


def _short(keys, n=12):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _normalize_keys(state):
    out = {}
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key.endswith(".gamma"):
            key = key[: -len(".gamma")] + ".weight"
        elif key.endswith(".beta"):
            key = key[: -len(".beta")] + ".bias"
        out[key] = value
    return out


def _atomic_write(path, write):
    """Write through a temporary file in the same directory, then rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt: download or save "
            "it again"
        ) from e


def _read_torch(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


def load_state_dict(name_or_path: str, revision: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (or hub name): safetensors first, then pytorch_model.bin."""
    from .hub import resolve_file

    for index_name, weights_name, reader in ((SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, _read_safetensors),
                                             (WEIGHTS_INDEX_NAME, WEIGHTS_NAME, _read_torch)):
        single = resolve_file(name_or_path, weights_name, optional=True, revision=revision)
        if single is not None:
            return reader(single)
        index = resolve_file(name_or_path, index_name, optional=True, revision=revision)
        if index is not None:
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid checkpoint index ({e})") from e
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(reader(resolve_file(name_or_path, shard, revision=revision)))
            return state
    raise CheckpointError(
        f"no weights in {name_or_path}: expected {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME} (or a sharded index)"
    )
