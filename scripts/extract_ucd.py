"""Extract the Unicode 8.0.0 properties fastbert's tokenizer needs into csrc/unicode/ucd-8.0.0.txt.

Why Unicode 8.0.0: Hugging Face `tokenizers` (the Rust BertNormalizer / BertPreTokenizer that
`BertTokenizerFast` and transformers >= 5's `BertTokenizer` run) classifies characters with the
`unicode_categories` crate, whose General_Category tables are Unicode 8.0.0 (checked code point by
code point in tests/test_tokenizer_unicode.py). To be identical to it, fastbert uses the same version
for the category-based decisions (control / format / private-use = removed, punctuation = split,
nonspacing mark = stripped), and only
decomposes (NFD) code points assigned in 8.0, as its normalizer's older tables do.

Source: the `@unicode/unicode-8.0.0` npm package (node-unicode, generated from the Unicode
Consortium's UCD 8.0.0 files). Run once by a developer, not at build time (the build machine may have
no network):

    mkdir -p /tmp/u8 && cd /tmp/u8 && npm pack @unicode/unicode-8.0.0 && tar xzf unicode-unicode-8.0.0-*.tgz
    python scripts/extract_ucd.py /tmp/u8/package

The output is small (ranges only) and committed; scripts/gen_unicode_tables.py turns it into C++ tables
at build time.
"""
import json
import subprocess
import sys
from pathlib import Path

PROPS = [
    ("gc", "Cc", "General_Category/Control"),
    ("gc", "Cf", "General_Category/Format"),
    ("gc", "Co", "General_Category/Private_Use"),
    ("gc", "Cs", "General_Category/Surrogate"),
    ("gc", "Mn", "General_Category/Nonspacing_Mark"),
    ("gc", "Pc", "General_Category/Connector_Punctuation"),
    ("gc", "Pd", "General_Category/Dash_Punctuation"),
    ("gc", "Ps", "General_Category/Open_Punctuation"),
    ("gc", "Pe", "General_Category/Close_Punctuation"),
    ("gc", "Pi", "General_Category/Initial_Punctuation"),
    ("gc", "Pf", "General_Category/Final_Punctuation"),
    ("gc", "Po", "General_Category/Other_Punctuation"),
    ("prop", "White_Space", "Binary_Property/White_Space"),
    ("prop", "Assigned", "Binary_Property/Assigned"),
]

NODE = """
const [dir, rel] = process.argv.slice(1);
import(dir + '/' + rel + '/ranges.mjs').then(m => {
  console.log(JSON.stringify(m.default.map(r => [r.begin, r.end - 1])));
});
"""


def main(pkg_dir: str, out: str = "csrc/unicode/ucd-8.0.0.txt") -> None:
    pkg = Path(pkg_dir).resolve()
    meta = json.loads((pkg / "package.json").read_text())
    lines = [
        "# Unicode 8.0.0 properties used by fastbert's tokenizer (ranges, inclusive, hex).",
        f"# Extracted by scripts/extract_ucd.py from npm {meta['name']} {meta['version']} (UCD 8.0.0).",
        "# Format: <kind> <value> <first>..<last>",
    ]
    for kind, value, rel in PROPS:
        res = subprocess.run(["node", "-e", NODE, str(pkg), rel], check=True, capture_output=True, text=True)
        for a, b in json.loads(res.stdout):
            lines.append(f"{kind} {value} {a:04X}..{b:04X}")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(lines) - 3} ranges")


if __name__ == "__main__":
    main(*sys.argv[1:])
