"""Generate csrc/generated/unicode_tables.h, the character tables of fastbert's C++ tokenizer.

Run by setup.py at build time (``python scripts/gen_unicode_tables.py [out]``); nothing in it is typed
by hand. Sources, both authoritative Unicode Character Database data:

* csrc/unicode/ucd-8.0.0.txt (UCD 8.0.0 General_Category + White_Space + Assigned ranges, extracted by
  scripts/extract_ucd.py): which characters text cleaning removes (Cc, Cf, Co, Cs), which are
  punctuation (P*), which are nonspacing marks dropped by accent stripping (Mn), which are whitespace.
  8.0.0 is the version Hugging Face `tokenizers` classifies characters with, so fastbert matches it on
  every code point.
* Python's ``unicodedata`` (UCD ``unicodedata.unidata_version`` of the building interpreter, recorded in
  the header): canonical decompositions (NFD, only for characters assigned in 8.0.0, like HF's
  normalizer) and full lower-case mappings (one character at a time, like Rust's ``char::to_lowercase``:
  no final-sigma rule).

The CJK ideograph ranges are not Unicode properties but the fixed block list of BERT's
``_is_chinese_char``, in the form HF `tokenizers` uses (it differs from the Python BasicTokenizer in one
range: U+2B820..U+2B91F is not treated as CJK).
"""
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UCD = ROOT / "csrc" / "unicode" / "ucd-8.0.0.txt"

REMOVE, SPACE, PUNCT, CJK, MN, LOWER, DECOMP, CCC = 1, 2, 4, 8, 16, 32, 64, 128
CJK_RANGES = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
              (0x2A700, 0x2B81F), (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F)]
N = 0x110000
# HF tokenizers' NFD (the unicode-normalization crate it uses) reorders by the combining classes of
# Unicode 9.0: those of 8.0 characters plus the combining characters 9.0 added (UCD 9.0 DerivedAge:
# Arabic U+08D4..08E1, U+1DFB, Newa, Bhaiksuki, Glagolitic Supplement, Adlam). Characters added later
# (U+07FD in 11.0, U+16FF0 in 13.0...) are starters for it. Checked on every such code point against
# tokenizers 0.23.3 by scripts/fuzz_tokenizer.py and tests/test_tokenizer_fuzz.py.
CCC_9_0_ADDED = [(0x8D4, 0x8E1), (0x1DFB, 0x1DFB), (0x11442, 0x11442), (0x11446, 0x11446), (0x11C3F, 0x11C3F),
                 (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021), (0x1E023, 0x1E024),
                 (0x1E026, 0x1E02A), (0x1E944, 0x1E94A)]


def load_ucd():
    props = {}
    for line in UCD.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        _, value, rng = line.split()
        a, b = (int(x, 16) for x in rng.split(".."))
        props.setdefault(value, []).append((a, b))
    return props


def mark(flags, ranges, bit):
    for a, b in ranges:
        for cp in range(a, b + 1):
            flags[cp] |= bit


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def build():
    props = load_ucd()
    flags = bytearray(N)
    for gc in ("Cc", "Cf", "Co", "Cs"):
        mark(flags, props[gc], REMOVE)
    for cp in (0x09, 0x0A, 0x0D):   # \t \n \r are whitespace, not controls
        flags[cp] &= ~REMOVE
    flags[0] |= REMOVE
    flags[0xFFFD] |= REMOVE
    mark(flags, props["White_Space"], SPACE)
    for gc in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"):
        mark(flags, props[gc], PUNCT)
    for a, b in ((33, 47), (58, 64), (91, 96), (123, 126)):   # ASCII punctuation ranges (incl. $ + < = > ^ ` |)
        mark(flags, [(a, b)], PUNCT)
    mark(flags, CJK_RANGES, CJK)
    mark(flags, props["Mn"], MN)
    mn = bytearray(N)
    mark(mn, props["Mn"], 1)
    assigned = bytearray(N)
    mark(assigned, props["Assigned"], 1)

    lower, strip, nfd, ccc = {}, {}, {}, {}
    for cp in range(N):
        if is_surrogate(cp):
            continue
        c = chr(cp)
        lc = c.lower()
        if lc != c:
            flags[cp] |= LOWER
            lower[cp] = [ord(x) for x in lc]
        if assigned[cp]:
            d = unicodedata.normalize("NFD", c)
            if d != c:
                flags[cp] |= DECOMP
                strip[cp] = [ord(x) for x in d if not mn[ord(x)]]   # NFD, then nonspacing marks dropped
                nfd[cp] = [ord(x) for x in d]
        if unicodedata.combining(c) and (assigned[cp] or any(a <= cp <= b for a, b in CCC_9_0_ADDED)):
            flags[cp] |= CCC
            ccc[cp] = [unicodedata.combining(c)]
    return flags, lower, strip, nfd, ccc


def emit(out: Path):
    flags, lower, strip, nfd, ccc = build()
    blocks, stage1 = {}, []
    for hi in range(N >> 8):
        blk = bytes(flags[hi << 8:(hi + 1) << 8])
        stage1.append(blocks.setdefault(blk, len(blocks)))
    stage2 = b"".join(sorted(blocks, key=blocks.get))

    def arr(vals, per_line=24):
        vals = list(vals)
        return ",\n".join("  " + ",".join(str(v) for v in vals[i:i + per_line]) for i in range(0, len(vals), per_line))

    def mapping(name, m):
        keys = sorted(m)
        pool, offs = [], []
        for k in keys:
            offs.append(len(pool))
            pool.extend(m[k])
        offs.append(len(pool))
        return (f"inline constexpr uint32_t k{name}Count = {len(keys)};\n"
                f"inline constexpr uint32_t k{name}Keys[] = {{\n{arr(keys)}\n}};\n"
                f"inline constexpr uint32_t k{name}Offsets[] = {{\n{arr(offs)}\n}};\n"
                f"inline constexpr uint32_t k{name}Pool[] = {{\n{arr(pool or [0])}\n}};\n")

    text = f"""// GENERATED by scripts/gen_unicode_tables.py at build time. Do not edit.
// Character classes: UCD 8.0.0 (csrc/unicode/ucd-8.0.0.txt), the version HF tokenizers uses.
// Decompositions (NFD) and lower-case mappings: UCD {unicodedata.unidata_version} (Python unicodedata).
#pragma once
#include <cstdint>

namespace fastbert {{
namespace unicode {{

inline constexpr const char* kClassesVersion = "8.0.0";
inline constexpr const char* kMappingsVersion = "{unicodedata.unidata_version}";

enum : uint8_t {{ kRemove = {REMOVE}, kSpace = {SPACE}, kPunct = {PUNCT}, kCjk = {CJK}, kMn = {MN}, kLower = {LOWER}, kDecomp = {DECOMP}, kCcc = {CCC} }};

// flags(cp) = kStage2[kStage1[cp >> 8] * 256 + (cp & 255)]
inline constexpr uint16_t kStage1[{len(stage1)}] = {{
{arr(stage1)}
}};
inline constexpr uint8_t kStage2[{len(stage2)}] = {{
{arr(stage2, 32)}
}};

// Full lower-case mapping per code point (sorted keys; pool slices [Offsets[i], Offsets[i+1])).
{mapping("Lower", lower)}
// Canonical decomposition with nonspacing marks removed (what accent stripping leaves of a character).
{mapping("Strip", strip)}
// Full canonical decomposition (NFD of one character), and the canonical combining class of the
// characters whose class is not 0 (NFD's canonical reordering sorts runs of them by class).
{mapping("Nfd", nfd)}
{mapping("Ccc", ccc)}
}}  // namespace unicode
}}  // namespace fastbert
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


if __name__ == "__main__":
    emit(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "csrc" / "generated" / "unicode_tables.h")
