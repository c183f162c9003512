"""The runtimes ``bench_cpu_peers`` times on the CPU: how each one is built from the model directory.

Every runtime is one ``Runtime`` row: a name, the precision it is asked for, the modules it needs and a
``build(setup)`` that returns ``(encode, info)``: ``encode(texts) -> (N, H) float32`` L2-normalised sentence
embeddings in input order (mean pooling over real tokens, truncation at ``setup.max_seq_length``, batches of
``setup.batch_size``), ``info`` what the runtime resolved on its own (the precision it really runs, the
truncation it really applies). ``runtimes()`` is the list, in table order; to time one more variant, add a
row there (``FASTBERT_VARIANTS`` for fastbert's own).

The peers run as their users would run them: sentence-transformers' ``encode``; ONNX Runtime and OpenVINO
on one ONNX export of the directory (``torch.onnx.export``, the dynamo exporter, with the same input and
output names as optimum's feature-extraction export: optimum-onnx 0.1 requires transformers < 4.58, so it
is not used), ONNX Runtime int8 through ``onnxruntime.quantization.quantize_dynamic``; CTranslate2 through
its ``TransformersConverter`` and ``ctranslate2.Encoder``; fastembed with its own registration of
``sentence-transformers/all-MiniLM-L6-v2`` pointed at the local export (``specific_model_path``: no hub).
ONNX Runtime, OpenVINO and CTranslate2 get the glue sentence-transformers itself uses: the model's
``tokenizer.json`` (Hugging Face ``tokenizers``), texts sorted longest first, each batch padded to its
longest row, mean pooling over the attention mask, L2 normalisation. Every runtime gets ``setup.threads``
intra-op threads (all physical cores by default), inter-op 1.
"""
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch


@dataclass
class Setup:
    """What every runtime is built from, and the exported artifacts they share (made once, on first use)."""

    model_dir: Path
    work_dir: Path  # exports and conversions go here
    threads: int
    batch_size: int = 32
    max_seq_length: int = 256
    _cache: Dict = field(default_factory=dict, repr=False)

    def once(self, key: str, make: Callable):
        """``make()`` (an exported file's path) once per work_dir, also across the benchmark's worker
        processes: a marker file beside the exports records the path."""
        if key not in self._cache:
            marker = self.work_dir / f"{key}.done.json"
            if marker.exists():
                self._cache[key] = Path(json.loads(marker.read_text())["path"])
            else:
                self._cache[key] = make()
                marker.write_text(json.dumps({"path": str(self._cache[key])}))
        return self._cache[key]


@dataclass
class Runtime:
    name: str  # the table's runtime column
    precision: str  # what is asked for; info["precision"] (what it really runs) wins in the table
    build: Callable[[Setup], Tuple[Callable[[List[str]], np.ndarray], Dict]]
    needs: Tuple[str, ...] = ()  # modules that must import, else the row is skipped with a note
    reference: bool = False  # sentence-transformers fp32: the fidelity reference and the "x ST" baseline


# ------------------------------------------------------------------------------------------------------
# Shared glue: tokenization, pooling, the ONNX export
# ------------------------------------------------------------------------------------------------------
def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, S, H) hidden states, (B, S) attention mask -> (B, H) mean over real tokens, L2-normalised (what
    sentence-transformers' Pooling(mean) + Normalize compute)."""
    m = mask[..., None].astype(np.float32)
    emb = (hidden.astype(np.float32) * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)


def hf_tokenizer(setup: Setup):
    """The directory's ``tokenizer.json``, truncating at ``max_seq_length``, padding to the batch's longest."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(setup.model_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=setup.max_seq_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    return tok


def batched_encoder(setup: Setup, forward: Callable[[Dict[str, np.ndarray]], np.ndarray]):
    """``encode(texts)`` around ``forward({"input_ids", "attention_mask", "token_type_ids"}) -> (B, S, H)``:
    longest texts first (as sentence-transformers orders them), padded batches, pooled, in input order."""
    tok = hf_tokenizer(setup)

    def encode(texts: List[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = None
        for start in range(0, len(texts), setup.batch_size):
            idx = order[start:start + setup.batch_size]
            encs = tok.encode_batch([texts[i] for i in idx])
            feed = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
            emb = mean_pool_normalize(forward(feed), feed["attention_mask"])
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return out

    return encode


def onnx_export(setup: Setup) -> Path:
    """``model.onnx`` (+ external weights) of the directory's BERT: inputs input_ids / attention_mask /
    token_type_ids, output last_hidden_state, batch and sequence axes dynamic; made once per run."""
    def make():
        from transformers import AutoModel

        out = setup.work_dir / "onnx"
        out.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_pretrained(str(setup.model_dir), attn_implementation="eager").eval()

        class LastHiddenState(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        ids = torch.randint(1000, 20000, (2, 16))
        mask = torch.ones_like(ids)
        mask[1, 11:] = 0  # a padded row, so the export is traced through the attention mask
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(LastHiddenState(model), (ids, mask, torch.zeros_like(ids)), str(out / "model.onnx"),
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]},
                          opset_version=18, dynamo=True)
        return out / "model.onnx"

    return setup.once("onnx", make)


# ------------------------------------------------------------------------------------------------------
# The runtimes
# ------------------------------------------------------------------------------------------------------
def build_sentence_transformers(setup: Setup):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(setup.model_dir), device="cpu")
    model.max_seq_length = setup.max_seq_length
    return (lambda texts: model.encode(texts, batch_size=setup.batch_size, normalize_embeddings=True),
            {"precision": "fp32"})


def build_onnxruntime(setup: Setup, quantize: Optional[str] = None):
    """ONNX Runtime, CPUExecutionProvider, on the fp32 export or its dynamic int8 quantization (``quantize``:
    ``"per-tensor"``, ORT's default, or ``"per-channel"`` weight scales)."""
    import onnxruntime as ort

    path = onnx_export(setup)
    if quantize:
        def make():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = path.parent / f"model_int8_{quantize}.onnx"
            quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8, per_channel=quantize == "per-channel")
            return q

        path = setup.once(f"onnx-int8-{quantize}", make)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = setup.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    forward = lambda feed: sess.run(["last_hidden_state"], {k: feed[k] for k in inputs})[0]  # noqa: E731
    return batched_encoder(setup, forward), {"providers": sess.get_providers(), "model_file": path.name}


def build_openvino(setup: Setup, precision_hint: Optional[str] = None):
    """OpenVINO on the ONNX export, CPU plugin; its own default precision unless ``precision_hint``
    (``"f32"``); the precision it compiled for is read back from ``INFERENCE_PRECISION_HINT``."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": setup.threads}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    compiled = ov.Core().compile_model(str(onnx_export(setup)), "CPU", config)
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}

    def forward(feed):
        request.infer({k: v for k, v in feed.items() if k in names})
        return request.get_output_tensor(0).data.copy()

    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32", "f16"
    return batched_encoder(setup, forward), {
        "precision": {"f32": "fp32", "f16": "fp16"}.get(hint, hint), "INFERENCE_PRECISION_HINT": hint,
        "INFERENCE_NUM_THREADS": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "PERFORMANCE_HINT": str(compiled.get_property("PERFORMANCE_HINT"))}


def build_ctranslate2(setup: Setup, compute_type: str = "float32"):
    """CTranslate2: the directory converted once (float32 weights), loaded with ``compute_type``."""
    import ctranslate2

    def make():
        out = setup.work_dir / "ct2"
        ctranslate2.converters.TransformersConverter(str(setup.model_dir)).convert(str(out), force=True)
        return out

    encoder = ctranslate2.Encoder(str(setup.once("ct2", make)), device="cpu", compute_type=compute_type,
                                  intra_threads=setup.threads, inter_threads=1)

    def forward(feed):
        mask = feed["attention_mask"]
        lengths = mask.sum(1)
        ids = [row[:n].tolist() for row, n in zip(feed["input_ids"], lengths)]
        hidden = np.asarray(encoder.forward_batch(ids).last_hidden_state)  # (B, longest, H), host memory
        return hidden[:, :mask.shape[1]]

    return batched_encoder(setup, forward), {"compute_type": encoder.compute_type}


FASTEMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # fastembed's own entry: mean pooling, normalised


def build_fastembed(setup: Setup):
    """fastembed's ``TextEmbedding`` for its registered all-MiniLM-L6-v2, files from the local ONNX export
    (``specific_model_path``) instead of the hub. fastembed truncates at tokenizer_config.json's
    ``model_max_length`` (512 in this directory): the copy says ``max_seq_length`` so all runtimes truncate
    alike, and the truncation fastembed really applies is read back."""
    from fastembed import TextEmbedding

    def make():
        out = setup.work_dir / "fastembed"
        out.mkdir(parents=True, exist_ok=True)
        onnx = onnx_export(setup)
        for f in onnx.parent.iterdir():
            if f.name.startswith("model.onnx"):
                shutil.copy(f, out / f.name)
        for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(setup.model_dir / name, out / name)
        cfg = json.loads((setup.model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg["model_max_length"] = setup.max_seq_length
        (out / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
        return out

    path = setup.once("fastembed", make)
    model = TextEmbedding(FASTEMBED_MODEL, specific_model_path=str(path), threads=setup.threads,
                          cache_dir=str(setup.work_dir / "fastembed-cache"))
    tok = getattr(getattr(model, "model", None), "tokenizer", None)
    truncation = (tok.truncation or {}).get("max_length") if tok is not None else None
    if truncation != setup.max_seq_length:
        raise RuntimeError(f"fastembed truncates at {truncation} tokens, not {setup.max_seq_length}: not comparable")
    encode = lambda texts: np.stack(list(model.embed(texts, batch_size=setup.batch_size)))  # noqa: E731
    return encode, {"model": FASTEMBED_MODEL, "truncation": truncation}


def build_fastbert(setup: Setup, dtype=None):
    """``fastbert.SentenceEncoder(dtype=dtype)`` on the CPU, exactly as a user constructs it."""
    from fastbert import SentenceEncoder

    enc = SentenceEncoder(setup.model_dir, device="cpu", dtype=dtype)
    if enc.max_seq_length != setup.max_seq_length:
        raise RuntimeError(f"fastbert's max_seq_length is {enc.max_seq_length}, not {setup.max_seq_length}")
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    weights = next(enc.model.parameters()).dtype  # what the default resolved to
    precision = names.get(weights if dtype is None else dtype, str(dtype).replace("torch.", ""))
    return (lambda texts: enc.encode(texts, batch_size=setup.batch_size, normalize_embeddings=True),
            {"precision": precision, "weights_dtype": str(weights), "backend": enc.backend()})


# fastbert's own rows: (label, dtype passed to SentenceEncoder). Add variants here.
FASTBERT_VARIANTS = [
    ("default", None),
    ("fp32", torch.float32),
    ("bf16", torch.bfloat16),
]  # no int8 row: dtype="int8" is refused (fidelity below 0.999; scripts/int8_study.py, docs/cpu.md)


def runtimes() -> List[Runtime]:
    """Every row of the table, in order; the first is the reference."""
    def with_(fn, **kw):
        return lambda setup: fn(setup, **kw)

    rows = [
        Runtime("sentence-transformers", "fp32", build_sentence_transformers, ("sentence_transformers",), True),
        Runtime("ONNX Runtime", "fp32", build_onnxruntime, ("onnxruntime", "onnxscript")),
        Runtime("ONNX Runtime", "int8 dynamic, per-tensor weights (ORT default)",
                with_(build_onnxruntime, quantize="per-tensor"), ("onnxruntime", "onnxscript")),
        Runtime("ONNX Runtime", "int8 dynamic, per-channel weights",
                with_(build_onnxruntime, quantize="per-channel"), ("onnxruntime", "onnxscript")),
        Runtime("OpenVINO", "default", build_openvino, ("openvino", "onnxscript")),
        Runtime("OpenVINO", "fp32", with_(build_openvino, precision_hint="f32"), ("openvino", "onnxscript")),
        Runtime("CTranslate2", "fp32", build_ctranslate2, ("ctranslate2",)),
        Runtime("CTranslate2", "int8", with_(build_ctranslate2, compute_type="int8"), ("ctranslate2",)),
        Runtime("fastembed", "fp32 (ONNX Runtime)", build_fastembed, ("fastembed", "onnxscript")),
    ]
    rows += [Runtime(f"fastbert ({label})", "default" if dtype is None else str(dtype).replace("torch.", ""),
                     with_(build_fastbert, dtype=dtype)) for label, dtype in FASTBERT_VARIANTS]
    return rows
