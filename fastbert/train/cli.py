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


def _is_list(tp) -> bool:
    return typing.get_origin(tp) in (list, typing.List) or tp in (list, typing.List)


def _parse_value(text):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def build_config(cls, argv, prog):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    ap = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    ap.add_argument("--config", help="JSON or YAML file of options (flags override it)")
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        tp = f.type
        if _is_list(tp) or (isinstance(tp, str) and tp.startswith("List")):
            ap.add_argument(flag, dest=name, nargs="+", default=None)
        elif tp in (bool, "bool"):
            ap.add_argument(flag, dest=name, nargs="?", const=True, default=None, type=_parse_value)
        else:
            ap.add_argument(flag, dest=name, default=None, type=_parse_value)
    ns = ap.parse_args(argv)
    values = load_config_file(ns.config) if ns.config else {}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {ns.config}; known: {sorted(fields)}")
    for name in fields:
        v = getattr(ns, name)
        if v is not None:
            values[name] = v
    for name, v in list(values.items()):  # flags arrive as strings/JSON: coerce the obvious scalar types
        tp = fields[name].type
        if tp in (str, "str") and not isinstance(v, str):
            values[name] = str(v)
        if tp in (float, "float") and isinstance(v, int):
            values[name] = float(v)
    return cls(**values)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("pretrain", "finetune"):
        print("usage: fastbert pretrain|finetune --config FILE [--option value ...]", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "pretrain":
            from .pretrain import PretrainConfig, run

            run(build_config(PretrainConfig, rest, "fastbert pretrain"))
        else:
            from .finetune import FinetuneConfig, run

            run(build_config(FinetuneConfig, rest, "fastbert finetune"))
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
