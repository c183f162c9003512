"""Encoder providers, all built from ONE set of weights, and the inputs they are timed on.

A provider turns the shared fastbert fp32 weights into something a user could run instead:

    fastbert-triton-unpad   fastbert, Triton kernels, padding removed once (config.unpad=True, the default)
    fastbert-triton-padded  fastbert, Triton kernels on the padded batch (config.unpad=False)
    fastbert-triton-graph   fastbert.cuda_graphs.GraphedBertModel: packed forward, one CUDA graph per shape bucket
    fastbert-torch          fastbert, PyTorch path (SDPA, F.layer_norm, F.gelu)
    hf-eager                transformers.BertModel, attn_implementation="eager"
    hf-sdpa                 transformers.BertModel, attn_implementation="sdpa"
    hf-compile              torch.compile(hf-sdpa) (inductor, default mode, static shapes)
    hf-patched              hf-sdpa after fastbert.patch(model) (fused ops in place; PyTorch paths on CPU)

Each provider is checked against Hugging Face eager in fp32 on the valid (non-padded) positions before it
is timed: its error may be at most 3x the error of Hugging Face eager in the timed dtype (plus a small
floor). A provider that fails the check is reported, never timed.
"""
import copy
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

import fastbert

# Shapes of the encoders benchmarked (random init, except MiniLM when its real weights are installed).
MODEL_SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # for the runner's own test: seconds, not minutes
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 vocab_size=2048, max_position_embeddings=512),
}

PROVIDERS = ("fastbert-triton-unpad", "fastbert-triton-padded", "fastbert-triton-graph", "fastbert-torch",
             "hf-eager", "hf-sdpa", "hf-compile", "hf-patched")
TRITON_CPU_REASON = "Triton kernels need a GPU (the CPU interpreter is no speed measurement)"
COMPILE_CPU_REASON = "skipped on CPU: compile time (pass --compile-cpu to include it)"


class Skip(Exception):
    """A provider that does not apply here; its message is the reason reported."""


def reference_model(name: str, seed: int = 0) -> fastbert.BertModel:
    """The one fp32 CPU model every provider copies its weights from."""
    if name == "minilm":
        from fastbert.assets import default_model_dir

        model_dir = default_model_dir()
        if model_dir is not None:
            model = fastbert.BertModel.from_pretrained(model_dir, backend="torch")
            model.weights_note = "all-MiniLM-L6-v2 (real weights)"
            return model.eval()
    torch.manual_seed(seed)
    model = fastbert.BertModel(fastbert.BertConfig(backend="torch", **MODEL_SHAPES[name]))
    model.weights_note = "random init (seed %d)" % seed
    return model.eval()


def hf_config(fb_config: fastbert.BertConfig, attn_implementation: str):
    import transformers

    cfg = {k: v for k, v in fb_config.to_dict().items() if k not in ("backend", "unpad")}
    hcfg = transformers.BertConfig.from_dict(cfg)
    hcfg._attn_implementation = attn_implementation
    return hcfg


def build_hf(ref: fastbert.BertModel, attn_implementation: str):
    """transformers.BertModel with the reference weights (strict load: every key must match)."""
    import transformers

    hcfg = hf_config(ref.config, attn_implementation)
    model = transformers.BertModel(hcfg)
    if getattr(model.config, "_attn_implementation", None) != attn_implementation:  # older/newer API
        model = transformers.BertModel._from_config(hcfg, attn_implementation=attn_implementation)
    model.load_state_dict(ref.state_dict(), strict=True)
    actual = getattr(model.config, "_attn_implementation", None)
    if actual != attn_implementation:
        raise RuntimeError(f"transformers gave attn_implementation={actual!r}, asked for {attn_implementation!r}")
    return model


def build_fastbert(ref: fastbert.BertModel, backend: str, unpad: bool = True) -> fastbert.BertModel:
    config = copy.deepcopy(ref.config)
    config.backend, config.unpad = backend, unpad
    model = fastbert.BertModel(config)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


@dataclass
class Built:
    """A provider ready to run: ``fn(inputs)`` returns the padded last hidden state (inference) or the loss
    (training step)."""
    name: str
    fn: Callable
    module: torch.nn.Module
    notes: List[str] = field(default_factory=list)


def _encoder_forward(model):
    def fn(inputs):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    return fn


def _interpret_ok(device) -> bool:
    """Triton providers on CPU under TRITON_INTERPRET=1 (``--triton-interpret``): a check that the GPU path
    of the runner works, never a speed measurement."""
    from fastbert.ops._dispatch import interpret_mode

    return device.type == "cpu" and INTERPRET_PROVIDERS and interpret_mode()


INTERPRET_PROVIDERS = []  # set to [True] by the runner's --triton-interpret


def build_inference(name: str, ref: fastbert.BertModel, device: torch.device, dtype: torch.dtype,
                    compile_cpu: bool = False) -> Built:
    """One inference provider in ``dtype`` on ``device``, in eval mode; raises Skip when it does not apply."""
    if name == "fastbert-triton-graph" and device.type != "cuda":
        raise Skip(TRITON_CPU_REASON)
    if name.startswith("fastbert-triton") and device.type != "cuda" and not _interpret_ok(device):
        raise Skip(TRITON_CPU_REASON)
    if name == "hf-patched" and device.type != "cuda" and not _interpret_ok(device):
        from fastbert.ops._dispatch import interpret_mode

        if interpret_mode():  # the patched ops would run the Triton interpreter: no speed measurement
            raise Skip(TRITON_CPU_REASON)
    if name == "hf-compile" and device.type != "cuda" and not compile_cpu:
        raise Skip(COMPILE_CPU_REASON)
    if name == "fastbert-triton-unpad":
        model = build_fastbert(ref, "triton", unpad=True)
    elif name == "fastbert-triton-padded":
        model = build_fastbert(ref, "triton", unpad=False)
    elif name == "fastbert-triton-graph":
        model = build_fastbert(ref, "triton", unpad=True)
    elif name == "fastbert-torch":
        model = build_fastbert(ref, "torch")
    elif name == "hf-eager":
        model = build_hf(ref, "eager")
    elif name in ("hf-sdpa", "hf-compile"):
        model = build_hf(ref, "sdpa")
    elif name == "hf-patched":
        return build_hf_patched(ref, device, dtype)
    else:
        raise ValueError(f"unknown provider {name!r}; choose from {PROVIDERS}")
    model = model.to(device=device, dtype=dtype).eval()
    notes = []
    if name == "hf-compile":
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        compiled = torch.compile(model, dynamic=False)
        notes.append("torch.compile(dynamic=False), inductor default mode; compile time not timed")
        return Built(name, _encoder_forward(compiled), model, notes)
    if name == "fastbert-triton-graph":
        return Built(name, GraphedForward(model), model, ["CUDA graphs per shape bucket (packed, any padding)"])
    return Built(name, _encoder_forward(model), model, notes)


class GraphedForward:
    """fastbert.cuda_graphs.GraphedBertModel (packed forward, one CUDA graph per shape bucket) on the runner's
    padded inputs: any padding, not only fixed-length batches. Outputs are the padded (B, S, H) layout."""

    def __init__(self, model):
        from fastbert.cuda_graphs import GraphedBertModel

        self.graphed = GraphedBertModel(model, pooler=False)

    def __call__(self, inputs):
        # Host-known lengths (as the tokenizer gives them): pack on the device with host-built indices, so the
        # call reads nothing back from the GPU.
        ids, lengths = inputs["input_ids"], inputs["lengths"]
        B, S = ids.shape
        key = (B, S, tuple(lengths))
        if getattr(self, "_key", None) != key:
            index = torch.cat([torch.arange(n) + b * S for b, n in enumerate(lengths)])
            cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
            self._key, self._index, self._cu = key, index.to(ids.device), cu
        packed = ids.reshape(-1).index_select(0, self._index)
        hidden = self.graphed(packed, self._cu, max(lengths)).last_hidden_state
        out = hidden.new_zeros(B * S, hidden.shape[-1])
        out.index_copy_(0, self._index, hidden)
        return out.view(B, S, -1)


# ------------------------------------------------------------------------------------------------------
# Training step: forward + backward + AdamW (AMP on GPU)
# ------------------------------------------------------------------------------------------------------
_PROBES: Dict[tuple, torch.Tensor] = {}


def masked_probe_loss(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``(h . v)^2`` for a fixed random unit vector ``v``: a loss that reaches every
    weight. (The mean of ``h^2`` would not do: right after a LayerNorm it is ~1 whatever the weights.)"""
    key = (hidden.shape[-1], hidden.device)
    if key not in _PROBES:
        v = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(1234))
        _PROBES[key] = (v / v.norm()).to(hidden.device)
    proj = hidden.float() @ _PROBES[key]  # (B, S)
    m = mask.to(proj.dtype)
    return (proj.pow(2) * m).sum() / m.sum()


def build_training(name: str, ref: fastbert.BertModel, device: torch.device, amp_dtype: Optional[torch.dtype],
                   compile_cpu: bool = False, lr: float = 1e-5) -> Built:
    """A training step provider: fp32 weights, autocast to ``amp_dtype`` (None: plain fp32), AdamW."""
    if name.startswith("fastbert-triton") and device.type != "cuda" and not _interpret_ok(device):
        raise Skip(TRITON_CPU_REASON)
    if name == "fastbert-triton-graph":
        raise Skip("CUDA graph: inference only")
    built = build_inference(name, ref, device, torch.float32, compile_cpu=compile_cpu)
    model = built.module
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **({"fused": True} if device.type == "cuda" else {}))
    forward = built.fn

    def step(inputs):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            hidden = forward(inputs)
        loss = masked_probe_loss(hidden, inputs["attention_mask"])
        loss.backward()
        opt.step()
        return loss

    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    loss_and_grads = checked_loss_and_grads(
        name, model, opt, lambda x: masked_probe_loss(forward(x), x["attention_mask"]), autocast, CHECKED_GRADS)

    notes = built.notes + [f"AdamW(lr={lr}{', fused' if device.type == 'cuda' else ''}), "
                           + (f"autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "fp32")]
    out = Built(name, step, model, notes)
    out.loss_and_grads = loss_and_grads
    return out


CHECKED_GRADS = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight",
                 "embeddings.word_embeddings.weight")


def checked_loss_and_grads(name, model, opt, loss_of, autocast: dict, checked) -> Callable:
    """``loss_and_grads(inputs)`` for the check before timing: dropout off, no optimizer step, the weights and
    the optimizer back to their initial state first (timed steps train the model); returns the fp32 loss and
    the gradients of the ``checked`` parameters (raises if one has none)."""
    initial = [p.detach().clone() for p in model.parameters()]

    def loss_and_grads(inputs):
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), initial):
                p.copy_(p0)
        opt.state.clear()
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = loss_of(inputs)
        loss.backward()
        grads = {k: p.grad.detach().float().clone() for k, p in model.named_parameters()
                 if k in checked and p.grad is not None}
        missing = set(checked) - set(grads)
        if missing:
            raise RuntimeError(f"{name}: no gradient for {sorted(missing)}")
        model.zero_grad(set_to_none=True)
        model.train()
        return loss.detach().float(), grads

    return loss_and_grads


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------
def make_inputs(lengths: List[int], vocab_size: int, device: torch.device, seed: int) -> Dict:
    """A padded batch: random ids (never the pad id, never zeros) for the real tokens, pad id 0 after."""
    gen = torch.Generator().manual_seed(seed)
    batch, width = len(lengths), max(lengths)
    low = min(1000, vocab_size // 2)  # above BERT's special and unused ids
    ids = torch.randint(low, vocab_size, (batch, width), generator=gen)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~mask, 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device),
            "lengths": list(lengths), "all_real": bool(mask.all())}


def shuffled(seq, seed):
    seq = list(seq)
    random.Random(seed).shuffle(seq)
    return seq


# ------------------------------------------------------------------------------------------------------
# Output checks
# ------------------------------------------------------------------------------------------------------
def valid_max_abs_err(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    diff = (out.float() - ref.float())[m]
    if not torch.isfinite(diff).all():
        return float("inf")
    return float(diff.abs().max())


def tolerance(dtype: torch.dtype, baseline_err: float) -> float:
    """A provider passes when its error is at most 3x HF eager's in the same dtype, plus a floor."""
    floor = 2e-4 if dtype == torch.float32 else 2e-2
    return 3.0 * baseline_err + floor


def build_hf_patched(ref: fastbert.BertModel, device: torch.device, dtype: torch.dtype) -> Built:
    """hf-patched: the user's own transformers.BertModel (SDPA), patched in place by fastbert.patch."""
    model = build_hf(ref, "sdpa").to(device=device, dtype=dtype).eval()
    fastbert.patch(model)
    return Built("hf-patched", _encoder_forward(model), model, ["fastbert.patch(transformers.BertModel), padded"])
