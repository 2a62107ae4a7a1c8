"""The try-it page and /docs in real headless Chromium against the shared live server (screenshot in artifacts/),
also behind a gateway that serves the app under a path prefix it strips, as EAS and ingress controllers do."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.routes import UI_PAGE, WEB_DIR

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PREFIX = "/eas/svc"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.engine,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed"),
]


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 900, "height": 760})
        page = context.new_page()
        yield page
        browser.close()


class StripPrefix(BaseHTTPRequestHandler):
    """The gateway: forwards ``PREFIX/<path>`` to the server's ``/<path>`` (``self.server.upstream``), 404 otherwise."""

    def forward(self) -> None:
        if not self.path.startswith(PREFIX + "/"):
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        skip = {"host", "connection", "accept-encoding", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        reply = httpx.request(
            self.command, self.server.upstream + self.path[len(PREFIX) :], headers=headers, content=body, timeout=60
        )
        self.send_response(reply.status_code)
        for key, value in reply.headers.items():
            if key.lower() not in {"connection", "content-length", "transfer-encoding", "date", "server"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    do_GET = do_POST = forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(live_server) -> Iterator[str]:
    """The live server under ``http://127.0.0.1:<port>/eas/svc`` (the URL returned)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StripPrefix)
    server.upstream = live_server.url
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}{PREFIX}"
    server.shutdown()
    server.server_close()


def test_page_and_assets_are_served_without_token(live_server) -> None:
    html = httpx.get(f"{live_server.url}/ui")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{live_server.url}/ui/assets/{asset}").status_code == 200
    docs = httpx.get(f"{live_server.url}/docs")
    assert docs.status_code == 200 and "url: 'openapi.json'" in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{live_server.url}/docs/assets/{asset}").status_code == 200
    for page in (html.text, docs.text):
        assert "http" not in page.replace("http-equiv", "")  # no CDN: everything is local
        assert 'href="/' not in page and 'src="/' not in page  # relative: any path prefix is kept


def test_page_asks_the_model_and_shows_the_answer(live_server, page) -> None:
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(live_server.url) else None)
    page.goto(f"{live_server.url}/ui")

    # Without the token the server answers 401 and the page says so, opening the options.
    page.fill("#utterance", "turn off the lights in the kitchen")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.text_content("#error")

    page.fill("#token", live_server.token)
    page.click("#send")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert page.is_hidden("#error")
    assert page.locator("#intents .chip").count() >= 1
    assert page.text_content("#confidence").endswith("%")
    assert 0 < float(page.text_content("#typicality") or "") <= 1  # the test model has typicality statistics
    assert page.text_content("#latency").endswith("ms")
    raw = page.text_content("#raw")
    assert raw is not None and raw.strip()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
    assert external == []


def test_page_and_docs_work_behind_a_prefix_stripping_gateway(live_server, gateway, page) -> None:
    """The server sees /ui, the browser …/eas/svc/ui: every URL the pages use must be relative to keep the prefix."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(gateway))
    requests: list[str] = []
    failures: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failures.append(r.url))
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    page.goto(f"{gateway}/ui/")  # the slash is redirected away, relatively: the prefix stays
    assert page.url == f"{gateway}/ui"
    assert page.evaluate("getComputedStyle(document.querySelector('main')).borderRadius") == "12px"  # style.css
    page.click("#options summary")
    page.fill("#token", live_server.token)
    page.fill("#utterance", "turn off the lights in the kitchen")
    with page.expect_response(f"{gateway}/v1/intents") as reply:
        page.click("#send")
    assert reply.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#intents .chip").count() >= 1

    page.goto(f"{gateway}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)  # openapi.json loaded and rendered
    paths = page.locator(".swagger-ui .opblock-summary-path").all_text_contents()
    assert "/v1/intents" in "".join(paths).replace("\u200b", "")  # Swagger UI puts zero-width spaces before "/"

    for url in ("ui/assets/app.js", "ui/assets/style.css", "docs/assets/swagger-ui-bundle.js", "openapi.json"):
        assert f"{gateway}/{url}" in requests
    assert [url for url in requests if not url.startswith(origin + "/")] == []  # no CDN, no other host
    assert failures == []


def answer(**fields: object) -> dict[str, object]:
    """A /v1/intents reply for ``show``, so that the page is tested on answers the test model would not give."""
    return {"intents": [], "raw": "", "confidence": 0.5, "ranking": [], "oos_reason": None, "latency_ms": 9} | fields


def test_ranking_shows_as_bars(live_server, page) -> None:
    page.goto(f"{live_server.url}/ui")
    ranking = [{"name": "iot_hue_lightoff", "confidence": 0.75}, {"name": "iot_hue_lightdim", "confidence": 0.2}]
    page.evaluate("(a) => show(a)", answer(intents=[{"name": "iot_hue_lightoff", "args": []}], ranking=ranking))
    assert page.is_visible("#ranking")
    assert page.locator("#ranking .name").all_text_contents() == ["iot_hue_lightoff", "iot_hue_lightdim"]
    assert page.locator("#ranking .pct").all_text_contents() == ["75.0 %", "20.0 %"]
    fill = "bars => bars.map(b => b.firstChild.offsetWidth / b.offsetWidth)"
    assert page.eval_on_selector_all("#ranking .bar", fill) == pytest.approx([0.75, 0.2], abs=0.02)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-ranking.png"), full_page=True)

    page.evaluate("(a) => show(a)", answer())  # a free-form answer has no ranking
    assert page.locator("#ranking li").count() == 0 and page.is_hidden("#ranking-box")


def test_the_out_of_scope_label_comes_from_the_server(live_server, page) -> None:
    """The chip of the server's label (an odd one here, which must reach the page intact and inert) and the chips
    of a reply with an oos_reason are marked out of scope; a plain "oos" intent is not, on this server."""
    label = 'none_of_these"><script>window.pwned=true</script>'
    html = TestClient(create_app(Settings(oos_label=label), {"m": WEB_DIR})).get("/ui").text  # no lifespan: no engine
    page.route(f"{live_server.url}/ui", lambda route: route.fulfill(body=html, content_type="text/html"))
    try:
        page.goto(f"{live_server.url}/ui")
    finally:
        page.unroute(f"{live_server.url}/ui")
    marked = "(a) => { show(a); return [...document.querySelectorAll('#intents .chip.oos')].length; }"
    assert page.evaluate(marked, answer(intents=[{"name": label, "args": []}])) == 1
    assert page.evaluate(marked, answer(intents=[{"name": "oos", "args": []}])) == 0
    rejected = answer(intents=[{"name": "iot_hue_lightoff", "args": []}], oos_reason="confidence")
    assert page.evaluate(marked, rejected) == 1
    assert "confidence" in page.get_attribute("#intents .chip", "title")
    assert page.evaluate("window.pwned === undefined")


def test_the_model_selector_names_the_chosen_model(live_server, page) -> None:
    """On a server of several models the page offers them, the default first, and names the chosen one in its
    request; on one of a single model (the live server) there is no selector."""
    page.goto(f"{live_server.url}/ui")
    assert page.is_hidden("#model-box")
    html = UI_PAGE.replace("{{oos_label}}", "oos").replace("{{models}}", "demo,lights")
    sent: list[dict] = []

    def intents(route) -> None:
        sent.append(json.loads(route.request.post_data))
        route.fulfill(json=answer(intents=[{"name": "iot_hue_lightoff", "args": []}]))

    page.route(f"{live_server.url}/ui", lambda route: route.fulfill(body=html, content_type="text/html"))
    page.route(f"{live_server.url}/v1/intents", intents)
    try:
        page.goto(f"{live_server.url}/ui")
        assert page.is_visible("#model")
        assert page.eval_on_selector_all("#model option", "options => options.map(o => o.value)") == ["demo", "lights"]
        page.select_option("#model", "lights")
        page.fill("#utterance", "lights off")
        page.click("#send")
        page.wait_for_selector("#result:not([hidden])")
    finally:
        page.unroute(f"{live_server.url}/ui")
        page.unroute(f"{live_server.url}/v1/intents")
    assert sent and sent[0]["model"] == "lights" and sent[0]["text"] == "lights off"


def test_model_output_is_never_rendered_as_html(live_server, page) -> None:
    """The page inserts answers with textContent: markup in a reply stays text."""
    page.goto(f"{live_server.url}/ui")
    page.evaluate(
        """() => { window.pwned = false;
                   show({intents: [{name: "<img src=x onerror='window.pwned=true'>", args: ["<b>x</b>"]}],
                         ranking: [{name: "<img src=x onerror='window.pwned=true'><i>y</i>", confidence: 0.5}],
                         raw: "<script>window.pwned=true</script>", confidence: 0.5, latency_ms: 12}); }"""
    )
    assert page.locator("#result img, #result b, #result i, #result script").count() == 0
    assert "<script>" in page.text_content("#raw")
    assert "<i>y</i>" in page.text_content("#ranking")
    assert page.evaluate("window.pwned") is False
