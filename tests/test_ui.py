"""The try-it page in real headless Chromium against the shared live server (screenshot in artifacts/)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

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


def test_page_and_assets_are_served_without_token(live_server) -> None:
    html = httpx.get(f"{live_server.url}/ui")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{live_server.url}/ui/assets/{asset}").status_code == 200
    assert "http" not in html.text.replace("http-equiv", "")  # no CDN: everything is local


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


def test_model_output_is_never_rendered_as_html(live_server, page) -> None:
    """The page inserts answers with textContent: markup in a reply stays text."""
    page.goto(f"{live_server.url}/ui")
    page.evaluate(
        """() => { window.pwned = false;
                   show({intents: [{name: "<img src=x onerror='window.pwned=true'>", args: ["<b>x</b>"]}],
                         raw: "<script>window.pwned=true</script>", confidence: 0.5, latency_ms: 12}); }"""
    )
    assert page.locator("#result img, #result b, #result script").count() == 0
    assert "<script>" in page.text_content("#raw")
    assert page.evaluate("window.pwned") is False
