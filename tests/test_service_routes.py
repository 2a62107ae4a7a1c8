"""Fast unit tests of the HTTP layer with a fake engine (the real one is exercised in test_server*.py),
plus the pieces of the engine that need no model: admission, confidence, settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.admission import Admission
from service.app import create_app
from service.config import ModelNotFoundError, Settings
from service.engine import Generation
from service.errors import ServiceError
from service.predictor import Decoded
from service.protocol import EasRequest, IntentCall, IntentPrediction


class FakeEngine:
    """Answers like the real engine without a model; ``delay`` makes generations slow."""

    def __init__(self, settings: Settings, model_dirs: dict[str, Path], delay: float = 0.0) -> None:
        self.settings = settings
        self.models = model_dirs
        self.default = next(iter(model_dirs))
        self.admission = Admission(settings.max_in_flight, settings.max_queued)
        self.delay = delay
        self.healthy = True

    def served(self, name: str | None) -> str:
        if name not in (None, *self.models):
            raise ServiceError(404, "model_not_found", f"no model {name!r}", field="model")
        return name or self.default

    def prepare_chat(self, request: EasRequest, name: str | None) -> tuple[str, list[int], object]:
        if request.prompt == "too long":
            raise ServiceError(422, "prompt_too_long", "too long", field="prompt")
        return self.served(name), [1, 2, 3], request

    async def stream(self, model: str, ids: list[int], params: EasRequest) -> AsyncIterator[Generation]:
        text = f"{model}: " if model != self.default else ""
        for word in ("it", " is", " done"):
            await asyncio.sleep(self.delay)
            text += word
            yield Generation(Decoded(text, [], [], None), text.endswith("done"))

    async def predict(self, text: str, **kwargs: object) -> IntentPrediction:
        return (await self.predict_many([text], **kwargs))[0]

    async def predict_many(
        self, texts: list[str], model: str | None = None, **kwargs: object
    ) -> list[IntentPrediction]:
        name = self.served(model)
        await asyncio.sleep(self.delay)
        return [
            IntentPrediction(
                intents=[IntentCall(name="echo", args=[t])],
                raw=f"echo({t})" if name == self.default else f"{name}.echo({t})",
                confidence=1.0,
                latency_ms=1.0,
            )
            for t in texts
        ]

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine core died")

    def shutdown(self) -> None:
        pass


def make_client(tmp_path: Path, delay: float = 0.0, **settings: object) -> TestClient:
    config = Settings(**({"api_token": "secret"} | settings))

    async def factory(s: Settings, model_dirs: dict[str, Path]) -> FakeEngine:
        return FakeEngine(s, model_dirs, delay)

    models = {"m": tmp_path, "other": tmp_path}
    return TestClient(create_app(config, models, factory), headers={"Authorization": "secret"})


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    with make_client(tmp_path) as c:
        yield c


def test_routes_answer_in_the_design_shapes(client: TestClient) -> None:
    assert client.get("/health/ready").json()["status"] == "ready"
    assert client.post("/", json={"prompt": "hi"}).json() == {
        "response": "it is done",
        "history": [["hi", "it is done"]],
    }
    one = client.post("/v1/intents", json={"text": "a"}).json()
    assert one["intents"] == [{"name": "echo", "args": ["a"]}]
    many = client.post("/v1/intents", json={"texts": ["a", "b"]}).json()
    assert [m["raw"] for m in many] == ["echo(a)", "echo(b)"]


def test_stream_objects_are_nul_terminated(client: TestClient) -> None:
    body = client.post("/", json={"prompt": "hi", "use_stream_chat": True, "history": [["x", "y"]]}).content
    parts = body.split(b"\0")
    assert parts[-1] == b"" and len(parts) == 4
    assert parts[0] == b'{"response":"it","history":[["x","y"],["hi","it"]]}'


def test_auth(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        for value, status in [
            ("secret", 200),
            ("Bearer secret", 200),
            ("bearer  secret", 200),
            ("secre", 401),
            ("", 401),
            ("Bearer", 401),
            ("Basic secret", 401),
        ]:
            assert c.post("/v1/intents", json={"text": "a"}, headers={"Authorization": value}).status_code == status
        anonymous = {"Authorization": ""}
        assert c.get("/health/live", headers=anonymous).status_code == 200
        assert c.get("/metrics", headers=anonymous).status_code == 200
        assert c.get("/ui", headers=anonymous).status_code == 200
        reply = c.post("/", json={"prompt": "a"}, headers=anonymous)
        assert reply.json() == {
            "error": {"code": "unauthorized", "message": "missing or wrong token in the Authorization header"}
        }


def test_errors_have_the_json_body(client: TestClient) -> None:
    reply = client.post("/", json={"prompt": "too long"})
    assert reply.status_code == 422
    assert reply.json() == {"error": {"code": "prompt_too_long", "message": "too long", "field": "prompt"}}
    reply = client.post("/", content=b"not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "invalid_request"


def test_body_limit_by_length_and_while_streaming(tmp_path: Path) -> None:
    with make_client(tmp_path, max_body_bytes=2048) as c:
        big = b'{"prompt": "' + b"a" * 4096 + b'"}'
        reply = c.post("/", content=big, headers={"Content-Type": "application/json"})
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
        chunked = c.post("/", content=iter([big[:1000], big[1000:]]), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"


def test_not_ready_until_loaded_and_load_failure_is_fatal(tmp_path: Path) -> None:
    loaded = asyncio.Event()
    fatal: list[bool] = []

    async def slow_factory(s: Settings, model_dirs: dict[str, Path]) -> FakeEngine:
        await loaded.wait()
        raise RuntimeError("no such model")

    app = create_app(Settings(), {"m": tmp_path}, slow_factory)
    app.state.on_fatal = lambda: fatal.append(True)
    with TestClient(app) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
        assert ready.json()["error"]["code"] == "not_ready"
        assert c.post("/v1/intents", json={"text": "a"}).json()["error"]["code"] == "not_ready"
        assert c.get("/health/live").status_code == 200
        c.portal.call(loaded.set)
        for _ in range(100):
            if fatal:
                break
            c.portal.call(asyncio.sleep, 0.01)
    assert fatal and isinstance(app.state.load_error, RuntimeError)


def test_dead_engine_is_not_ready(client: TestClient) -> None:
    client.app.state.engine.healthy = False
    reply = client.get("/health/ready")
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "engine_dead"


def test_draining_refuses_new_work(client: TestClient) -> None:
    client.app.state.draining = True
    reply = client.post("/v1/intents", json={"text": "a"})
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "shutting_down"


def test_timeout_is_504(tmp_path: Path) -> None:
    with make_client(tmp_path, delay=0.5, request_timeout=0.1) as c:
        reply = c.post("/v1/intents", json={"text": "a"})
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
        assert c.app.state.engine.admission.admitted == 0


def test_admission_bound() -> None:
    admission = Admission(max_in_flight=2, max_queued=1)
    with admission.slots(3):
        with pytest.raises(ServiceError) as refused:
            admission.check(1)
        assert refused.value.status == 503 and refused.value.retry_after == 1
    assert admission.admitted == 0
    with pytest.raises(ServiceError), admission.slots(4):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_deadline_comes_from_the_measured_interval_between_finishes() -> None:
    clock = Clock()
    admission = Admission(max_in_flight=8, max_queued=100, deadline_s=2.0, clock=clock)
    for _ in range(5):  # idle, or nothing measured: every request is admitted
        admission.check(1)
    assert admission.expected_seconds() == 0.0
    clock.now += 50  # idle time before a request is not service time
    with admission.slots(1):
        clock.now += 0.5
    assert admission.interval == pytest.approx(0.5)
    admission.check(1)  # nothing admitted: a request alone is never refused
    with admission.slots(3):  # three answered together after 0.6 s: one every 0.2 s
        clock.now += 0.6
        with pytest.raises(ServiceError) as refused:
            admission.check(3)  # (3 + 3) * 0.5 = 3 s > 2 s
    assert refused.value.status == 503 and refused.value.retry_after == 1
    assert admission.interval == pytest.approx(0.9 * 0.5 + 0.1 * 0.2)
    with admission.slots(2):
        admission.check(1)  # (2 + 1) * 0.47 = 1.4 s
        with pytest.raises(ServiceError):
            admission.check(3)  # 5 * 0.47 = 2.35 s
    assert admission.admitted == 0
    off = Admission(max_in_flight=8, max_queued=100, deadline_s=0, clock=clock)
    with off.slots(1):
        clock.now += 5
    with off.slots(5):
        off.check(1)  # (5 + 1) * 5 s expected, and no deadline to pass


def test_batch_counts_each_utterance_against_admission(tmp_path: Path) -> None:
    with make_client(tmp_path, max_in_flight=2, max_queued=0) as c:
        assert c.post("/v1/intents", json={"texts": ["a", "b"]}).status_code == 200
        reply = c.post("/v1/intents", json={"texts": ["a", "b", "c"]})  # can never fit: no retry would help
        assert reply.status_code == 422 and reply.json()["error"]["code"] == "batch_too_large"


def test_metrics_label_routes_and_statuses(client: TestClient) -> None:
    client.post("/v1/intents", json={"text": "a"})
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'intentlm_requests_total{route="/v1/intents",status="200"}' in text
    assert 'intentlm_requests_total{route="other",status="404"}' in text


def test_settings_env_flags_and_masking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTENTLM_PORT", "9001")
    monkeypatch.setenv("INTENTLM_API_TOKEN", "hunter2")
    assert Settings().port == 9001
    assert Settings(port=9002).port == 9002  # the CLI passes flags as arguments: they win
    summary = Settings().summary()
    assert summary["api_token"] == "***" and "hunter2" not in str(summary)


def test_model_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTENTLM_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(ModelNotFoundError, match="intentlm model prepare"):
        Settings().resolve_models()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        Settings(model=[str(tmp_path)]).resolve_models()
    base = tmp_path / "empty-home" / "models" / "SmolLM2-135M-Instruct"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    assert Settings().resolve_models() == {base.name: base}
    demo = base.parent / "smarthome-demo"
    demo.mkdir()
    (demo / "config.json").write_text("{}")
    assert Settings().resolve_models() == {"smarthome-demo": demo}
    # several: named by directory or NAME=DIR, a folder of model directories, the default first
    assert Settings(model=f"lights={demo},{base}").resolve_models() == {"lights": demo, base.name: base}
    assert list(Settings(model=[str(base.parent)]).resolve_models()) == [base.name, "smarthome-demo"]
    with pytest.raises(ModelNotFoundError, match="two models named 'smarthome-demo'"):
        Settings(model=[str(demo), str(base.parent)]).resolve_models()
    with pytest.raises(ModelNotFoundError, match="a model's name"):
        Settings(model=[f"bad name={demo}"]).resolve_models()


def test_serve_cli_without_a_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from service.cli import serve

    monkeypatch.setenv("INTENTLM_HOME", str(tmp_path))
    result = CliRunner().invoke(serve, [])
    assert result.exit_code == 1 and "intentlm model prepare" in result.output
    result = CliRunner().invoke(serve, ["--port", "-5"])
    assert result.exit_code == 2 and "port" in result.output


def test_route_labels_are_bounded_and_count_assets_under_their_page() -> None:
    from service.metrics import route_label

    assert route_label("/v1/chat/completions") == "/v1/chat/completions"
    assert route_label("/ui/assets/app.js") == "/ui" and route_label("/docs/assets/swagger-ui.css") == "/docs"
    assert route_label("/ui-evil") == "other" and route_label("/anything/else") == "other"


def test_a_request_names_its_model_by_field_or_path(client: TestClient) -> None:
    assert client.get("/health/ready").json() == {"status": "ready", "model": "m", "models": ["m", "other"]}
    assert client.post("/v1/intents", json={"text": "a", "model": "other"}).json()["raw"] == "other.echo(a)"
    assert client.post("/models/other/v1/intents", json={"text": "a"}).json()["raw"] == "other.echo(a)"
    assert client.post("/models/m/v1/intents", json={"texts": ["a"]}).json()[0]["raw"] == "echo(a)"
    assert client.post("/", json={"prompt": "hi", "model": "other"}).json()["response"] == "other: it is done"
    assert client.post("/models/other/", json={"prompt": "hi"}).json()["response"] == "other: it is done"
    for path, body in (("/v1/intents", {"text": "a", "model": "nope"}), ("/models/nope/", {"prompt": "hi"})):
        reply = client.post(path, json=body)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    text = client.get("/metrics").text
    assert 'intentlm_requests_total{route="/v1/intents",status="200"}' in text
    assert 'route="other"' not in text.split("intentlm_requests_total")[1].split("# HELP")[0]


def test_the_page_offers_the_served_models(client: TestClient) -> None:
    assert '<meta name="intentlm-models" content="m,other">' in client.get("/ui").text


def test_admin_routes_need_a_token_to_be_set(tmp_path: Path) -> None:
    with make_client(tmp_path, api_token=None) as open_client:
        reply = open_client.post("/v1/admin/models", json={"name": "x", "path": str(tmp_path)})
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "admin_disabled"
    with make_client(tmp_path) as c:
        assert c.delete("/v1/admin/models/x", headers={"Authorization": "wrong"}).status_code == 401
