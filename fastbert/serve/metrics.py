"""Prometheus metrics of the server, one per hop (TEI's ``te_*`` metrics, named ``fastbert_*``).

Each app owns its registry, so two apps in one process (tests) never share counters.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from well under a millisecond (tokenizing one text) to seconds (a full batch on a busy CPU).
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fastbert_request", "HTTP requests by route and outcome (success, or the error "
                                "kind)", ["route", "outcome"], registry=r)
        self.request_duration = Histogram("fastbert_request_duration_seconds", "Whole request, successful ones",
                                          ["route"], buckets=_SECONDS, registry=r)
        self.inputs = Counter("fastbert_request_inputs", "Inputs (texts or token-id lists) embedded", registry=r)
        self.tokenization_duration = Histogram("fastbert_tokenization_duration_seconds",
                                               "Tokenizing one request's texts (worker thread)", buckets=_SECONDS,
                                               registry=r)
        self.queue_duration = Histogram("fastbert_queue_duration_seconds", "One input's wait in the queue, "
                                        "from enqueued to its batch's start", buckets=_SECONDS, registry=r)
        self.inference_duration = Histogram("fastbert_inference_duration_seconds", "One batch's forward and "
                                            "pooling (model thread)", buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("fastbert_batch_size", "Inputs per batch", buckets=_SIZES, registry=r)
        self.batch_tokens = Histogram("fastbert_batch_tokens", "Tokens per (packed) batch", buckets=_TOKENS,
                                      registry=r)
        self.queue_size = Gauge("fastbert_queue_size", "Inputs waiting in the queue", registry=r)
        self.in_flight = Gauge("fastbert_inputs_in_flight", "Inputs admitted and not yet answered (permits "
                               "taken, of --max-concurrent-requests)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
