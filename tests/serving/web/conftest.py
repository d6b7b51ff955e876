"""The web application served for real (uvicorn on a loopback port, in a thread) with the tiny model,
and Debian's chromium driven headless through Playwright. Without chromium the tests skip locally and
fail in CI (service_unavailable), like the other service-backed tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from tests.agents.scenarios.conftest import People
from tests.conftest import service_unavailable
from tests.serving.conftest import open_api

CHROMIUM = "/usr/bin/chromium"
# Screenshots of each page: artefacts under var/ (ignored by git), for the README and for people.
SCREENSHOTS = Path(__file__).resolve().parents[3] / "var" / "screenshots"


@dataclass
class WebApp:
    url: str
    people: People
    services: object
    client: object  # a TestClient on the same app, for API set-up calls with bearer tokens


def _chromium() -> str:
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not found:
        service_unavailable("chromium is not installed (apt-get install chromium)")
    return found


@contextmanager
def serving(client) -> Iterator[str]:
    """The app behind ``client`` served by uvicorn on a free loopback port, for the browser: its URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the web application did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


@contextmanager
def hosted(client, services, people: People) -> Iterator[WebApp]:
    """The app of an opened API (its TestClient, services and people) served for the browser; the client
    and the services are closed afterwards."""
    try:
        with serving(client) as url:
            yield WebApp(url, people, services, client)
    finally:
        client.__exit__(None, None, None)
        services.close()


@pytest.fixture(scope="module")
def web_app(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Iterator[WebApp]:
    data = tmp_path_factory.mktemp("web")
    with hosted(*open_api(data, f"sqlite:///{data / 'web.db'}", tiny_model)) as app:
        yield app


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser, web_app: WebApp):
    """A fresh browser profile (no cookies), English, a laptop-sized window."""
    made = browser.new_context(base_url=web_app.url, locale="en-GB", viewport={"width": 1200, "height": 900})
    made.set_default_timeout(30_000)
    yield made
    made.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(context, token: str, path: str = "/app/"):
    page = context.new_page()
    page.goto(path)
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()
    page.wait_for_load_state("networkidle")
    return page
