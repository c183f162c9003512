"""Pre-training (MLM + NSP) and fine-tuning (classification, NER, QA) on fastbert's own model.

    fastbert pretrain --config configs/pretrain_tiny.json
    fastbert finetune --task cls --config configs/finetune_cls.json
    torchrun --nproc-per-node 2 -m fastbert.train.cli pretrain --config ...

Modules: ``data`` (streamed sentence pairs, masking, packed batches), ``loop`` (AdamW + warm-up/decay,
clipping, accumulation, AMP, DDP, logs), ``checkpoint`` (atomic, exact resume), ``pretrain``, ``finetune``
(tasks and metrics), ``cli``. See docs/training.md.
"""
