"""``fastbert pretrain`` and ``fastbert finetune``: a JSON (or YAML) config file plus flag overrides.

    fastbert pretrain --config configs/pretrain_tiny.json --max-steps 300 --output-dir runs/tiny
    fastbert finetune --task cls --config configs/finetune_cls.json --train-file data/train.jsonl
    torchrun --nproc-per-node 2 -m fastbert.train.cli pretrain --config ...

Every field of the config dataclass is a flag (``max_steps`` -> ``--max-steps``); flags win over the file.
"""
import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path


def load_config_file(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ImportError("YAML configs need PyYAML (pip install pyyaml); or write the config as JSON") from e
        data = yaml.safe_load(text) or {}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option -> value")
    return data


def _unwrap_optional(tp):
    """``Optional[X]`` -> ``X``; anything else unchanged."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _json_mapping(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"hidden_size\": 64}}', got {text!r}")
    return value


def _boolean(text):
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(kind):
    def parse(text):
        if isinstance(text, bool):
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}")
        if kind is float and isinstance(text, (int, float)):
            return float(text)
        if kind is int and isinstance(text, int):
            return text
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _field_kind(tp):
    """(converter for one value, whether the field takes a list) for a dataclass field's type."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, typing.List) or tp is list:
        (elem,) = typing.get_args(tp) or (str,)
        return _field_kind(elem)[0], True
    if origin in (dict, typing.Dict) or tp is dict:
        return _json_mapping, False
    if tp is bool:
        return _boolean, False
    if tp in (int, float):
        return _number(tp), False
    return str, False


def _convert(name, value, convert, is_list, source):
    """A value from the config file, checked like the flag would be."""
    if value is None:
        return None
    try:
        if is_list:
            if not isinstance(value, list):
                raise argparse.ArgumentTypeError(f"expected a list, got {value!r}")
            return [convert(v) for v in value]
        if convert is _json_mapping:
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a mapping, got {value!r}")
            return value
        return convert(value)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"option {name!r} in {source}: {e}") from None


_DESCRIPTIONS = {
    "fastbert pretrain": "MLM + NSP pre-training. Every option can also be set in the --config file; flags win.",
    "fastbert distill": "Knowledge distillation into a smaller BERT (DistilBERT's recipe; a sentence-"
                        "transformers teacher: embedding matching). Every option can also be set in the --config "
                        "file; flags win.",
    "fastbert finetune": "Fine-tuning: sequence classification (cls), token classification (ner) or extractive "
                         "QA (qa). Every option can also be set in the --config file; flags win.",
}


def build_config(cls, argv, prog):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds = {name: _field_kind(hints[name]) for name in fields}
    ap = argparse.ArgumentParser(prog=prog, description=_DESCRIPTIONS.get(prog))
    ap.add_argument("--config", help="JSON or YAML file of options (flags override it)")
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        convert, is_list = kinds[name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        shown = " ".join(map(str, default)) if isinstance(default, list) else json.dumps(default) \
            if isinstance(default, dict) else default
        help_text = f"(default: {shown})"
        if is_list:
            ap.add_argument(flag, dest=name, nargs="+", default=None, type=convert, metavar="VALUE", help=help_text)
        elif convert is _boolean:
            ap.add_argument(flag, dest=name, nargs="?", const=True, default=None, type=convert, metavar="BOOL",
                            help=help_text)
        else:
            ap.add_argument(flag, dest=name, default=None, type=convert, help=help_text)
    ns = ap.parse_args(argv)
    values = load_config_file(ns.config) if ns.config else {}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {ns.config}; known: {sorted(fields)}")
    values = {name: _convert(name, v, *kinds[name], ns.config) for name, v in values.items()}
    for name in fields:
        v = getattr(ns, name)
        if v is not None:
            values[name] = v
    return cls(**values)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("pretrain", "finetune", "distill"):
        print("usage: fastbert pretrain|finetune|distill --config FILE [--option value ...]", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "pretrain":
            from .pretrain import PretrainConfig, run

            run(build_config(PretrainConfig, rest, "fastbert pretrain"))
        elif cmd == "finetune":
            from .finetune import FinetuneConfig, run

            run(build_config(FinetuneConfig, rest, "fastbert finetune"))
        else:
            from .distill import DistillConfig, run

            run(build_config(DistillConfig, rest, "fastbert distill"))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"fastbert {cmd}: error: {e}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
