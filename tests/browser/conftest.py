"""A live site for browser tests: the real daphne server in a subprocess, a loopback upstream in
this process, and Chromium driven by Playwright.

The server runs in its own process with its own SQLite file, so these tests never use
pytest-django's database fixtures; they see the site only through the browser, as a person would.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent.parent
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # A page answered through Playwright's router (the CSP test adds a header that way) counts as
    # a public address, and Chromium would then refuse its websocket to the loopback server.
    "--disable-features=LocalNetworkAccessChecks",
]
# Where screenshots go; `CHAT_SCREENSHOTS=docs/screenshots` refreshes the ones in the docs.
SCREENSHOTS = ROOT / os.environ.get("CHAT_SCREENSHOTS", "test-artifacts/screenshots")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process, log_path, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"The server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"The server did not listen on port {port} within {timeout} s:\n{log_path.read_text()}")


def manage(env, *args):
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")


BROWSER_TIMEOUT_MS = int(os.environ.get("BROWSER_TIMEOUT_MS", "30000"))


@pytest.fixture(scope="session")
def upstream_server():
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server):
    """The shared upstream with nothing left queued by an earlier test."""
    with upstream_server.lock:
        upstream_server.scenarios.clear()
    yield upstream_server


def serve_site(folder, **variables):
    """Run the site with daphne on a free loopback port, with the users alice and root (staff);
    yields its URL. `variables` set (or, as None, unset) environment variables."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        # Every test sends as alice within about a minute; the send rate limit has tests of its own.
        "CHAT_SENDS_PER_MINUTE": "1000",
        # No model-written titles unless a test asks (tests/browser/test_titles.py): each would be
        # one more request to the shared upstream, taking the scenario queued for the next answer.
        "CHAT_GENERATED_TITLES": "0",
    }
    for name in ("REDIS_URL", "OPENRESPONSES_BASE_URL", "OPENRESPONSES_API_KEY", "OPENRESPONSES_MODELS"):
        env.pop(name, None)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        f"from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user('alice', 'alice@example.com', {PASSWORD!r}); "
        f"get_user_model().objects.create_superuser('root', 'root@example.com', {PASSWORD!r})",
    )
    log_path = folder / "daphne.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_budgeted_site(upstream_server, folder, budget):
    """A site of its own for the loopback upstream's one model, with a daily budget of `budget`
    tokens a user (days in UTC)."""
    yield from serve_site(
        folder,
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model",
        OPENRESPONSES_TIMEOUT="10",
        LOCAL_MODEL_ENABLED="0",
        DJANGO_TIME_ZONE="UTC",
        CHAT_DAILY_TOKEN_BUDGET=str(budget),
    )


@pytest.fixture(scope="session")
def live_site(upstream_server, tmp_path_factory):
    """The site talking to the loopback upstream's models."""
    yield from serve_site(
        tmp_path_factory.mktemp("site"),
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model,other-model",
        OPENRESPONSES_TIMEOUT="10",
        # One answer at a time, so a test can see an answer wait in the queue.
        CHAT_WORKER_THREADS="1",
        # Only the loopback upstream's models, whether or not the local model is installed here.
        LOCAL_MODEL_ENABLED="0",
    )


def chromium_path():
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# Module-scoped, not session-scoped: while the sync API runs, its event loop counts as running in
# this thread, which would break every asyncio test collected after the browser tests.
@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if not executable:
        # Never a skip: a missing browser must not pass as a green run, in CI or anywhere else.
        where = (
            "CI must install it" if os.environ.get("CI") == "true" else "install it or deselect with -m 'not browser'"
        )
        pytest.fail(f"Chromium is needed for browser tests (Debian package `chromium`); {where}.")
    from playwright.sync_api import expect, sync_playwright

    # expect() has a timeout of its own (5 s) that the context's default does not change: on a
    # loaded machine a Stop button or a frame may take longer than that to appear.
    expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def site_url(live_site):
    """The site the browser opens; a module may override it to use another server."""
    return live_site


@pytest.fixture
def context(browser, site_url):
    context = browser.new_context(base_url=site_url, viewport={"width": 1200, "height": 800})
    # Every wait is for an event (an element, a status, a frame); the bound is only how long a
    # loaded machine may take, so it is generous. BROWSER_TIMEOUT_MS changes it.
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context):
    """A fresh browser tab (no session yet)."""
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page, username="alice", password=PASSWORD):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"^https?://[^/]+/$"))


def composer(page):
    return page.get_by_role("textbox", name="Message")


def send(page, text):
    box = composer(page)
    box.fill(text)
    box.press("Enter")


def answers(page):
    return page.get_by_role("article", name="Assistant message")


def chunks(text, size=12):
    return [text[index : index + size] for index in range(0, len(text), size)]


def sidebar(page):
    return page.get_by_role("navigation", name="Conversations")


def row_action(page, title, action):
    """Opens the row's menu with the pointer and picks `action`."""
    link = sidebar(page).get_by_role("link", name=title, exact=True)
    link.hover()
    sidebar(page).get_by_role("button", name=f"Actions for {title}").click()
    page.get_by_role("menu", name=f"Actions for {title}").get_by_role("menuitem", name=action, exact=True).click()


def wait_until_idle(page):
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=3 * BROWSER_TIMEOUT_MS)


@pytest.fixture
def chat(page):
    """A tab logged in as alice, on a new chat, its websocket connected."""
    log_in(page)
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    return page


@pytest.fixture(scope="session")
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
