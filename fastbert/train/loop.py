"""The training loop shared by pre-training and fine-tuning.

One optimizer step = ``grad_accum`` micro-batches on each of ``world`` ranks. Every loss is a *sum* over
the step's examples (masked tokens, sequences, labelled tokens ...) divided by the step's *global* count of
them, all-reduced before the first micro-batch. So a step's gradient is the gradient of the mean over the
whole global batch, whatever way it is split into ranks and micro-batches: two ranks of 4 equal one
process of 8 up to float summation order (the loss is multiplied by ``world`` because DDP averages).

The task supplies an ``nn.Module`` whose ``forward(batch, denom)`` returns ``(loss, sums)``: the loss
already divided by ``denom`` (the global counts), and a 1-D tensor of detached sums for the logs; plus
``count(batch) -> tensor`` (the counts) and ``report(sums, counts) -> dict`` (log values).
"""
import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt


# ------------------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)
# ------------------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (NCCL on CUDA, gloo on CPU); else one process."""
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={want!r} but no CUDA device is visible: use device='cpu'")
        dev = torch.device("cuda", local_rank if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ------------------------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    output_dir: str = "runs/train"
    max_steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    precision: str = "fp32"          # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    gradient_checkpointing: bool = False
    log_every: int = 10              # 0: no log lines
    save_every: int = 0              # 0: only at the end
    keep_last: int = 3               # 0: keep every checkpoint
    seed: int = 0
    device: Optional[str] = None     # cpu | cuda | cuda:N (default: cuda when available)
    progress: bool = True
    parallel: str = "ddp"            # with several processes: ddp | fsdp (fully sharded: each layer + the rest)
    eval_every: int = 0              # evaluate every N steps (needs an eval set; 0: only at the end)
    metric_for_best: Optional[str] = None     # eval metric that picks the kept best checkpoint (task default)
    greater_is_better: Optional[bool] = None  # default: False for metrics named *loss*, else True

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ValueError("parallel=fsdp with precision=fp16 is not supported (its grad scaler would need "
                             "sharding): use precision=bf16 or fp32")
        check_ranges(self, at_least_1=("grad_accum",),
                     at_least_0=("warmup_steps", "weight_decay", "max_grad_norm", "save_every", "seed", "log_every",
                                 "keep_last", "eval_every"),
                     positive=("learning_rate", "adam_epsilon"),
                     unit=("warmup_ratio", "adam_beta1", "adam_beta2"))
        self._check_steps()

    def _check_steps(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    @property
    def num_warmup(self) -> int:
        return self.warmup_steps or int(round(self.warmup_ratio * self.max_steps))


def check_ranges(cfg, at_least_1=(), at_least_0=(), positive=(), unit=()):
    """One clear ValueError for the first option of ``cfg`` outside its range (the CLI prints it on one line)."""
    for name in at_least_1:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in at_least_0:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in unit:
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {getattr(cfg, name)}")


def build_optimizer(model: nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (BERT's recipe). Tied weights counted once."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, **extra)


def linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------------
class CSVLog:
    """One row per optimizer step. On resume, rows past the checkpoint's step (written by the run that
    died) are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, fields: List[str], resume_step: Optional[int]):
        self.path, self.fields = path, fields
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields, extrasaction="ignore")
        self.w.writeheader()
        self.w.writerows(rows)
        self.f.flush()

    def write(self, row: Dict):
        self.w.writerow(row)  # floats at full precision (repr): resumed runs are compared bit for bit
        self.f.flush()

    def close(self):
        self.f.close()


def read_log(path) -> List[Dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


@torch.no_grad()
def evaluate_task(task: nn.Module, batches: List[dict], count: Callable[[dict], torch.Tensor],
                  device: torch.device):
    """``(sums, counts)`` of ``task`` over held-out ``batches``, float64 on the host: what ``report`` takes."""
    sums, counts = 0, 0
    for batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        c = count(batch)
        _, s = task(batch, c.to(device).clamp(min=1))
        sums, counts = sums + s.double().cpu(), counts + c.double()
    return sums, counts


# ------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------
class Trainer:
    """``steps(start)`` yields, for every optimizer step from ``start`` on, this rank's list of
    ``grad_accum`` micro-batches (dicts of CPU tensors and ints)."""

    def __init__(self, task: nn.Module, model: nn.Module, args: TrainArgs, info: DistInfo,
                 count: Callable[[dict], torch.Tensor], report: Callable[[torch.Tensor, torch.Tensor], Dict],
                 log_fields: List[str], extra_state: Optional[dict] = None,
                 save_files: Optional[Callable[[Path], None]] = None):
        self.args, self.info = args, info
        self.save_files = save_files  # adds e.g. the tokenizer's files to each checkpoint directory
        self.model = model  # the HF-shaped model (what is saved)
        self.count, self.report = count, report
        self.log_fields = ["step"] + log_fields + ["lr", "tokens_per_s", "elapsed_s"]
        self.extra_state = extra_state or {}
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        task.to(info.device)
        self.task = task
        self.fsdp = info.enabled and args.parallel == "fsdp"
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            # One FSDP unit per encoder layer (its parameters gathered only while it runs), one for the rest
            # (embeddings, tied decoder, heads): the tied weights stay in one unit.
            for module in model.modules():
                if type(module).__name__ == "BertLayer":
                    fully_shard(module)
            fully_shard(task)
        elif info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.task = nn.parallel.DistributedDataParallel(task, device_ids=ids)
        self.optimizer = build_optimizer(model, args, info.device)
        self.scheduler = linear_schedule(self.optimizer, args.num_warmup, args.max_steps)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=args.precision == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
        self.step = 0
        self.ckpt_dir = Path(args.output_dir) / "checkpoints"

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = ckpt.rng_state()
        rngs = [None] * self.info.world
        if self.info.enabled:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        # The weights are not in here: save() writes them beside it with save_pretrained. With FSDP the
        # optimizer state is sharded too, and saved by torch.distributed.checkpoint instead.
        return {"step": self.step, "optimizer": None if self.fsdp else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rngs,
                "world": self.info.world, "args": vars(self.args), "extra": self.extra_state}

    def save(self) -> Path:
        if self.fsdp:
            return self._save_sharded()
        state = self.state_dict()  # every rank takes part (the RNG gather)
        path = self.ckpt_dir / f"step-{self.step:08d}"
        if self.info.is_main:
            best = ckpt.read_best(self.ckpt_dir)
            path = ckpt.save_checkpoint(state, self.ckpt_dir, self.step, self.args.keep_last, model=self.model,
                                        add_files=self.save_files, keep=[best["step"]] if best else [])
            self._print(f"saved checkpoint {path}")
        if self.info.enabled:
            dist.barrier()
        self._saved_step = self.step
        return path

    def _save_sharded(self) -> Path:
        """FSDP: every rank writes its shards of the model and optimizer state (torch.distributed.checkpoint)
        into ``sharded/``; rank 0 adds the full model (gathered) as a from_pretrained directory and the
        training state, then publishes the directory atomically."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

        final = self.ckpt_dir / f"step-{self.step:08d}"
        tmp = self.ckpt_dir / f".tmp-{final.name}-sharded"
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        model_sd, optim_sd = get_state_dict(self.task, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / ckpt.SHARDED_DIR))
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state = self.state_dict()
        if self.info.is_main:
            best = ckpt.read_best(self.ckpt_dir)
            ckpt.write_model_dir(self.model, full, tmp)
            if self.save_files is not None:
                self.save_files(tmp)
            ckpt.publish(tmp, final, state, keep_last=self.args.keep_last, keep=[best["step"]] if best else [])
            self._print(f"saved checkpoint {final}")
        dist.barrier()
        self._saved_step = self.step
        return final

    def save_model(self, directory, add_files: Optional[Callable[[Path], None]] = None):
        """The trained model as a from_pretrained directory (call it on every rank: FSDP gathers the weights)."""
        directory = Path(directory)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.info.is_main:
                directory.mkdir(parents=True, exist_ok=True)
                ckpt.write_model_dir(self.model, full, directory)
        elif self.info.is_main:
            self.model.save_pretrained(directory)
        if self.info.is_main and add_files is not None:
            add_files(directory)
        if self.info.enabled:
            dist.barrier()

    def _load_sharded(self, path: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (Path(path) / ckpt.SHARDED_DIR).is_dir():
            raise ValueError(f"checkpoint {path} has no sharded state ({ckpt.SHARDED_DIR}/): it was not written by an "
                             "FSDP run; resume it with parallel=ddp")
        model_sd, optim_sd = get_state_dict(self.task, self.optimizer)
        target = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(target, checkpoint_id=str(Path(path) / ckpt.SHARDED_DIR))
        set_state_dict(self.task, self.optimizer, model_state_dict=target["model"],
                       optim_state_dict=target["optimizer"])

    def load(self, path):
        state = ckpt.load_checkpoint(path, map_location="cpu")
        if state["world"] != self.info.world:
            raise ValueError(f"checkpoint {path} was written by {state['world']} process(es), this run has "
                             f"{self.info.world}: resume with the same number of processes")
        if self.fsdp:
            self._load_sharded(path)
        else:
            self._load_whole(path, state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"][self.info.rank])
        self.step = state["step"]
        self.extra_state.update(state.get("extra", {}))
        self._print(f"resumed from {path} at step {self.step}")

    def _load_whole(self, path, state):
        if state["optimizer"] is None:
            raise ValueError(f"checkpoint {path} was written by an FSDP run (sharded optimizer state): resume it "
                             "with parallel=fsdp and the same number of processes")
        if "model" not in state:
            raise ValueError(f"checkpoint {path} holds no model weights (model.safetensors)")
        result = self.model.load_state_dict(state["model"], strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())
        missing = [k for k in result.missing_keys if k not in tied]  # tied copies are not saved
        if missing or result.unexpected_keys:
            raise ValueError(f"checkpoint {path} does not fit this model: missing {missing}, "
                             f"unexpected {result.unexpected_keys}")
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        self.optimizer.load_state_dict(state["optimizer"])

    # -- one step ---------------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        dev = self.info.device
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) and k != "meta" else v
                for k, v in batch.items()}

    def train_step(self, micro: List[dict]) -> Dict:
        counts = all_reduce_sum(torch.stack([self.count(b) for b in micro]).sum(0).double(), self.info)
        denom = counts.to(self.info.device).float().clamp(min=1)
        sums = None
        self.task.train()
        for i, batch in enumerate(micro):
            batch = self._to_device(batch)
            sync = i == len(micro) - 1 or not self.info.enabled
            if self.fsdp:
                self.task.set_requires_gradient_sync(sync)
            ctx = self.task.no_sync() if not sync and not self.fsdp else _nullcontext()
            with ctx:
                with torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, s = self.task(batch, denom)
                self.scaler.scale(loss * self.info.world).backward()
            sums = s.double() if sums is None else sums + s.double()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums = all_reduce_sum(sums, self.info).cpu()
        out = self.report(sums, counts.cpu())
        out["lr"] = lr
        out["grad_norm"] = float(grad_norm)
        return out

    # -- the run ----------------------------------------------------------------------------------
    # -- evaluation and the best checkpoint ----------------------------------------------------------
    def _is_better(self, value: float, best: Optional[Dict]) -> bool:
        if best is None:
            return True
        greater = self.args.greater_is_better
        if greater is None:
            greater = "loss" not in (self.args.metric_for_best or "")
        return value > best["value"] if greater else value < best["value"]

    def evaluate_and_keep_best(self, evaluate: Callable[[], Dict], default_metric: str) -> Dict:
        """Run ``evaluate`` (every rank), log it, and save a checkpoint recorded as best when it improves."""
        metrics = evaluate()
        metric = self.args.metric_for_best or default_metric
        if metric not in metrics:
            raise ValueError(f"metric_for_best={metric!r} is not among the evaluation metrics {sorted(metrics)}")
        self._print(f"eval at step {self.step}: " + "  ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        if self.info.is_main:
            with open(Path(self.args.output_dir) / "eval_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        best = ckpt.read_best(self.ckpt_dir)
        if self._is_better(float(metrics[metric]), best):
            path = self.save() if self._saved_step != self.step else self.ckpt_dir / f"step-{self.step:08d}"
            if self.info.is_main:
                ckpt.write_best(self.ckpt_dir, {"step": self.step, "metric": metric,
                                                "value": float(metrics[metric]), "path": str(path)})
        return metrics

    def fit(self, steps: Callable[[int], Iterator[List[dict]]], resume: Optional[str] = None,
            tokens_of: Callable[[dict], int] = lambda b: 0, evaluate: Optional[Callable[[], Dict]] = None,
            default_metric: str = "loss") -> List[Dict]:
        """Train to ``args.max_steps``; with ``evaluate``, every ``args.eval_every`` steps (and at the end)
        evaluate and keep the best checkpoint (``checkpoints/best.json`` names it)."""
        self._saved_step, self.final_eval = None, None
        if resume:
            self.load(resume)
        log = CSVLog(Path(self.args.output_dir) / "train_log.csv", self.log_fields,
                     self.step if resume else None) if self.info.is_main else None
        bar = None
        if self.info.is_main and self.args.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.args.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        history: List[Dict] = []
        t0 = time.perf_counter()
        last_t, last_tokens = t0, 0
        source = steps(self.step)
        while self.step < self.args.max_steps:
            micro = next(source)
            n_tokens = sum(tokens_of(b) for b in micro) * self.info.world
            row = self.train_step(micro)
            self.step += 1
            if not math.isfinite(row["loss"]) and self.args.precision != "fp16":
                raise FloatingPointError(f"loss is {row['loss']} at step {self.step}: lower the learning rate")
            now = time.perf_counter()
            row.update(step=self.step, tokens_per_s=n_tokens / max(now - last_t, 1e-9), elapsed_s=now - t0)
            last_t, last_tokens = now, last_tokens + n_tokens
            history.append(row)
            if log is not None:
                log.write(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if self.info.is_main and self.args.log_every and self.step % self.args.log_every == 0:
                shown = "  ".join(f"{k}={row[k]:.4g}" for k in self.log_fields[1:] if k in row)
                self._print(f"step {self.step}/{self.args.max_steps}  {shown}")
            if self.args.save_every and self.step % self.args.save_every == 0 and self.step < self.args.max_steps:
                self.save()
            if (evaluate is not None and self.args.eval_every and self.step % self.args.eval_every == 0
                    and self.step < self.args.max_steps):
                self.evaluate_and_keep_best(evaluate, default_metric)
        self.save()
        if evaluate is not None:
            self.final_eval = self.evaluate_and_keep_best(evaluate, default_metric)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        return history

    def _print(self, msg):
        if self.info.is_main:
            try:
                from tqdm.auto import tqdm

                tqdm.write(msg)
            except ImportError:
                print(msg, flush=True)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
