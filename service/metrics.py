"""Prometheus metrics (DESIGN §5), all named ``intentlm_*``, on the default registry.

The default registry is the one vLLM's engine registers its own ``vllm:*`` metrics in, so
``GET /metrics`` exposes both. Labels are bounded: routes are the API's fixed paths, intents are
the model's names (constrained decoding cannot invent others; free-form answers naming an unknown
intent are counted under ``other``).
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
TTFT = Histogram(
    "intentlm_time_to_first_token_seconds",
    "Time from a generation's arrival at the engine to its first token.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("intentlm_prompt_tokens", "Prompt tokens processed.", ["route"])
GENERATED_TOKENS = Counter("intentlm_generated_tokens", "Tokens generated.", ["route"])
IN_FLIGHT = Gauge("intentlm_requests_in_flight", "Admitted generations the engine is running.")
QUEUED = Gauge("intentlm_requests_queued", "Admitted generations waiting for a batch slot.")
EXPECTED_SECONDS = Gauge(
    "intentlm_admission_expected_seconds",
    "The expected time to answer one more request (what the admission deadline compares).",
)
PREDICTED_INTENTS = Counter("intentlm_predicted_intents", "Intents returned by /v1/intents, by name.", ["intent"])
OUT_OF_SCOPE = Counter(
    "intentlm_out_of_scope_replies",
    "/v1/intents replies turned out-of-scope, by the score under its threshold.",
    ["score"],
)
MALFORMED = Counter("intentlm_malformed_outputs", "Answers that do not parse as intent calls.", ["route"])
MODEL_INFO = Info("intentlm_model", "The model being served.")

ROUTE_LABELS = ("/", "/v1/intents", "/ui", "/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json")


def route_label(path: str) -> str:
    """A bounded label for a request path (unknown paths share one label)."""
    if path in ROUTE_LABELS:
        return path
    return "/ui" if path.startswith("/ui/") else "other"


def exposition() -> tuple[bytes, str]:
    """The text exposition format of everything registered, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
