"""Request parsing and response shapes of the server's routes, pydantic-free.

Every rule about what a request may hold lives here, and every breach raises ``ApiError`` with the status
the anchors' clients expect: 400 for an empty input or a body that is not JSON, 413 for too many inputs, 422
for a wrong type, an unknown field or an out-of-range value. ``app.py`` renders the error as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under ``/v1/`` and as TEI's ``{"error", "error_type"}``
elsewhere.
"""
import base64
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch

Input = Union[str, List[int]]  # a text, or token ids taken as the model's input as they are


class ApiError(Exception):
    """An HTTP error answer: ``status``, a message naming the problem and what to do, its ``kind`` (the
    metrics' outcome label and TEI's ``error_type``) and the request field it is about."""

    def __init__(self, status: int, message: str, kind: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def empty(message, param=None):
    return ApiError(400, message, "empty", param)


def invalid(message, param=None):
    return ApiError(422, message, "validation", param)


@dataclass
class Limits:
    max_client_batch_size: int
    vocab_size: int
    hidden_size: int


@dataclass
class EmbedRequest:
    inputs: List[Input]
    normalize: Optional[bool]  # None: the model pipeline's own Normalize module (OpenAI's route)
    truncate: bool
    truncation_direction: str  # "right" or "left"
    dimensions: Optional[int]
    encoding_format: str = "float"


def _type_name(value):
    return "null" if value is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                         list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _check_keys(body, allowed, route):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise invalid(f"{route}: unknown field(s) {unknown}; this route takes {sorted(allowed)}", unknown[0])


def _flag(body, key, default):
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{key}' must be true or false, got {_type_name(value)}", key)
    return value


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_ids(value):
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_inputs(value, field: str, limits: Limits, ids_allowed: bool = True) -> List[Input]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids -> the inputs (a single
    one is answered as a list of one, by OpenAI and TEI alike)."""
    if value is None:
        raise invalid(f"'{field}' is required: a string or a list of strings" +
                      (" (or token ids, or lists of token ids)" if ids_allowed else ""), field)
    if isinstance(value, str):
        inputs, single = [value], True
    elif isinstance(value, list) and ids_allowed and any(_is_number(t) for t in value):
        bad = next((i for i, t in enumerate(value) if not isinstance(t, int) or isinstance(t, bool)), None)
        if bad is not None:
            raise invalid(f"'{field}' looks like a list of token ids, but {field}[{bad}] is {_type_name(value[bad])} "
                          f"{value[bad]!r}: token ids are integers (or send a list of strings)", field)
        inputs, single = [value], True
    elif isinstance(value, list):
        inputs, single = value, False
    else:
        raise invalid(f"'{field}' must be a string or a list of strings" +
                      (" or token ids" if ids_allowed else "") + f", got {_type_name(value)}", field)
    if not inputs:
        raise empty(f"'{field}' is an empty list: give at least one input", field)
    if len(inputs) > limits.max_client_batch_size:
        raise ApiError(413, f"'{field}' holds {len(inputs)} inputs, more than this server's "
                            f"--max-client-batch-size ({limits.max_client_batch_size}); split the request",
                       "too_large", field)
    for i, x in enumerate(inputs):
        where = field if single else f"{field}[{i}]"
        if isinstance(x, str):
            if not x:
                raise empty(f"'{where}' is an empty string: give text to embed", field)
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise invalid(f"'{where}' is not valid Unicode text: {e.reason} at character {e.start} (a lone "
                              "UTF-16 surrogate escape such as \\ud800)", field) from None
        elif ids_allowed and isinstance(x, list) and _is_ids(x):
            if not x:
                raise empty(f"'{where}' is an empty list of token ids", field)
            bad = [t for t in x if not 0 <= t < limits.vocab_size]
            if bad:
                raise invalid(f"'{where}' holds token id {bad[0]}, outside this model's vocabulary "
                              f"(0..{limits.vocab_size - 1})", field)
        elif ids_allowed and isinstance(x, list):
            bad = next(t for t in x if not isinstance(t, int) or isinstance(t, bool))
            raise invalid(f"'{where}' must be a list of integer token ids; it holds {_type_name(bad)} {bad!r}", field)
        else:
            raise invalid(f"'{where}' must be a string" + (" or a list of integer token ids" if ids_allowed else
                                                            "") + f", got {_type_name(x)}", field)
    return inputs


def _dimensions(body, limits):
    dims = body.get("dimensions")
    if dims is None:
        return None
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= limits.hidden_size:
        raise invalid(f"'dimensions' must be an integer from 1 to {limits.hidden_size} (this model's embedding "
                      f"size), got {dims!r}", "dimensions")
    return dims


# ---- OpenAI: POST /v1/embeddings --------------------------------------------------------------------------
OPENAI_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")


def parse_openai(body: dict, limits: Limits) -> EmbedRequest:
    """OpenAI's embeddings request. ``model`` may be any string (this server serves one model); ``user`` is
    accepted and has no effect. Texts are truncated at the model's max_seq_length, as sentence-transformers
    does."""
    _check_keys(body, OPENAI_FIELDS, "POST /v1/embeddings")
    if not isinstance(body.get("model", ""), str):
        raise invalid(f"'model' must be a string, got {_type_name(body['model'])}", "model")
    if not isinstance(body.get("user", ""), str):
        raise invalid(f"'user' must be a string, got {_type_name(body['user'])}", "user")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid(f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    return EmbedRequest(parse_inputs(body.get("input"), "input", limits), normalize=None, truncate=True,
                        truncation_direction="right", dimensions=_dimensions(body, limits), encoding_format=fmt)


def openai_response(emb: np.ndarray, req: EmbedRequest, model: str, n_tokens: int) -> dict:
    if req.encoding_format == "base64":  # little-endian float32 bytes, as OpenAI's SDK decodes them
        rows = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in emb]
    else:
        rows = emb.tolist()
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# ---- TEI: POST /embed, POST /tokenize ------------------------------------------------------------------------
EMBED_FIELDS = ("inputs", "normalize", "truncate", "truncation_direction", "dimensions", "prompt_name")


def _no_prompt(body):
    if body.get("prompt_name") is not None:
        raise invalid("'prompt_name' is not supported: this server has no prompts; prepend the prompt to the text",
                      "prompt_name")


def parse_embed(body: dict, limits: Limits) -> EmbedRequest:
    """TEI's embed request: ``normalize`` (default true) L2-normalises; ``truncate`` (default true: cut at the
    model's max_seq_length) false makes a too-long text a 422; ``truncation_direction`` Right or Left."""
    _check_keys(body, EMBED_FIELDS, "POST /embed")
    _no_prompt(body)
    direction = body.get("truncation_direction") or "right"
    if not isinstance(direction, str) or direction.lower() not in ("right", "left"):
        raise invalid(f"'truncation_direction' must be 'Right' or 'Left', got {direction!r}", "truncation_direction")
    return EmbedRequest(parse_inputs(body.get("inputs"), "inputs", limits), normalize=_flag(body, "normalize", True),
                        truncate=_flag(body, "truncate", True), truncation_direction=direction.lower(),
                        dimensions=_dimensions(body, limits))


TOKENIZE_FIELDS = ("inputs", "add_special_tokens", "prompt_name")


def parse_tokenize(body: dict, limits: Limits):
    """TEI's tokenize request -> (texts, add_special_tokens)."""
    _check_keys(body, TOKENIZE_FIELDS, "POST /tokenize")
    _no_prompt(body)
    texts = parse_inputs(body.get("inputs"), "inputs", limits, ids_allowed=False)
    return texts, _flag(body, "add_special_tokens", True)


def finish(pooled: torch.Tensor, normalize: bool, dimensions: Optional[int]) -> np.ndarray:
    """Pooled (B, H) embeddings -> the answer's (B, dimensions) float32 rows: the first ``dimensions``
    components, L2-normalised after the cut when ``normalize`` (as OpenAI shortens its embeddings)."""
    rows = pooled.numpy()  # numpy on the event loop: torch ops here could open a second OpenMP team (batching.py)
    if dimensions is not None:
        rows = rows[:, :dimensions]
    if normalize:  # as torch.nn.functional.normalize: x / max(||x||, 1e-12)
        rows = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), np.float32(1e-12))
    return np.ascontiguousarray(rows, dtype=np.float32)
