"""``fastbert serve``: an embedding server with OpenAI's and TEI's HTTP API.

Four modules, one job each (HTTP is kept apart from batching, as text-embeddings-inference does it):

    schemas.py   request parsing and validation (pydantic-free), response shapes, ``ApiError``
    batching.py  the FIFO queue, its permits and the batcher: packed batches by a token budget, one model thread
    metrics.py   the Prometheus metrics of each hop
    app.py       the Starlette app factory: routes, errors, API key, payload limit, lifespan
    cli.py       ``fastbert serve``'s arguments, the encoder, uvicorn and the signals

Needs the ``serve`` extra (uvicorn, starlette, prometheus-client); ``import fastbert`` imports none of it.
"""
