"""Datasets from Debian's fortune cookies (see get_text_data.sh). Deterministic: the same packages give the
same files. Usage: build_text_datasets.py FORTUNES_DIR OUT_DIR"""
import json
import random
import re
import sys
from pathlib import Path

SKIP = {"ascii-art", "asciiart", "banner", "off"}  # pictures, not text


def cookie_files(d: Path):
    return sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                  and p.name not in SKIP)


def cookies(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    return [c.strip("\n") for c in re.split(r"\n%\n", text) if c.strip()]


ATTR = re.compile(r"^\s+--\s*(.+)$")


def split_attribution(cookie: str):
    """(body text, author or None): the author is the attribution line's name, up to a comma or bracket."""
    lines = cookie.split("\n")
    m = ATTR.match(lines[-1])
    if not m:
        return " ".join(" ".join(lines).split()), None
    body = " ".join(" ".join(lines[:-1]).split())
    author = re.split(r"[,(\[:;]| - |\. \(", m.group(1))[0].strip().rstrip(".")
    return body, author if 1 <= len(author.split()) <= 4 and author[:1].isupper() else None


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(src, out):
    src, out = Path(src), Path(out)
    en_files = cookie_files(src)
    # pre-training: every English cookie file, one cookie per blank-line separated document; `wisdom` held out
    for p in en_files:
        sub = "heldout" if p.name == "wisdom" else "train"
        (out / "pretrain" / sub).mkdir(parents=True, exist_ok=True)
        (out / "pretrain" / sub / (p.name + ".txt")).write_text("\n\n".join(cookies(p)) + "\n", encoding="utf-8")

    rng = random.Random(0)
    # language identification
    langs = {"en": en_files, "de": cookie_files(src / "de"), "es": cookie_files(src / "es"),
             "it": cookie_files(src / "it")}
    train, ev = [], []
    for lang, files in langs.items():
        texts = sorted({split_attribution(c)[0] for p in files for c in cookies(p)})
        texts = [t for t in texts if 40 <= len(t) <= 240]
        rng.shuffle(texts)
        train += [{"text": t, "label": lang} for t in texts[:150]]
        ev += [{"text": t, "label": lang} for t in texts[150:200]]
    rng.shuffle(train)
    rng.shuffle(ev)
    write_jsonl(out / "langid" / "train.jsonl", train)
    write_jsonl(out / "langid" / "eval.jsonl", ev)

    # attributed English cookies: "<quote> -- <author>"
    quoted = []
    for p in en_files:
        for c in cookies(p):
            body, author = split_attribution(c)
            if author and 20 <= len(body) <= 600 and author not in body:
                quoted.append((body, author))
    quoted = sorted(set(quoted))
    rng.shuffle(quoted)
    qa = []
    for body, author in quoted[:500]:
        context = f"{body} -- {author}"
        qa.append({"id": str(len(qa)), "question": "Who said this?", "context": context,
                   "answers": {"text": [author], "answer_start": [len(body) + 4]}})
    write_jsonl(out / "qa" / "train.jsonl", qa[:400])
    write_jsonl(out / "qa" / "eval.jsonl", qa[400:])

    ner = []
    plain = [split_attribution(c)[0] for p in en_files for c in cookies(p)]
    plain = sorted({t for t in plain if 20 <= len(t) <= 300})
    rng.shuffle(plain)
    for k, (body, author) in enumerate(quoted[500:900]):
        # the quote's last words, the dash, the name: entities are a fair share of the tokens
        words, names = body.split()[-12:] + ["--"], author.split()
        ner.append({"tokens": words + names, "tags": ["O"] * len(words) + ["B-PER"] + ["I-PER"] * (len(names) - 1)})
        if k % 3 == 0:  # cookies without an attribution: no entity at all
            ner.append({"tokens": plain[k].split()[-14:], "tags": ["O"] * len(plain[k].split()[-14:])})
    write_jsonl(out / "ner" / "train.jsonl", ner[:400])
    write_jsonl(out / "ner" / "eval.jsonl", ner[400:])
    print(f"pretrain: {len(en_files)} files; langid: {len(train)}/{len(ev)}; qa: {len(qa[:400])}/{len(qa[400:])}; "
          f"ner: {len(ner[:400])}/{len(ner[400:])}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
