"""Build the tokenizer parity/benchmark corpus from real text in Debian packages.

Downloads a fixed list of Debian packages with ``apt-get download`` (``apt-get update`` first when the
package lists are missing), unpacks them with ``dpkg -x`` and collects their text as a list of documents:

* English prose and verse: ``fortunes`` (classic fortune cookies: contain backspace overstrikes, escape
  sequences and other control characters);
* German, Russian, Spanish, Italian (accents, Cyrillic): ``fortunes-de``, ``fortunes-ru``,
  ``fortunes-es``, ``fortunes-it``, ``manpages-de``, ``manpages-ru``;
* Chinese and Japanese: ``manpages-zh``, ``manpages-ja``, ``debian-reference-ja``;
* emoji (with their names in several languages): ``python3-emoji``'s emoji table.

Files that are not valid UTF-8 are decoded with ``errors="replace"`` (real mojibake, U+FFFD included).
The result is cached as ``<cache>/corpus.jsonl`` (one JSON string per document; default cache: ``data/
tokenizer_corpus`` at the repository root, which is git-ignored). Nothing here is generated text.

    python scripts/build_tokenizer_corpus.py [cache_dir]
"""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ["fortunes", "fortunes-de", "fortunes-ru", "fortunes-es", "fortunes-it", "manpages-de",
            "manpages-ru", "manpages-zh", "manpages-ja", "debian-reference-ja", "python3-emoji"]
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "data" / "tokenizer_corpus"
MAX_DOC_CHARS = 20000


class CorpusUnavailable(RuntimeError):
    pass


def _run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download(debs: Path):
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise CorpusUnavailable("apt-get is not available (the corpus is built from Debian packages)")
    r = _run(["apt-get", "download", *missing], debs)
    if r.returncode != 0:
        u = _run(["apt-get", "update", "-qq"], debs)
        if u.returncode != 0:
            raise CorpusUnavailable(f"apt-get update failed: {u.stderr.strip()[-500:]}")
        r = _run(["apt-get", "download", *missing], debs)
        if r.returncode != 0:
            raise CorpusUnavailable(f"apt-get download failed: {r.stderr.strip()[-500:]}")


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _chunks(text: str):
    """Documents of at most MAX_DOC_CHARS characters, cut at paragraph breaks when possible."""
    while len(text) > MAX_DOC_CHARS:
        cut = text.rfind("\n\n", 0, MAX_DOC_CHARS)
        if cut <= 0:
            cut = MAX_DOC_CHARS
        yield text[:cut]
        text = text[cut:]
    if text.strip():
        yield text


def _documents(tree: Path):
    fortunes = tree / "usr" / "share" / "games" / "fortunes"
    for f in sorted(fortunes.rglob("*")):
        if f.is_file() and not f.is_symlink() and f.suffix not in (".dat", ".u8"):
            for cookie in re.split(r"\n%\n", _read(f)):
                if cookie.strip():
                    yield cookie
    for sub in ("man", "debian-reference", "doc/debian-reference-ja"):
        base = tree / "usr" / "share" / sub
        for f in sorted(base.rglob("*")):
            if f.is_file() and not f.is_symlink() and (f.suffix in (".gz", ".txt", ".html") or "man" in f.parts):
                try:
                    yield from _chunks(_read(f))
                except (OSError, EOFError, gzip.BadGzipFile):
                    continue
    for f in sorted((tree / "usr" / "lib" / "python3" / "dist-packages" / "emoji").rglob("*.py")):
        yield from _chunks(_read(f))


def build(cache: Path = DEFAULT_CACHE) -> Path:
    """Returns the path of corpus.jsonl, building it first if needed. Raises CorpusUnavailable."""
    cache = Path(cache)
    out = cache / "corpus.jsonl"
    if out.is_file() and out.stat().st_size > 0:
        return out
    if shutil.which("dpkg") is None:
        raise CorpusUnavailable("dpkg is not available (the corpus is built from Debian packages)")
    debs = cache / "debs"
    _download(debs)
    tree = cache / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        r = _run(["dpkg", "-x", str(deb), str(tree)], cache)
        if r.returncode != 0:
            raise CorpusUnavailable(f"dpkg -x {deb.name} failed: {r.stderr.strip()[-300:]}")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for doc in _documents(tree):
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    shutil.rmtree(tree, ignore_errors=True)
    return out


def load(cache: Path = DEFAULT_CACHE):
    with open(build(cache), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


if __name__ == "__main__":
    docs = load(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE)
    n = sum(len(d.encode("utf-8")) for d in docs)
    print(f"{len(docs)} documents, {n / 1e6:.1f} MB UTF-8")
