"""List the public methods and attributes of transformers' BertModel, BertTokenizer(Fast) and BatchEncoding that
fastbert's counterparts lack (and the reverse), on live instances: the checklist behind docs/compat.md.

    python scripts/compat_report.py            # needs transformers (and the embedded MiniLM for the tokenizer)
    python scripts/compat_report.py --json     # machine-readable

Names are what ``dir()`` shows without a leading underscore. A name both have is not a claim that both behave
alike: the tests compare behaviour (tests/test_hf_api.py, tests/test_tokenizer_*.py, tests/test_trace_export.py).
"""
from __future__ import annotations

import argparse
import json
import warnings


def _public(obj) -> set:
    names = set()
    for n in dir(obj):
        if n.startswith("_"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                getattr(obj, n)
            except Exception:  # noqa: BLE001 - a property that raises still is a name users see
                pass
        names.add(n)
    return names


def instances():
    """(what, transformers' object, fastbert's object) for the three classes."""
    import transformers

    import fastbert
    from fastbert.assets import default_model_dir

    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    out = [("BertModel", transformers.BertModel(transformers.BertConfig(**tiny)),
            fastbert.BertModel(fastbert.BertConfig(**tiny)))]
    path = default_model_dir()
    if path is not None:
        hf_tok = transformers.BertTokenizerFast.from_pretrained(path)  # transformers 5: BertTokenizer
        fb_tok = fastbert.BertTokenizer.from_pretrained(path)
        out.append(("BertTokenizer", hf_tok, fb_tok))
        out.append(("BatchEncoding", hf_tok(["a b", "c"], padding=True), fb_tok(["a b", "c"], padding=True)))
    return out


def _has(obj, name) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return hasattr(obj, name)
        except Exception:  # noqa: BLE001 - raising other than AttributeError still means the name exists
            return True


def report() -> dict:
    """Per class: names one side lists in dir() that the other does not have at all (hasattr: names served by
    __getattr__, like transformers 5 tokenizers' special tokens, count as present)."""
    result = {}
    for what, theirs, ours in instances():
        a, b = _public(theirs), _public(ours)
        result[what] = {"only_transformers": sorted(n for n in a if not _has(ours, n)),
                        "only_fastbert": sorted(n for n in b if not _has(theirs, n)), "both": len(a & b)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = report()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for what, r in result.items():
        print(f"## {what}: {r['both']} names in both")
        print(f"only in transformers ({len(r['only_transformers'])}): {', '.join(r['only_transformers'])}")
        print(f"only in fastbert ({len(r['only_fastbert'])}): {', '.join(r['only_fastbert'])}\n")


if __name__ == "__main__":
    main()
