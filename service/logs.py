"""Request ids and the log formats of ``intentlm serve``.

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is sane, else a new one. The reply carries it
back in ``X-Request-ID``, every log record written while the request is handled carries it (``request_id``), and so
do the ids of its vLLM generations (``<request id>-<8 hex>``), so that a client's report, the server's log lines and
vLLM's own lines about a request can be joined. Logs are text by default; ``--log-format json`` writes one JSON
object a line, vLLM's records included, for log collectors.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import tempfile
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson

from service.metrics import route_label

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

log = logging.getLogger("intentlm.requests")


def vllm_request_id() -> str:
    """A new id for one vLLM generation: within a request ``<request id>-<8 hex>``, so that vLLM's own log lines and
    aborts name the request (the generations of a batch need distinct ids), else a uuid4 hex."""
    request_id = REQUEST_ID.get()
    return f"{request_id}-{uuid.uuid4().hex[:8]}" if request_id else uuid.uuid4().hex


def accepted_request_id(value: bytes | None) -> str | None:
    """``value`` as the request's id, or None when it is not one to take (the server then makes its own).

    The header comes from the client and goes into every log line of its request, so only 1 to 128 visible ASCII
    characters are taken, no space nor control character: a line feed would forge log lines in the text format,
    escape sequences would rewrite what an operator's terminal shows, a space would fake a field, and an unbounded
    value would bloat every line (and vLLM's request ids). HTTP servers refuse some of these (CR, LF), not all."""
    return value.decode("ascii") if value is not None and _SANE_ID.fullmatch(value) else None


class RequestIds:
    """Gives every HTTP request its id (module docstring): current while the request is handled, for the logs, and
    sent back in the reply's ``X-Request-ID`` header, error replies and streams included. At debug level it also logs
    one line per request (method, route label, status, time): the access log, which other levels leave off.

    The id is not reset when the app raises: Starlette's catch-all error handler, which sits outside every middleware,
    logs the error after that (and uvicorn its traceback), and those lines should name the request. Each request runs
    in a task, and so a context, of its own: the id ends with it. That handler's 500 (or 503 for a dead engine) is
    sent past this middleware, so ``service.app.error_response`` adds the header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = accepted_request_id(dict(scope["headers"]).get(HEADER)) or uuid.uuid4().hex
        # the handlers see the id taken, not the client's value (vLLM's OpenAI layer names its requests after it)
        headers = [(name, value) for name, value in scope["headers"] if name != HEADER]
        scope = {**scope, "headers": [*headers, (HEADER, request_id.encode())]}
        start = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(name, value) for name, value in message.get("headers", ()) if name.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        await self.app(scope, receive, send_with_id)
        elapsed_ms = (time.perf_counter() - start) * 1000
        log.debug("%s %s %d %.1f ms", scope["method"], route_label(scope["path"]), status, elapsed_ms)
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record as ``request_id`` (None outside a request). It goes on handlers:
    a logger's filters never see the records its children's loggers propagate to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger> [<request id>]: <message>``, the id ``-`` outside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return TEXT_FORMAT % {**record.__dict__, "request_id": getattr(record, "request_id", None) or "-"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``request_id`` (null
    outside a request) and, when the record has an exception, ``exc_info`` (its traceback as text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Log this process's records at ``level`` and above to stderr in ``fmt``, each with its request id: ours,
    uvicorn's (the server gives uvicorn no logging config of its own, so its loggers propagate here) and, in JSON,
    vLLM's too. In text, vLLM keeps its own handler and format, whose lines name our requests through their ids."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if fmt == "json":
        _json_vllm_logs()


def _json_vllm_logs() -> None:
    """Have every vLLM process log its "vllm" records through ``JsonFormatter``.

    vLLM gives its "vllm" logger a handler and format of its own, which do not propagate, in each process it runs (this
    one, the engine core, its workers), and spawns those where CUDA is already initialised (on a GPU), so that they
    inherit no handler of ours. Each of them applies the logging config file named by ``VLLM_LOGGING_CONFIG_PATH``, so
    one is written, removed at exit, at vLLM's own level (``VLLM_LOGGING_LEVEL``). An operator's own
    ``VLLM_LOGGING_CONFIG_PATH``, or ``VLLM_CONFIGURE_LOGGING=0`` (vLLM's records then propagate to this process's
    handler), is left as it is."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["request_id"],
                "formatter": "json",
            }
        },
        "loggers": {"vllm": {"handlers": ["json"], "level": level, "propagate": False}},
    }
    with tempfile.NamedTemporaryFile("wb", prefix="intentlm-vllm-logging-", suffix=".json", delete=False) as file:
        file.write(orjson.dumps(config))
    atexit.register(Path(file.name).unlink, missing_ok=True)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = file.name
