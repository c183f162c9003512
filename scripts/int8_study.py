"""Would an int8 path keep sentence embeddings faithful? A fidelity study, not a benchmark.

Simulates int8 inference on all-MiniLM-L6-v2 in fp32 ("fake quantization": values rounded to the int8 grid,
then computed in fp32, so the only error is the quantization's): per-output-channel symmetric int8 weights,
per-token dynamic symmetric int8 activations, optionally SmoothQuant (activation channel scales calibrated on
every 5th text, migrated into the weights with strength alpha), optionally with the FFN output GEMMs (the
layers with MiniLM's activation outliers) left unquantized. Reports min / mean cosine to fp32 and
nearest-neighbour agreement over real paragraphs (/usr/share/doc), beside bf16's. The numbers behind
docs/cpu.md's "no int8 path".

    python scripts/int8_study.py [--texts 600]
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from fastbert import SentenceEncoder
from fastbert.benchmarks.common import _corpus_paragraphs


def nn_agreement(a, b):
    sa, sb = a @ a.T, b @ b.T
    sa.fill_diagonal_(-2)
    sb.fill_diagonal_(-2)
    return float((sa.argmax(1) == sb.argmax(1)).float().mean())


def fake_quant_linear(module, act_absmax, alpha):
    """Replace ``module.forward`` with int8-grid weights and per-token int8-grid activations."""
    w = module.weight.detach()
    if alpha is None:
        s = torch.ones(w.shape[1])
    else:
        s = (act_absmax.clamp(min=1e-5) ** alpha / w.abs().amax(0).clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
    ws = w * s
    step = ws.abs().amax(1, keepdim=True) / 127
    wq = (ws / step).round().clamp(-127, 127) * step

    def forward(x):
        xs = x / s
        xstep = xs.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
        return F.linear((xs / xstep).round().clamp(-127, 127) * xstep, wq, module.bias)

    module.forward = forward


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=600)
    args = ap.parse_args()
    texts = _corpus_paragraphs(Path("/usr/share/doc"), max_files=400, max_paragraphs=args.texts)
    ref = torch.as_tensor(SentenceEncoder(dtype="float32").encode(texts))
    bf16 = torch.as_tensor(SentenceEncoder(dtype="bfloat16").encode(texts))
    print(f"{len(texts)} texts; bf16: min cos {F.cosine_similarity(bf16, ref).min():.5f}, "
          f"NN agreement {nn_agreement(ref, bf16):.3f}")
    for alpha in (None, 0.5, 0.75):
        for keep_ffn_out in (False, True):
            enc = SentenceEncoder(dtype="float32", backend="torch")
            enc.model.config.unpad = False  # the padded PyTorch path calls every nn.Linear module
            linears = {n: m for n, m in enc.model.named_modules() if isinstance(m, torch.nn.Linear)}
            absmax = {}

            def record(m, inputs):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).abs().amax(0)
                absmax[m] = torch.maximum(absmax.get(m, torch.zeros_like(x)), x)

            hooks = [m.register_forward_pre_hook(record) for m in linears.values()]
            enc.encode(texts[::5])
            for h in hooks:
                h.remove()
            for name, m in linears.items():
                if keep_ffn_out and name.endswith(".output.dense") and ".attention." not in name:
                    continue
                fake_quant_linear(m, absmax[m], alpha)
            out = torch.as_tensor(enc.encode(texts))
            cos = F.cosine_similarity(out, ref)
            print(f"int8 weights+activations, SmoothQuant alpha={alpha}, FFN output "
                  f"{'kept fp32' if keep_ffn_out else 'int8'}: min cos {cos.min():.5f}, mean {cos.mean():.6f}, "
                  f"NN agreement {nn_agreement(ref, out):.3f}", flush=True)


if __name__ == "__main__":
    main()
