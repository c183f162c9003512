"""What the benchmark runner measures: the sections, the workloads (shapes and length mixes), each suite's plan,
the effort per measurement and the issue's targets. Data only: ``runner.py`` measures it, ``report.py``
renders it."""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch

from fastbert.benchmarks.common import corpus_lengths, fixed_lengths, padded_fraction_lengths, uniform_lengths

SECTIONS = ("inference", "training", "pretraining", "ops", "tokenizer")
ENCODER_SECTIONS = ("inference", "training", "pretraining")  # measured per provider, reported in rows
BASELINES = ("hf-eager", "hf-sdpa", "hf-compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Workload:
    kind: str  # fixed | uniform | pad50 | corpus
    batch: int
    seqlen: int  # padded width: fixed length, or the longest allowed row

    @property
    def name(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.batch}x{self.seqlen}"
        if self.kind == "uniform":
            return f"uniform 32..{self.seqlen} B={self.batch}"
        if self.kind == "pad50":
            return f"50% pad {self.batch}x{self.seqlen}"
        return f"corpus B={self.batch}"

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    def lengths(self, k: int) -> List[int]:
        """Row lengths of input set ``k`` (each set draws its own mix)."""
        if self.kind == "fixed":
            return fixed_lengths(self.batch, self.seqlen)
        if self.kind == "uniform":
            return uniform_lengths(self.batch, min(32, self.seqlen), self.seqlen, seed=1000 + k)
        if self.kind == "pad50":
            return padded_fraction_lengths(self.batch, self.seqlen, 0.5, seed=2000 + k)
        return [min(n, self.seqlen) for n in corpus_lengths(self.batch, seed=3000 + k)]


def W(spec: str) -> Workload:
    """``"kind:batch:seqlen"`` -> Workload."""
    kind, b, s = spec.split(":")
    return Workload(kind, int(b), int(s))


class Step(NamedTuple):
    """One entry of a plan: a section of one model in one dtype, on these workloads."""
    section: str
    model: str
    dtype: str
    shapes: List[str]  # W() specs

    @property
    def workloads(self) -> List[Workload]:
        return [W(s) for s in self.shapes]


GPU_SHAPES = ["fixed:1:128", "fixed:32:128", "fixed:32:512", "fixed:256:128", "uniform:32:512",
              "pad50:32:512", "pad50:256:128", "corpus:256:512"]

# (suite, quick) -> steps; the GPU matrix of the issue, the CPU subset that fits 2 cores.
PLANS = {
    ("gpu", False): [
        Step("inference", "bert-base", "bf16", GPU_SHAPES),
        Step("inference", "bert-base", "fp16", GPU_SHAPES[:5] + ["pad50:32:512"]),
        Step("inference", "bert-large", "bf16", GPU_SHAPES),
        Step("inference", "minilm", "bf16", GPU_SHAPES),
        Step("training", "bert-base", "bf16", ["fixed:32:128", "fixed:32:512", "pad50:32:512", "corpus:256:512"]),
        Step("training", "bert-large", "bf16", ["fixed:32:128", "pad50:32:512"]),
        Step("training", "minilm", "bf16", ["fixed:32:128", "pad50:32:512"]),
        Step("pretraining", "bert-base", "bf16", ["fixed:32:128", "fixed:32:512", "pad50:32:512"]),
        Step("pretraining", "bert-large", "bf16", ["fixed:32:128"]),
    ],
    ("gpu", True): [
        Step("inference", "bert-base", "bf16", ["fixed:1:128", "fixed:32:128", "pad50:32:512"]),
        Step("training", "bert-base", "bf16", ["fixed:32:128"]),
        Step("pretraining", "bert-base", "bf16", ["fixed:32:128", "pad50:32:512"]),
    ],
    ("cpu", False): [
        Step("inference", "minilm", "fp32", ["fixed:1:128", "fixed:8:128", "pad50:8:128", "uniform:4:512",
                                             "corpus:32:512"]),
        Step("inference", "bert-base", "fp32", ["fixed:1:128", "corpus:8:512"]),
        Step("training", "minilm", "fp32", ["fixed:8:128", "corpus:16:512"]),
        Step("pretraining", "minilm", "fp32", ["fixed:8:128", "pad50:8:128"]),
    ],
    ("cpu", True): [
        Step("inference", "minilm", "fp32", ["fixed:1:128", "fixed:8:128", "corpus:16:512"]),
        Step("training", "minilm", "fp32", ["fixed:8:64", "pad50:8:64"]),
        Step("pretraining", "minilm", "fp32", ["pad50:8:64"]),
    ],
}


def plan_for(suite: str, quick: bool, models_arg: Optional[str]) -> List[Step]:
    """The steps of a suite, restricted to ``models_arg`` (comma-separated; ``tiny``: the plan's sections and
    shapes on a tiny encoder, the runner's own test)."""
    plan = PLANS[(suite, quick)]
    if not models_arg:
        return plan
    wanted = models_arg.split(",")
    if wanted == ["tiny"]:
        seen, out = set(), []
        for step in plan:
            if step.section not in seen:
                seen.add(step.section)
                out.append(step._replace(model="tiny"))
        return out
    return [step for step in plan if step.model in wanted]


@dataclass(frozen=True)
class Effort:
    """How hard one measurement (a provider on a workload) is timed."""
    warmup: int  # calls before timing
    reps: int  # timed calls (at least)
    input_sets: int  # input sets cycled through the calls
    min_s: float  # keep calling until this many seconds have passed
    max_s: float  # stop (after 3 calls at least) once this many seconds have passed


EFFORT = {("cuda", False): Effort(10, 60, 4, 0.5, 20.0), ("cuda", True): Effort(5, 20, 3, 0.2, 5.0),
          ("cpu", False): Effort(2, 10, 3, 0.0, 6.0), ("cpu", True): Effort(1, 5, 2, 0.0, 2.0)}


@dataclass(frozen=True)
class Target:
    """A goal of the issue (one H100, bf16, BERT-base): the best fastbert provider's speed-up over ``baseline``
    at least ``goal``, or with no baseline its median latency at most ``goal`` ms."""
    label: str
    section: str
    workload: str
    goal: float
    baseline: Optional[str] = None


TARGETS = [
    Target("bf16 inference (32,128) vs HF eager", "inference", "fixed 32x128", 2.5, "hf-eager"),
    Target("bf16 inference (32,128) vs HF SDPA", "inference", "fixed 32x128", 1.7, "hf-sdpa"),
    Target("bf16 inference 50%-padded mix (32x512) vs HF SDPA", "inference", "50% pad 32x512", 2.0, "hf-sdpa"),
    Target("bf16 inference (32,128) vs torch.compile(HF)", "inference", "fixed 32x128", 1.2, "hf-compile"),
    Target("bf16 inference (1,128) latency", "inference", "fixed 1x128", 0.25),
    Target("encoder training step (32,128), AMP bf16, vs HF SDPA", "training", "fixed 32x128", 1.5, "hf-sdpa"),
    Target("pre-training step with MLM head (32,128), AMP bf16, vs HF SDPA", "pretraining", "fixed 32x128", 1.5,
           "hf-sdpa"),
]
TARGET_MODEL, TARGET_DTYPE = "bert-base", "bf16"
