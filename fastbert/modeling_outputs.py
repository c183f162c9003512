"""Output objects with Hugging Face's names and behaviour: attribute access, ``out["logits"]``, ``out[0]``
(fields that are None are skipped, as in Hugging Face), and ``to_tuple()``.

Every output class is a PyTorch pytree node, as transformers registers its own ``ModelOutput`` subclasses: the
fields that are set are the children, their names the context. ``torch.export`` (and so ExecuTorch,
AOTInductor and ONNX's dynamo exporter), ``torch.compile`` and DDP's ``static_graph`` see through them.
"""
from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import partial
from typing import Optional, Tuple

import torch
import torch.utils._pytree as pytree


def _flatten(output):
    return list(output.values()), list(output.keys())


def _flatten_with_keys(output):
    return [(pytree.MappingKey(k), v) for k, v in output.items()], list(output.keys())


def _unflatten(values, context, output_type):
    return output_type(**dict(zip(context, values)))


class ModelOutput(OrderedDict):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # before @dataclass runs, which keeps the class object: the registration holds for the dataclass
        pytree.register_pytree_node(cls, _flatten, partial(_unflatten, output_type=cls),
                                    serialized_type_name=f"{cls.__module__}.{cls.__name__}",
                                    flatten_with_keys_fn=_flatten_with_keys)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name, value):
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        return self.__class__, tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> Tuple:
        return tuple(self[k] for k in self.keys())


def _output(cls):
    return dataclass(eq=False)(cls)


@_output
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None
    pooler_output: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    past_key_values: Optional[Tuple] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None
    cross_attentions: Optional[Tuple[torch.Tensor, ...]] = None
    # fastbert: for packed (unpadded) inputs, the cumulative sequence lengths of last_hidden_state's rows
    cu_seqlens: Optional[torch.Tensor] = None


@_output
class BaseModelOutput(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class BertForPreTrainingOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    prediction_logits: Optional[torch.Tensor] = None
    seq_relationship_logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class MaskedLMOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class NextSentencePredictorOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class SequenceClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class TokenClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    start_logits: Optional[torch.Tensor] = None
    end_logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@_output
class MultipleChoiceModelOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None
