"""Weights in and out: the model base class, initialisation, ``from_pretrained`` and (without transformers)
``save_pretrained``.

**The base class.** With ``transformers`` installed, ``BertPreTrainedModel`` subclasses
``transformers.PreTrainedModel``: Trainer, PEFT, pipelines and ``isinstance`` checks see a Hugging Face model,
and saving (``config.json``, sharding with ``max_shard_size``, tied weights left out), ``push_to_hub``,
``num_parameters(exclude_embeddings=)``, ``resize_token_embeddings``, ``enable_input_require_grads``,
gradient checkpointing and ``get_memory_footprint`` are the library's own. Without it, a small ``nn.Module``
base with the same names keeps ``import fastbert`` and inference working.

**Loading** stays fastbert's, in both cases. Checkpoints are Hugging Face's: ``model.safetensors`` (or sharded
with ``model.safetensors.index.json``), or ``pytorch_model.bin``; legacy ``LayerNorm.gamma/beta`` names are
accepted. Loading is strict by default: missing, unexpected or mis-shaped weights raise a ``CheckpointError``
that lists them. The one allowance is Hugging Face's "newly initialised head": weights outside the base
``bert.`` model (a classifier on top of a pre-trained encoder) and the pooler may be missing — they keep their
fresh initialisation and a warning names them — and head weights of another head class in the checkpoint are
ignored. ``from_pretrained``'s keywords are transformers' (each honoured, or an error naming it); a keyword
that is neither a loading option, a config attribute nor an ``__init__`` argument raises ``TypeError``, as in
transformers, and never lands in ``config.json``.
"""
import copy
import functools
import inspect
import json
import logging
import os
import tempfile
import warnings
from typing import Dict, Optional

import torch
from torch import nn

from .configuration_bert import HAS_TRANSFORMERS, BertConfig
from .configuration_bert import _validate as _validate_config
from .configuration_bert import check_attn_implementation as _check_attn_implementation

logger = logging.getLogger("fastbert")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# Non-persistent buffers that older transformers versions saved.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")

# from_pretrained keywords of transformers that fastbert honours, and those it cannot (each raises, named).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
_DROPPED_KWARGS = ("_from_auto", "_from_pipeline", "trust_remote_code", "low_cpu_mem_usage", "weights_only",
                   "_fast_init")  # no effect on the loaded model: accepted and ignored
_UNSUPPORTED_KWARGS = ("quantization_config", "tp_plan", "tp_size", "device_mesh", "gguf_file", "variant",
                       "key_mapping", "offload_folder", "offload_state_dict", "offload_buffers", "max_memory",
                       "adapter_name", "adapter_kwargs", "use_kernels", "kernel_config", "from_tf", "from_flax",
                       "distributed_config", "experts_implementation", "proxies", "mirror")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (missing, unexpected or mis-shaped weights) or cannot be read."""


def _as_fastbert_config(config):
    """fastbert's BertConfig for ``config``: itself, or a copy of a ``transformers.BertConfig``."""
    if isinstance(config, BertConfig):
        return config
    if getattr(config, "model_type", None) == "bert" and hasattr(config, "to_dict"):  # transformers.BertConfig
        data = config.to_dict()
        for key in ("transformers_version", "dtype", "torch_dtype"):
            data.pop(key, None)
        fb = BertConfig.from_dict(data)
        attn = getattr(config, "_attn_implementation", None)
        _check_attn_implementation(attn)
        return fb
    raise TypeError(f"config must be a fastbert.BertConfig (or a transformers.BertConfig), got "
                    f"{type(config).__name__}")


class _StandaloneModel(nn.Module):
    """The base class without transformers: the names of ``transformers.PreTrainedModel`` that fastbert's
    models and their users need; what needs the library (sharding, the hub, resizing) raises, naming it."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config, *inputs, **kwargs):
        super().__init__()
        self.config = config
        self.name_or_path = config.name_or_path

    def post_init(self):
        # Each module is initialised once (a head's post_init skips the encoder its BertModel initialised), in
        # the order transformers uses: the same weights from the same seed.
        def init_once(module):
            if not getattr(module, "_is_hf_initialized", False):
                self._init_weights(module)
                module._is_hf_initialized = True

        self.apply(init_once)
        self.tie_weights()

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    params.pop(id(m.weight), None)
        return sum(p.numel() for p in params.values() if p.requires_grad or not only_trainable)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        tensors = list({id(p): p for p in self.parameters()}.values())
        if return_buffers:
            tensors += list(self.buffers())
        return sum(t.nelement() * t.element_size() for t in tensors)

    def set_input_embeddings(self, value):
        self.base_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return None

    def tie_weights(self, *args, **kwargs):
        out = self.get_output_embeddings()
        if out is not None and getattr(self.config, "tie_word_embeddings", True):
            out.weight = self.get_input_embeddings().weight

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)
                module.gradient_checkpointing = True
        self.enable_input_require_grads()

    def gradient_checkpointing_disable(self):
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_input_require_grads(self):
        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(
            _make_inputs_require_grads)

    def disable_input_require_grads(self):
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    def resize_token_embeddings(self, *args, **kwargs):
        raise NotImplementedError("resize_token_embeddings needs transformers installed (pip install transformers)")

    def push_to_hub(self, *args, **kwargs):
        raise NotImplementedError("push_to_hub needs transformers installed (pip install transformers)")

    def save_pretrained(self, save_directory, safe_serialization: bool = True, max_shard_size=None,
                        push_to_hub: bool = False, state_dict=None, **kwargs):
        """Write ``config.json`` and ``model.safetensors`` (tied copies left out, as Hugging Face does)."""
        options = sorted(list(kwargs) + ["max_shard_size"] * (max_shard_size is not None)
                         + ["push_to_hub"] * bool(push_to_hub))
        if options:
            raise NotImplementedError(f"save_pretrained({', '.join(options)}=...) needs transformers installed "
                                      "(pip install transformers)")
        os.makedirs(save_directory, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(save_directory)
        state = dict(state_dict if state_dict is not None else self.state_dict())
        for key, source in (self._tied_weights_keys or {}).items():
            if key in state and source in state and state[key].data_ptr() == state[source].data_ptr():
                del state[key]
        state = {k: v.detach().contiguous() for k, v in state.items()}
        if safe_serialization:
            from safetensors.torch import save_file

            _atomic_write(os.path.join(save_directory, SAFE_WEIGHTS_NAME),
                          lambda path: save_file(state, path, metadata={"format": "pt"}))
        else:
            _atomic_write(os.path.join(save_directory, WEIGHTS_NAME), lambda path: torch.save(state, path))


def _make_inputs_require_grads(module, input, output):
    output.requires_grad_(True)


if HAS_TRANSFORMERS:
    # ~2.3 s on top of transformers' configuration module: paid on first use of a model class, not by
    # ``import fastbert`` (fastbert/__init__.py imports its models lazily).
    from transformers import PreTrainedModel as _Base
else:
    _Base = _StandaloneModel


class BertPreTrainedModel(_Base):
    config_class = BertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # transformers' check of config._attn_implementation at __init__ ('sdpa' is one we run)
    _tied_weights_keys: Dict[str, str] = {}

    def __init__(self, config, *inputs, **kwargs):
        super().__init__(_as_fastbert_config(config), *inputs, **kwargs)

    def set_attn_implementation(self, attn_implementation, allow_all_kernels: bool = False):
        """transformers' ``set_attn_implementation``: 'eager', 'sdpa' or 'fastbert' (the config's
        ``_attn_implementation``, which sets ``backend``); another name raises, naming these."""
        self.config._attn_implementation = attn_implementation

    # ---- initialisation (transformers' BERT scheme) -----------------------------------------------
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

    def get_input_embeddings(self):
        return self.base_model.embeddings.word_embeddings

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, dtype=None, torch_dtype=None,
                        device=None, device_map=None, strict: bool = False, ignore_mismatched_sizes: bool = False,
                        output_loading_info: bool = False, attn_implementation=None, state_dict=None,
                        use_safetensors: Optional[bool] = None, **kwargs):
        """Load a Hugging Face BERT checkpoint from a local directory (or a hub name, with a network).

        ``kwargs`` that ``__init__`` takes (``add_pooling_layer``) go to the model, config attributes override
        the config (``num_labels=3``, ``backend="triton"``, ...), hub options (``cache_dir``, ``revision``,
        ``subfolder``, ``token``, ``local_files_only``, ``force_download``) go to the download; anything else
        raises ``TypeError``. ``strict=True`` turns the newly-initialised-head allowance off. ``dtype``: a torch
        dtype, or "auto" for the checkpoint's own. ``device_map``: one device (``"cpu"``, ``"cuda:0"``, ``0``,
        ``{"": device}``) or ``"auto"`` (the GPU if there is one). ``output_loading_info=True`` returns
        ``(model, info)`` with transformers' keys.
        """
        unsupported = sorted(k for k in kwargs if k in _UNSUPPORTED_KWARGS)
        if unsupported:
            raise NotImplementedError(
                f"{cls.__name__}.from_pretrained: {', '.join(unsupported)} is not supported by fastbert (its "
                "models load whole, on one device); load with transformers for that")
        for key in _DROPPED_KWARGS:
            kwargs.pop(key, None)
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        _check_attn_implementation(attn_implementation)
        if device is not None and device_map is not None:
            raise ValueError(f"from_pretrained got both device={device!r} and device_map={device_map!r}: pass one")
        target_device = _device_from_map(device_map) if device_map is not None else device
        path = None if pretrained_model_name_or_path is None else str(pretrained_model_name_or_path)

        init_params = {name for name, p in inspect.signature(cls.__init__).parameters.items()
                       if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self", "config"}
        model_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in init_params}
        if config is None or isinstance(config, (str, os.PathLike)):
            config, unused = BertConfig.from_pretrained(path if config is None else str(config),
                                                        return_unused_kwargs=True, **hub, **kwargs)
        else:
            config = _as_fastbert_config(config)
            config = copy.deepcopy(config)
            unused = {}
            for key, value in kwargs.items():
                if key == "num_labels" or hasattr(config, key):
                    setattr(config, key, value)
                else:
                    unused[key] = value
        if unused:
            raise TypeError(
                f"{cls.__name__}.from_pretrained() got unexpected keyword argument(s) {sorted(unused)}: neither "
                f"a loading option, a config attribute nor an argument of {cls.__name__}.__init__")
        _validate_config(config)
        config._attn_implementation = attn_implementation  # None: as the config says (its backend)
        if path is not None:
            config.name_or_path = path
        if state_dict is None:
            if path is None:
                raise ValueError("from_pretrained(None, ...) needs state_dict=")
            state_dict = load_state_dict(path, use_safetensors=use_safetensors, **hub)
        model = cls(config, *model_args, **model_kwargs)
        info = model._load_checkpoint(state_dict, strict=strict, ignore_mismatched_sizes=ignore_mismatched_sizes,
                                      source=path or "state_dict")
        dtype = dtype if dtype is not None else torch_dtype
        if dtype == "auto":
            dtype = next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is not None:
            model = model.to(dtype)
        if target_device is not None:
            model = model.to(target_device)
        model.eval()  # as Hugging Face: a loaded model starts in eval mode
        return (model, info) if output_loading_info else model

    def _load_checkpoint(self, state: Dict[str, torch.Tensor], *, strict=False, ignore_mismatched_sizes=False,
                         source="checkpoint") -> dict:
        prefix = self.base_model_prefix + "."
        is_head_model = hasattr(self, self.base_model_prefix)
        state = _normalize_keys(state)
        ckpt_has_prefix = any(k.startswith(prefix) for k in state)
        if is_head_model and not ckpt_has_prefix:
            state = {prefix + k: v for k, v in state.items()}  # a bare BertModel checkpoint under a head
        elif not is_head_model and ckpt_has_prefix:
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}

        expected = self.state_dict()
        tied = set(self._tied_weights_keys or {}) if getattr(self.config, "tie_word_embeddings", True) else set()

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
        return {"missing_keys": set(missing), "unexpected_keys": set(unexpected),
                "mismatched_keys": {(k, a, b) for k, a, b in mismatched}, "error_msgs": []}


def _device_from_map(device_map):
    """The one device a ``device_map`` names; fastbert's models are never split over devices."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if device_map == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, str) and device_map not in ("balanced", "balanced_low_0", "sequential"):
        try:
            return torch.device(device_map)
        except RuntimeError:
            pass
    raise NotImplementedError(
        f"device_map={device_map!r}: fastbert loads a model onto one device; pass 'auto', a device ('cpu', "
        "'cuda:0', 0) or {'': device}")


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


def load_state_dict(name_or_path: str, revision: Optional[str] = None, use_safetensors: Optional[bool] = None,
                    **hub_kwargs) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (or hub name): safetensors first, then pytorch_model.bin
    (``use_safetensors``: True for safetensors only, False for pytorch_model.bin only)."""
    from .hub import resolve_file

    formats = ((SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, _read_safetensors),
               (WEIGHTS_INDEX_NAME, WEIGHTS_NAME, _read_torch))
    if use_safetensors is not None:
        formats = formats[:1] if use_safetensors else formats[1:]
    for index_name, weights_name, reader in formats:
        single = resolve_file(name_or_path, weights_name, optional=True, revision=revision, **hub_kwargs)
        if single is not None:
            return reader(single)
        index = resolve_file(name_or_path, index_name, optional=True, revision=revision, **hub_kwargs)
        if index is not None:
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid checkpoint index ({e})") from e
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(reader(resolve_file(name_or_path, shard, revision=revision, **hub_kwargs)))
            return state
    names = " or ".join(f"{w} (or its sharded index)" for _, w, _ in formats)
    raise CheckpointError(f"no weights in {name_or_path}: expected {names}")
