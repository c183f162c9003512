"""Sentence embeddings as sentence-transformers computes them, from the same model directory.

``SentenceEncoder(model_dir)`` reads the directory's sentence-transformers pipeline: ``modules.json``
(Transformer -> Pooling -> optional Normalize), ``sentence_bert_config.json`` (``max_seq_length``,
``do_lower_case``) and ``1_Pooling/config.json`` (mean, CLS, max or mean-sqrt-len pooling). A module or
pooling mode it does not implement raises, naming it. A plain BERT directory without ``modules.json`` gets
what sentence-transformers gives it: mean pooling, no normalisation, truncation at the model's maximum.

Texts are tokenized into packed batches (no padding: the tokenizer's ``encode_packed`` output goes straight to
the packed model forward), longest first, the next batch tokenized on a worker thread while the model runs
the current one, and the embeddings returned in input order.
"""
import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from .assets import MISSING_MODEL_HELP, default_model_dir
from .hardware import default_dtype
from .modeling_bert import BertModel, resolve_backend

POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8_REFUSAL = (
    "dtype='int8': fastbert ships no int8 path. Measured on all-MiniLM-L6-v2 (600 real paragraphs, "
    "scripts/int8_study.py): int8 per-channel weights with per-token int8 activations keep min cosine 0.992 to "
    "fp32 (0.997 with SmoothQuant), below the 0.999 fastbert requires, and this torch's CPU int8 GEMM is slower "
    "than bf16 on AMX. Use dtype='bfloat16' (min cosine 0.9999, the default on CPUs with AMX-BF16 or "
    "AVX512-BF16) or 'float32'; see docs/cpu.md")


def resolve_dtype(dtype, device):
    """(torch dtype, why) for the ``dtype`` argument: None / "auto" -> the device's default."""
    if dtype is None or dtype == "auto":
        chosen, why = default_dtype(device)
        return chosen, f"auto: {why}"
    if dtype in ("int8", torch.int8, torch.qint8):
        raise ValueError(INT8_REFUSAL)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of auto, {', '.join(DTYPES)} "
                             "(or a torch dtype)")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype={dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        return dtype, "asked for (float16 on a CPU is slow: most CPUs emulate it)"
    return dtype, "asked for"


def load_tokenizer(model_dir):
    """fastbert's C++ WordPiece tokenizer for the model directory."""
    from .tokenization_bert import BertTokenizer

    return BertTokenizer.from_pretrained(str(model_dir)), "fastbert.BertTokenizer (C++)"


# ------------------------------------------------------------------------------------------------------
# The sentence-transformers pipeline of a directory
# ------------------------------------------------------------------------------------------------------
def sentence_pipeline(model_dir) -> Dict:
    """``{"pooling", "normalize", "max_seq_length", "do_lower_case"}`` from a model directory."""
    d = Path(model_dir)
    spec = {"pooling": "mean_tokens", "normalize": False, "max_seq_length": None, "do_lower_case": False}
    if not (d / "modules.json").is_file():
        return spec  # what sentence-transformers builds for a plain BERT directory
    modules = json.loads((d / "modules.json").read_text(encoding="utf-8"))
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            cfg = d / m.get("path", "") / "sentence_bert_config.json"
            if cfg.is_file():
                sb = json.loads(cfg.read_text(encoding="utf-8"))
                spec["max_seq_length"] = sb.get("max_seq_length")
                spec["do_lower_case"] = bool(sb.get("do_lower_case", False))
        elif kind == "Pooling":
            pc = json.loads((d / m["path"] / "config.json").read_text(encoding="utf-8"))
            on = [k[len("pooling_mode_"):] for k, v in pc.items() if k.startswith("pooling_mode_") and v]
            if len(on) != 1 or on[0] not in POOLING_MODES:
                raise NotImplementedError(
                    f"{d / m['path'] / 'config.json'}: pooling {on} is not supported; fastbert implements exactly "
                    f"one of {', '.join(POOLING_MODES)}")
            if pc.get("include_prompt") is False:
                raise NotImplementedError(f"{d / m['path'] / 'config.json'}: include_prompt=false is not supported")
            spec["pooling"] = on[0]
        elif kind == "Normalize":
            spec["normalize"] = True
        else:
            raise NotImplementedError(f"{d / 'modules.json'}: module {m['type']!r} is not supported by fastbert's "
                                      "SentenceEncoder (it implements Transformer, Pooling and Normalize)")
    return spec


def pool(hidden: torch.Tensor, mask: torch.Tensor, spec: Dict) -> torch.Tensor:
    """Padded (B, S, H) hidden states and (B, S) mask -> (B, H) sentence embeddings (``spec["normalize"]``
    applied)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mode = spec["pooling"]
    if mode == "cls_token":
        emb = hidden[:, 0]
    elif mode == "max_tokens":
        emb = hidden.masked_fill(m == 0, -1e9).max(dim=1).values  # as sentence-transformers masks
    else:
        total, n = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
        emb = total / (n if mode == "mean_tokens" else n.sqrt())
    return torch.nn.functional.normalize(emb, dim=-1) if spec["normalize"] else emb


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, spec: Dict, normalize: Optional[bool] = None):
    """Packed (T, H) hidden states of sequences ``cu_seqlens`` -> (B, H) sentence embeddings."""
    B = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    mode = spec["pooling"]
    if mode == "cls_token":
        emb = hidden[cu_seqlens[:-1].long()]
    else:
        seq = torch.repeat_interleave(torch.arange(B, device=hidden.device), lengths, output_size=hidden.shape[0])
        if mode == "max_tokens":
            emb = hidden.new_full((B, hidden.shape[1]), -1e9).scatter_reduce(
                0, seq[:, None].expand_as(hidden), hidden, reduce="amax", include_self=True)
        else:
            total = hidden.new_zeros(B, hidden.shape[1]).index_add_(0, seq, hidden)
            n = lengths.to(hidden.dtype).clamp(min=1e-9)[:, None]
            emb = total / (n if mode == "mean_tokens" else n.sqrt())
    normalize = spec["normalize"] if normalize is None else normalize
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


# ------------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------------
class SentenceEncoder:
    """sentence-transformers' ``encode`` on fastbert's model and tokenizer (see the module docstring)."""

    def __init__(self, model_dir=None, device=None, dtype=None, backend: str = "auto", cuda_graphs: bool = True):
        """``dtype``: None or ``"auto"`` picks per device (``fastbert.hardware.default_dtype``: fp16 on a GPU,
        bf16 on a CPU that multiplies bf16 natively, fp32 elsewhere); a torch dtype or its name overrides it.
        ``self.dtype`` and ``self.dtype_reason`` say what runs and why."""
        if model_dir is None:
            model_dir = default_model_dir()
            if model_dir is None:
                raise FileNotFoundError(MISSING_MODEL_HELP)
        self.model_dir = model_dir
        self.spec = sentence_pipeline(model_dir)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype, self.dtype_reason = resolve_dtype(dtype, device)
        # An inference engine: eval mode and frozen weights (which the cpu path packs for oneDNN once).
        self.model = BertModel.from_pretrained(model_dir, add_pooling_layer=False, backend=backend,
                                               dtype=self.dtype, device=device).eval().requires_grad_(False)
        self.tokenizer, self.tokenizer_name = load_tokenizer(model_dir)
        limit = self.model.config.max_position_embeddings
        self.max_seq_length = min(self.spec["max_seq_length"] or limit, limit)
        self.cuda_graphs = cuda_graphs  # on a GPU with the Triton backend: fastbert.cuda_graphs, one graph per bucket
        self._graphed = None

    def _forward(self, enc):
        """The packed forward: through CUDA graphs on a GPU (Triton backend), else the model itself."""
        if self.cuda_graphs and self.model.device.type == "cuda" and self.backend() == "triton":
            if self._graphed is None or self._graphed.device != self.model.device:
                from .cuda_graphs import GraphedBertModel

                self._graphed = GraphedBertModel(self.model, pooler=False)
            return self._graphed(enc["input_ids"], enc["cu_seqlens"], enc["max_seqlen"],
                                 token_type_ids=enc["token_type_ids"]).last_hidden_state
        return self.model(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"],
                          cu_seqlens=enc["cu_seqlens"], max_seqlen=enc["max_seqlen"]).last_hidden_state

    def backend(self, device=None) -> str:
        """The backend ``encode`` runs on (it runs in inference mode)."""
        return resolve_backend(self.model.config, torch.device(device) if device else self.model.device,
                               inference=True, dtype=self.model.dtype)

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, sentences: Union[str, List[str]], batch_size: int = 32, show_progress_bar: Optional[bool] = None,
               output_value: str = "sentence_embedding", precision: str = "float32", convert_to_numpy: bool = True,
               convert_to_tensor: bool = False, device: Optional[str] = None, normalize_embeddings: bool = False,
               **kwargs):
        """Embeddings of ``sentences`` as sentence-transformers' ``SentenceTransformer.encode`` returns them:
        one row per sentence in input order (1-D for a single string); numpy float32 by default, a tensor with
        ``convert_to_tensor``; ``normalize_embeddings`` L2-normalises them (the pipeline's Normalize module
        always applies)."""
        if kwargs:
            raise TypeError(f"encode() got unsupported arguments {sorted(kwargs)}; fastbert's SentenceEncoder "
                            "supports batch_size, show_progress_bar, convert_to_numpy, convert_to_tensor, "
                            "normalize_embeddings, device, output_value='sentence_embedding', precision='float32'")
        if output_value != "sentence_embedding":
            raise NotImplementedError(f"output_value={output_value!r}: only 'sentence_embedding' is supported")
        if precision != "float32":
            raise NotImplementedError(f"precision={precision!r}: only 'float32' embeddings are supported")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if device is not None and torch.device(device) != self.model.device:
            self.model.to(device)
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("sentences must be a string or a list of strings")
        emb = self._embed(texts, batch_size, show_progress_bar)
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if single:
            emb = emb[0]
        if convert_to_tensor:
            return emb
        if convert_to_numpy:
            return emb.cpu().numpy()
        return list(emb) if not single else emb

    def tokenize(self, texts: List[str], truncation: bool = True):
        """One packed batch of ``texts`` as the model takes it: the tokenizer's ``encode_packed`` output
        (``input_ids``, ``token_type_ids``, ``cu_seqlens``, ``max_seqlen``), lower-cased first when the
        pipeline says so and truncated at ``max_seq_length`` (with ``truncation=False`` a longer text raises)."""
        if self.spec["do_lower_case"]:
            texts = [t.lower() for t in texts]
        if truncation:
            return self.tokenizer.encode_packed(texts, truncation=True, max_length=self.max_seq_length)
        enc = self.tokenizer.encode_packed(texts)
        lengths = (enc["cu_seqlens"][1:] - enc["cu_seqlens"][:-1]).tolist()
        too_long = [i for i, n in enumerate(lengths) if n > self.max_seq_length]
        if too_long:
            raise ValueError(f"text {too_long[0]} is {lengths[too_long[0]]} tokens long, more than this model's "
                             f"max_seq_length ({self.max_seq_length}); truncate it or pass truncation=True")
        return enc

    @torch.inference_mode()
    def embed_packed(self, enc, normalize: Optional[bool] = None) -> torch.Tensor:
        """(B, H) float32 sentence embeddings of one packed batch (``tokenize``'s output), in its order: the
        packed forward, then the pipeline's pooling (and its Normalize, unless ``normalize=False``)."""
        hidden = self._forward(enc)
        cu = enc["cu_seqlens"].to(hidden.device)
        normalize = self.spec["normalize"] if normalize is None else (normalize and self.spec["normalize"])
        return pool_packed(hidden.float(), cu, self.spec, normalize=normalize)

    @torch.inference_mode()
    def _embed(self, texts: List[str], batch_size: int, show_progress_bar=None, normalize_module: bool = True):
        """(N, H) fp32 embeddings in input order: packed batches, longest texts first."""
        hidden_size = self.model.config.hidden_size
        if not texts:
            return torch.zeros(0, hidden_size, device=self.model.device)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), hidden_size, device=self.model.device)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=math.ceil(len(texts) / batch_size), desc="Batches")

        def tokenize(start):
            idx = order[start:start + batch_size]
            return idx, self.tokenize([texts[i] for i in idx])

        # The C++ tokenizer releases the GIL: batch i+1 is tokenized on a worker thread while the model runs
        # batch i.
        with ThreadPoolExecutor(max_workers=1) as pool:
            starts = iter(starts)
            pending = pool.submit(tokenize, next(starts))
            for start in itertools.chain(starts, [None]):
                idx, enc = pending.result()
                if start is not None:
                    pending = pool.submit(tokenize, start)
                out[torch.tensor(idx, device=out.device)] = self.embed_packed(enc, normalize=normalize_module)
        return out

    def similarity(self, a, b=None) -> torch.Tensor:
        """Cosine similarity matrix (sentence-transformers' default similarity function)."""
        a = torch.as_tensor(a, dtype=torch.float32)
        b = a if b is None else torch.as_tensor(b, dtype=torch.float32)
        a, b = (t[None] if t.dim() == 1 else t for t in (a, b))
        return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
