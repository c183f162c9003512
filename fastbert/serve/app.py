"""The Starlette app: routes, error answers, the API key and the payload limit.

``create_app(encoder, ...)`` builds it; its lifespan starts the batcher and, at shutdown (after the server has
finished every in-flight request), drains and stops it. Routes only parse (schemas.py), take permits, tokenize
(tokenization.py) and submit to the batcher (batching.py).
"""
import functools
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import schemas
from .batching import Batcher
from .metrics import Metrics
from .schemas import ApiError
from .tokenization import Tokenization

log = logging.getLogger("fastbert.serve")


@dataclass
class ServerConfig:
    """The limits (``fastbert serve --help`` says what each does)."""
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 256
    payload_limit: int = 2_000_000
    api_key: Optional[str] = None
    cors_allow_origins: Sequence[str] = ()
    tokenization_workers: int = 2
    model_name: Optional[str] = None  # "model" in answers; default: the model directory's name

    def check(self):
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit",
                     "tokenization_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_client_batch_size > self.max_concurrent_requests:
            raise ValueError(f"max_client_batch_size ({self.max_client_batch_size}) is more than "
                             f"max_concurrent_requests ({self.max_concurrent_requests}): a full client batch "
                             "could never be admitted")


def _error_response(request_path: str, err: ApiError) -> JSONResponse:
    """OpenAI's error shape under /v1/ (its SDK reads error.message), TEI's elsewhere."""
    if request_path.startswith("/v1/"):
        kind = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error"}.get(
            err.status, "invalid_request_error")
        body = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.kind}}
    else:
        body = {"error": err.message, "error_type": err.kind}
    headers = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": "1"}}.get(err.status)
    return JSONResponse(body, status_code=err.status, headers=headers)


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object; 413 past ``limit`` bytes (declared or streamed), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, more than this server's --payload-limit ({limit})",
                       "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is more than this server's --payload-limit ({limit} bytes)",
                           "too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"request body is not valid JSON ({e})", "validation") from None
    if not isinstance(body, dict):
        raise schemas.invalid(f"request body must be a JSON object, got {schemas._type_name(body)}")
    return body


def _model_name(model_dir) -> str:
    from pathlib import Path

    from ..assets import default_model_dir

    if Path(model_dir) == default_model_dir():
        return "sentence-transformers/all-MiniLM-L6-v2"
    return Path(model_dir).resolve().name


def create_app(encoder, config: Optional[ServerConfig] = None, model_thread=None) -> Starlette:
    config = config or ServerConfig()
    config.check()
    metrics = Metrics()
    batcher = Batcher(encoder, config.max_batch_tokens, config.max_concurrent_requests, metrics, model_thread)
    tokenization = Tokenization(encoder, config.tokenization_workers, metrics)
    limits = schemas.Limits(config.max_client_batch_size, encoder.tokenizer.vocab_size,
                            encoder.get_sentence_embedding_dimension())
    model_name = config.model_name or _model_name(encoder.model_dir)
    api_key = config.api_key.encode() if config.api_key else None

    def endpoint(route: str, open_route: bool = False):
        """Auth (unless ``open_route``), error answers, request metrics."""
        def wrap(fn):
            @functools.wraps(fn)
            async def handler(request: Request):
                t0 = time.perf_counter()
                try:
                    if api_key is not None and not open_route:
                        given = request.headers.get("authorization", "")
                        token = given[7:] if given[:7].lower() == "bearer " else ""
                        if not hmac.compare_digest(token.encode(), api_key):
                            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                           "unauthorized")
                    response = await fn(request)
                except ApiError as err:
                    metrics.requests.labels(route, err.kind).inc()
                    return _error_response(request.url.path, err)
                except Exception as exc:  # a server fault, never the client's input: 500, logged
                    log.exception("%s failed", route)
                    metrics.requests.labels(route, "backend").inc()
                    return _error_response(request.url.path, ApiError(500, f"internal error: {exc}", "backend"))
                metrics.requests.labels(route, "success").inc()
                metrics.request_duration.labels(route).observe(time.perf_counter() - t0)
                return response
            return handler
        return wrap

    async def embed(req: schemas.EmbedRequest):
        """Permits, tokenization, the batcher -> ((B, dims) float32 numpy, tokens used)."""
        n = len(req.inputs)
        if not batcher.try_acquire(n):
            raise ApiError(429, f"server busy: {n} more inputs would pass --max-concurrent-requests "
                                f"({config.max_concurrent_requests} inputs in flight); retry later", "overloaded")
        try:
            enc = await tokenization.packed(req.inputs, req.truncate, req.truncation_direction)
            pooled = await batcher.submit(enc)
        finally:
            batcher.release(n)
        metrics.inputs.inc(n)
        normalize = encoder.spec["normalize"] if req.normalize is None else req.normalize
        return schemas.finish(pooled, normalize, req.dimensions), int(enc["cu_seqlens"][-1])

    @endpoint("/v1/embeddings")
    async def openai_embeddings(request):
        req = schemas.parse_openai(await read_json(request, config.payload_limit), limits)
        emb, n_tokens = await embed(req)
        return JSONResponse(schemas.openai_response(emb, req, model_name, n_tokens))

    @endpoint("/embed")
    async def tei_embed(request):
        req = schemas.parse_embed(await read_json(request, config.payload_limit), limits)
        emb, _ = await embed(req)
        return JSONResponse(emb.tolist())

    @endpoint("/tokenize")
    async def tei_tokenize(request):
        texts, special = schemas.parse_tokenize(await read_json(request, config.payload_limit), limits)
        return JSONResponse(await tokenization.tokens(texts, special))

    @endpoint("/health", open_route=True)
    async def health(request):
        """200 once a forward pass through the batcher works, else 503."""
        try:
            enc = await tokenization.packed(["health check"], True, "right")
            pooled = await batcher.submit(enc)
            if not bool(pooled.isfinite().all()):
                raise RuntimeError("the forward pass returned non-finite values")
        except Exception as exc:
            raise ApiError(503, f"unhealthy: {exc}", "unhealthy") from None
        return JSONResponse({"status": "ok"})

    @endpoint("/info")
    async def info(request):
        from .. import __version__

        return JSONResponse({
            "model_id": model_name, "model_dir": str(encoder.model_dir), "model_type": "embedding",
            "dimension": encoder.get_sentence_embedding_dimension(), "max_input_length": encoder.max_seq_length,
            "pooling": encoder.spec["pooling"], "normalize": encoder.spec["normalize"],
            "model_dtype": str(encoder.model.dtype).replace("torch.", ""), "device": str(encoder.model.device),
            "backend": encoder.backend(), "tokenizer": encoder.tokenizer_name,
            "max_batch_tokens": config.max_batch_tokens, "max_concurrent_requests": config.max_concurrent_requests,
            "max_client_batch_size": config.max_client_batch_size, "payload_limit": config.payload_limit,
            "tokenization_workers": config.tokenization_workers, "version": __version__})

    @endpoint("/metrics", open_route=True)
    async def prometheus(request):
        return Response(metrics.render(), media_type=metrics.content_type)

    async def http_error(request, exc: HTTPException):  # 404, 405 from routing: JSON too
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "validation")
        return _error_response(request.url.path, ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                                                                            f"{exc.detail}", kind))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        log.info("fastbert serve: %s (%s, %s, %s backend), %d-dim embeddings, max input %d tokens", model_name,
                 encoder.model.device, str(encoder.model.dtype).replace("torch.", ""), encoder.backend(),
                 limits.hidden_size, encoder.max_seq_length)
        try:
            yield
        finally:
            await batcher.stop()
            tokenization.close()

    middleware = []
    if config.cors_allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_allow_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"]))
    routes = [Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
              Route("/embed", tei_embed, methods=["POST"]),
              Route("/tokenize", tei_tokenize, methods=["POST"]),
              Route("/health", health, methods=["GET"]),
              Route("/info", info, methods=["GET"]),
              Route("/metrics", prometheus, methods=["GET"])]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, config
    return app
