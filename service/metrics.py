"""Prometheus metrics (DESIGN §5), all named ``intentlm_*``, on the default registry.

The default registry is the one vLLM's engine registers its own ``vllm:*`` metrics in, so
``GET /metrics`` exposes both, and nothing here counts what vLLM already counts (tokens, time to
first token, its running and waiting requests, KV-cache use): ours are the HTTP view, admission
and the answers. Labels are bounded: routes are the API's fixed paths, intents are the model's
names (constrained decoding cannot invent others; free-form answers naming an unknown intent are
counted under ``other``), models are the served ones (``service.config.MAX_MODELS`` at most).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

# Latency buckets sized for a latency product: tens of milliseconds to the request timeout.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)

REQUESTS = Counter("intentlm_requests", "HTTP requests by route and status code.", ["route", "status"])
LATENCY = Histogram(
    "intentlm_request_latency_seconds", "Time from request to full reply.", ["route"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("intentlm_requests_in_flight", "Admitted generations the engine is running.")
QUEUED = Gauge("intentlm_requests_queued", "Admitted generations waiting for a batch slot.")
EXPECTED_SECONDS = Gauge(
    "intentlm_admission_expected_seconds",
    "The expected time to answer one more request (what the admission deadline compares).",
)
PREDICTED_INTENTS = Counter(
    "intentlm_predicted_intents", "Intents returned by /v1/intents, by name and model.", ["intent", "model"]
)
OUT_OF_SCOPE = Counter(
    "intentlm_out_of_scope_replies",
    "/v1/intents replies turned out-of-scope, by the score under its threshold and the model.",
    ["score", "model"],
)
# Drift: where a model's answers sit, per intent, so that a shift in traffic shows before accuracy is measured.
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
CONFIDENCE = Histogram(
    "intentlm_intent_confidence",
    "Calibrated confidence of /v1/intents answers, by the intent the model wrote (before the out-of-scope rule).",
    ["intent", "model"],
    buckets=_SCORE_BUCKETS,
)
TYPICALITY = Histogram(
    "intentlm_intent_typicality",
    "Typicality of /v1/intents prompts, by the intent the model wrote (before the out-of-scope rule).",
    ["intent", "model"],
    buckets=_SCORE_BUCKETS,
)
MALFORMED = Counter(
    "intentlm_malformed_outputs", "Answers that do not parse as intent calls, by route and model.", ["route", "model"]
)
MODEL_INFO = Info("intentlm_model", "The models being served, by name.", ["model"])

TIMED_ROUTES = ("/", "/v1/intents", "/v1/chat/completions", "/v1/completions")  # the routes that generate
ROUTE_LABELS = (
    *TIMED_ROUTES,
    "/v1/models",
    "/ui",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
)


def route_label(path: str) -> str:
    """A bounded label for a request path (unknown paths share one label); ``/models/{name}/v1/intents`` counts as
    ``/v1/intents`` (the answers' metrics carry the model)."""
    if path.startswith("/models/"):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else path
    if path.startswith("/v1/admin/"):
        return "/v1/admin"
    if path in ROUTE_LABELS:
        return path
    for page in ("/ui", "/docs"):  # a page's assets count under the page
        if path.startswith(page + "/"):
            return page
    return "other"


def exposition() -> tuple[bytes, str]:
    """The text exposition format of everything registered, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
