"""The C++ core outside Python: AddressSanitizer + UndefinedBehaviorSanitizer over real text and hostile
bytes, and the CUDA sources compiled with nvcc (when there is one); the GPU path itself needs a GPU."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _tables():
    header = CSRC / "generated" / "unicode_tables.h"
    if not header.is_file():
        subprocess.check_call([sys.executable, str(ROOT / "scripts" / "gen_unicode_tables.py"), str(header)])
    return header


HOSTILE = [
    b"\xff\xfe invalid lead bytes",
    b"truncated \xe4\xb8",
    b"overlong \xc0\xaf slash",
    b"surrogate \xed\xa0\x80 half",
    b"too big \xf4\x90\x80\x80",
    b"lone continuation \x80\x80",
]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_core_under_asan_ubsan(tmp_path, minilm_dir):
    _tables()
    exe = tmp_path / "tokenize_main"
    cmd = ["g++", "-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined", f"-I{CSRC}", str(CSRC / "tokenizer.cpp"),
           str(CSRC / "tools" / "tokenize_main.cpp"), "-o", str(exe), "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "sanitizer" in r.stderr.lower():
        pytest.skip(f"this compiler cannot link the sanitizers: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    # Real text: the shipped samples of the parity test, many languages, control characters, emoji.
    from test_tokenizer import SAMPLES

    lines = [s.replace("\n", " ").encode("utf-8") for s in SAMPLES]
    lines += ["x" * 5000 + " " + "\u00e9" * 300 + " " + "中" * 1000 + " [MASK]" * 50]
    lines = [ln if isinstance(ln, bytes) else ln.encode() for ln in lines]
    corpus = ROOT / "data" / "tokenizer_corpus" / "corpus.jsonl"
    if corpus.is_file():  # a slice of the Debian corpus when it has been built
        import json

        with open(corpus, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i % 97 == 0:
                    lines.append(json.loads(line).replace("\n", " ").encode("utf-8"))
                if i > 40000:
                    break
    text = tmp_path / "input.txt"
    text.write_bytes(b"\n".join(lines + HOSTILE) + b"\n")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98")
    r = subprocess.run([str(exe), str(minilm_dir / "vocab.txt"), str(text)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-500:], r.stderr[-3000:])
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-3000:]
    m = re.search(r"lines (\d+) tokens (\d+) invalid (\d+)", r.stdout)
    assert m, r.stdout
    assert int(m.group(3)) == len(HOSTILE), r.stdout  # each hostile line rejected with an exception
    assert int(m.group(2)) > 1000
    assert "batch error: text" in r.stdout and "invalid UTF-8" in r.stdout  # the batch names the bad text
    m = re.search(r"added-token hits (\d+)", r.stdout)  # the buffered (normalized added tokens) path ran
    assert m and int(m.group(1)) > 4 * len(lines), r.stdout


def _nvcc():
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    sources = sorted((CSRC / "cuda").glob("*.cu"))
    assert sources, "csrc/cuda/*.cu is missing"
    pybind11 = pytest.importorskip("pybind11")
    import sysconfig

    for src in sources:
        cmd = [_nvcc(), "-std=c++17", "-O3", "-c", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_90,code=sm_90",
               f"-I{CSRC}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
               str(src), "-o", str(tmp_path / (src.stem + ".o"))]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.gpu
def test_cuda_wordpiece_matches_cpu(minilm_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if importlib.util.find_spec("fastbert._C_cuda") is None:
        pytest.skip("fastbert._C_cuda was not built (install with nvcc and a CUDA build of torch)")
    from fastbert.tokenization_bert import BertTokenizer
    from test_tokenizer import SAMPLES

    tok = BertTokenizer.from_pretrained(minilm_dir)
    texts = SAMPLES * 20
    cpu = tok.encode_packed(texts, max_length=10**6)
    gpu = tok.encode_packed(texts, max_length=10**6, device="cuda")
    assert gpu["input_ids"].is_cuda and gpu["cu_seqlens"].is_cuda
    assert torch.equal(gpu["input_ids"].cpu(), cpu["input_ids"])
    assert torch.equal(gpu["token_type_ids"].cpu(), cpu["token_type_ids"])
    assert torch.equal(gpu["cu_seqlens"].cpu(), cpu["cu_seqlens"])


@pytest.mark.gpu
@pytest.mark.parametrize("max_length", [None, 7, 128])
def test_cuda_tokenizer_matches_cpp_on_fuzz_texts(minilm_dir, max_length):
    """The CUDA path against the C++ one on 2000 fuzzer texts (awkward Unicode, look-alikes, long words),
    truncated or not; pairs (which the CUDA path hands to the C++ core) must match too."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if importlib.util.find_spec("fastbert._C_cuda") is None:
        pytest.skip("fastbert._C_cuda was not built (install with nvcc and a CUDA build of torch)")
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from fuzz_tokenizer import random_text

    from fastbert.tokenization_bert import BertTokenizer

    rng = random.Random(max_length or 0)
    texts = [random_text(rng) for _ in range(2000)]
    pairs = [random_text(rng) for _ in range(2000)]
    tok = BertTokenizer.from_pretrained(minilm_dir)
    ml = max_length or 10**6
    for a, b in ((texts, None), (texts, pairs)):
        cpu = tok.encode_packed(a, b, max_length=ml)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpu = tok.encode_packed(a, b, max_length=ml, device="cuda")
        # pairs take the C++ path and say so (once per process: the first pair call warns)
        assert all("text pairs" in str(w.message) for w in caught), [str(w.message) for w in caught]
        for k in ("input_ids", "token_type_ids", "cu_seqlens"):
            assert torch.equal(gpu[k].cpu(), cpu[k]), k
        assert gpu["max_seqlen"] == cpu["max_seqlen"]


def _launch_python(tok, device, raw, starts, fixed, out_start, out_ids, out_count):
    """A line-by-line Python port of csrc/cuda/wordpiece.cu's kernel over the exported trie arrays."""
    t = tok._tok.trie_arrays()
    nodes, eb, ec, dense, pops = (t[k] for k in ("nodes", "edge_bytes", "edge_child", "dense", "pops"))
    out, count = out_ids.numpy(), out_count.numpy()

    def child(u, b):
        begin, n = nodes[u, 0], nodes[u, 1]
        if n >= t["dense_from"]:
            return dense[begin + b]
        for i in range(n):
            if eb[begin + i] == b:
                return ec[begin + i]
        return -1

    for w in range(len(starts)):
        o = out_start[w]
        if fixed[w] >= 0:
            out[o], count[w] = fixed[w], 1
            continue
        end = starts[w + 1] if w + 1 < len(starts) else len(raw)
        n, u, ok = 0, 0, True
        for b in raw[starts[w]:end]:
            while ok and (v := child(u, b)) < 0:
                if nodes[u, 3] < 0:
                    ok = False
                    break
                for k in range(nodes[u, 2]):
                    out[o + n] = pops[nodes[u, 4] + k, 0]
                    n += 1
                u = nodes[u, 3]
            if not ok:
                break
            u = v
        while ok and u not in (t["suffix_root"], 0):
            if nodes[u, 3] < 0:
                ok = False
                break
            for k in range(nodes[u, 2]):
                out[o + n] = pops[nodes[u, 4] + k, 0]
                n += 1
            u = nodes[u, 3]
        if not ok:
            out[o], n = tok._tok.unk_id, 1
        count[w] = n


@pytest.mark.parametrize("max_length", [None, 13])
def test_device_path_glue_on_cpu(minilm_dir, max_length):
    """The device path's word split, exported trie, compaction, truncation and special tokens, run on the
    CPU with a Python port of the kernel, must give encode_packed's (CPU) result."""
    torch = pytest.importorskip("torch")
    from fastbert.tokenization_bert import BertTokenizer
    from test_tokenizer import SAMPLES

    tok = BertTokenizer.from_pretrained(minilm_dir)
    texts = SAMPLES + ["unaffable " * 30]
    ref = tok.encode_packed(texts, max_length=max_length if max_length else 10**6)
    args = tok._resolve(truncation=True if max_length else False, max_length=max_length)
    got = tok._encode_packed_device(texts, args, torch.device("cpu"), _launch_python)
    assert torch.equal(got["input_ids"], ref["input_ids"])
    assert torch.equal(got["cu_seqlens"], ref["cu_seqlens"])
    assert torch.equal(got["token_type_ids"], ref["token_type_ids"])
    assert got["max_seqlen"] == ref["max_seqlen"]


def test_device_request_the_cuda_path_cannot_take_falls_back_and_says_so(minilm_dir, monkeypatch):
    """encode_packed(device="cuda") for input the CUDA WordPiece path does not take (pairs; on a machine
    without a GPU or without fastbert._C_cuda, anything): the C++ result copied to the device, and one warning
    saying why."""
    import torch

    import fastbert._warnings
    import fastbert.tokenization_bert as tb

    tok = tb.BertTokenizer.from_pretrained(minilm_dir)
    gpu = tb.cuda_wordpiece_available()
    if not gpu:  # no device to copy to: record the copy instead
        monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: t)
    monkeypatch.setattr(fastbert._warnings, "WARNED", set())
    texts, pairs = ["a first text", "and another"], ["its pair", "and the other pair"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tok.encode_packed(texts, pairs, device="cuda")
        tok.encode_packed(texts, pairs, device="cuda")
    msgs = [str(w.message) for w in caught if "CUDA WordPiece" in str(w.message)]
    assert len(msgs) == 1 and ("text pairs" in msgs[0]), msgs
    assert torch.equal(out["input_ids"].cpu(), tok.encode_packed(texts, pairs)["input_ids"])
    if not gpu:
        monkeypatch.setattr(fastbert._warnings, "WARNED", set())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tok.encode_packed(texts, device="cuda")
        assert any("not built or no GPU" in str(w.message) for w in caught)
