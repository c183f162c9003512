"""Sentence embeddings: mean pooling over real tokens, then L2 normalisation — what sentence-transformers
computes for all-MiniLM-L6-v2 (its modules.json: Transformer -> Pooling(mean) -> Normalize)."""
from typing import List, Optional

import torch

from .assets import MISSING_MODEL_HELP, default_model_dir
from .modeling_bert import BertModel, mean_pooling, resolve_backend


def load_tokenizer(model_dir):
    """fastbert's C++ WordPiece tokenizer for the model directory."""
    from .tokenization_bert import BertTokenizer

    return BertTokenizer.from_pretrained(str(model_dir)), "fastbert.BertTokenizer (C++)"


class SentenceEncoder:
    def __init__(self, model_dir=None, device="cpu", dtype=torch.float32, backend="auto"):
        if model_dir is None:
            model_dir = default_model_dir()
            if model_dir is None:
                raise FileNotFoundError(MISSING_MODEL_HELP)
        self.model_dir = model_dir
        self.model = BertModel.from_pretrained(model_dir, add_pooling_layer=False, backend=backend,
                                               dtype=dtype, device=device)
        self.tokenizer, self.tokenizer_name = load_tokenizer(model_dir)

    def backend(self, device) -> str:
        return resolve_backend(self.model.config, torch.device(device))

    @torch.inference_mode()
    def encode(self, texts: List[str], batch_size: int = 64, max_length: Optional[int] = None,
               normalize: bool = True) -> torch.Tensor:
        device = self.model.device
        max_length = max_length or self.model.config.max_position_embeddings
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                        "token_type_ids")}
            hidden = self.model(**batch).last_hidden_state
            emb = mean_pooling(hidden.float(), batch["attention_mask"])
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            chunks.append(emb)
        return torch.cat(chunks)
