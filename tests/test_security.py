"""Security on the shared `live_server` (token `test-token`): every route of the app's own route table
refuses a missing or wrong token unless it is one of the documented open routes, tokens never reach
the logs, and CORS is off. (HTML injection from model output into the page: tests/test_ui.py.)
"""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from service.app import create_app
from service.config import Settings
from service.routes import WEB_DIR

pytestmark = pytest.mark.engine

# Open by design (docs/reliability.md): probes and metrics for the orchestrator, and pages that hold no
# data and reach the model only through the API with the token the user types.
OPEN = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/ui",
    "/ui/",
    "/ui/assets",
    "/docs",
    "/docs/",
    "/docs/assets",
    "/openapi.json",
}
WRONG = [
    None,
    "",
    "wrong",
    "Bearer wrong",
    "Bearer",
    "test-toke",
    "test-token-and-more",
    "TEST-TOKEN",
    "Basic dGVzdC10b2tlbg==",
]


def route_table() -> list[tuple[str, str]]:
    """(method, path) of every route the app factory builds: a new route is covered the day it is added."""
    app = create_app(Settings(api_token="x"), {"m": WEB_DIR})  # no engine starts: the lifespan never runs here
    table = []
    for route in app.routes:
        if isinstance(route, Mount):
            table.append(("GET", route.path))
        elif isinstance(route, (APIRoute, Route)):
            table += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return table


ROUTES = route_table()


def test_the_route_table_is_what_the_open_list_assumes() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/", "/v1/intents"} <= paths - OPEN  # the API is protected...
    assert paths >= OPEN  # ...and every open entry names a real route (no stale allowances)


def _request(url: str, method: str, path: str, authorization: str | None, model: str = "") -> httpx.Response:
    if path == "/ui/assets":
        path += "/" + next(p.name for p in WEB_DIR.iterdir() if p.is_file() and p.name != "index.html")
    if path == "/docs/assets":
        path += "/swagger-ui.css"
    headers = {} if authorization is None else {"Authorization": authorization}
    path = path.replace("{model_name}", model or "m").replace("{name}", model or "m")
    body = {
        "/v1/intents": {"text": "lights off"},
        "/v1/admin/models": {"name": "another", "path": "/nowhere"},
        "/v1/chat/completions": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        "/v1/completions": {"model": model, "prompt": "hi", "max_tokens": 1},
    }.get(path.removeprefix(f"/models/{model or 'm'}"), {"prompt": "hi", "max_new_tokens": 1})
    json = body if method == "POST" else None
    # /ui/ and /docs/ redirect to the page (relatively, so that a gateway's prefix is kept)
    return httpx.request(method, url + path, headers=headers, json=json, timeout=60, follow_redirects=True)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_refuses_missing_or_wrong_tokens_unless_open(live_server, method: str, path: str) -> None:
    if path in OPEN:
        assert _request(live_server.url, method, path, None).status_code == 200
        return
    for authorization in WRONG:
        reply = _request(live_server.url, method, path, authorization)
        assert reply.status_code == 401, (authorization, reply.status_code, reply.text[:300])
        assert reply.json()["error"]["code"] == "unauthorized"
        assert len(authorization or "") < 8 or authorization not in reply.text  # never echoed
    # admitted: 200, or on the admin routes of this one-model server (no LoRA, its default model) 409
    expected = 409 if path.startswith("/v1/admin/") else 200
    assert (
        _request(live_server.url, method, path, live_server.token, live_server.model_dir.name).status_code == expected
    )


def test_auth_comes_before_validation(live_server) -> None:
    """An unauthenticated caller learns nothing about the API, not even which fields are wrong."""
    for path, body in (("/", {"prompt": 42}), ("/v1/intents", {"nope": 1}), ("/", b"\xff not json")):
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        reply = httpx.post(live_server.url + path, headers={"Authorization": "wrong"}, **kwargs)
        assert reply.status_code == 401, reply.text


def test_tokens_never_reach_the_logs(live_server) -> None:
    wrong = "wrong-secret-d41d8cd98f00"
    for authorization in (live_server.token, f"Bearer {live_server.token}", wrong, f"Bearer {wrong}"):
        headers = {"Authorization": authorization}
        httpx.post(f"{live_server.url}/v1/intents", json={"text": "lights off"}, headers=headers, timeout=60)
        httpx.post(f"{live_server.url}/", json={"prompt": 42}, headers=headers, timeout=60)  # 422 or 401
        httpx.get(f"{live_server.url}/nope?token={wrong}", headers=headers)
    log = live_server.log()
    assert "intentlm serve settings:" in log and '"api_token": "***"' in log  # the start-up print, masked
    assert live_server.token not in log
    assert wrong not in log


@pytest.mark.parametrize("path", ["/", "/v1/intents", "/health/live"])
def test_cors_is_off_by_default(live_server, path: str) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = httpx.options(
        f"{live_server.url}{path}",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code != 200 or "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(f"{live_server.url}/health/live", headers=origin)
    assert not any(name.startswith("access-control-") for name in preflight.headers)
    assert not any(name.startswith("access-control-") for name in simple.headers)
