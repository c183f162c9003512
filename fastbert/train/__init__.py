"""Pre-training (MLM + NSP), fine-tuning (classification, NER, QA) and distillation on fastbert's own model.

    fastbert pretrain --config configs/pretrain_tiny.json
    fastbert finetune --task cls --config configs/finetune_cls.json
    fastbert distill --train-files data/text/pretrain/train --max-steps 300
    torchrun --nproc-per-node 2 -m fastbert.train.cli pretrain --config ...

Modules: the recipes ``pretrain``, ``finetune`` (tasks and metrics) and ``distill``, each giving its model,
loss, batches and evaluation; ``recipe`` (the runner: seed, resume, fit, save, result); ``data`` (streamed
sentence pairs, masking, packed batches, each step's micro-batches); ``loop`` (AdamW + warm-up/decay,
clipping, accumulation, AMP, DDP/FSDP, logs); ``checkpoint`` (atomic, exact resume); ``cli``. See
docs/training.md.
"""
