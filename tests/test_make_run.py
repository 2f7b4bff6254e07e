"""`make run` starts the site in production mode: scripts/serve.sh run as the Makefile runs it,
then used over real HTTP as a newcomer would (log in with the printed password, open pages)."""

import os
import re
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.browser.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def production_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("make-run")
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "DJANGO_STATIC_ROOT": str(folder / "static"),
        "DJANGO_SECRET_KEY_FILE": str(folder / "secret_key"),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("DJANGO_DEBUG", "DJANGO_HTTPS", "DJANGO_SECRET_KEY", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", "scripts/serve.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"scripts/serve.sh ended:\n{log_path.read_text()}"
            try:
                requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"the site did not start:\n{log_path.read_text()}"
                time.sleep(0.2)
        output = log_path.read_text()
        password = re.search(r"password:\n\s+(\S+)\n", output).group(1)
        yield base, password, folder
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def logged_in(base, password):
    session = requests.Session()
    page = session.get(f"{base}/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        f"{base}/accounts/login/",
        data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/accounts/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:500]
    return session


def test_it_serves_the_login_page_with_hashed_static_files(production_site):
    base, _, _ = production_site
    page = requests.get(f"{base}/accounts/login/", timeout=10)
    assert page.status_code == 200
    stylesheet = re.search(r'href="(/static/chat/chat\.[0-9a-f]{12}\.css)"', page.text)
    assert stylesheet, "static files carry a hash of their content in production"
    css = requests.get(base + stylesheet.group(1), timeout=10)
    assert css.status_code == 200
    assert "max-age=315360000" in css.headers["Cache-Control"]


def test_an_unknown_conversation_shows_the_friendly_404_not_the_debug_page(production_site):
    base, password, _ = production_site
    session = logged_in(base, password)
    for path in (f"/c/{uuid.uuid4()}/", "/no/such/page/"):
        response = session.get(base + path, timeout=10)
        assert response.status_code == 404
        assert "There is nothing here" in response.text
        assert "URLconf" not in response.text and "DEBUG = True" not in response.text
    assert session.get(f"{base}/", timeout=10).status_code == 200


def test_the_generated_secret_key_is_kept_private(production_site):
    _, _, folder = production_site
    key_file = folder / "secret_key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 50


def test_the_makefile_runs_what_this_test_runs():
    """The fixture starts scripts/serve.sh; `make run` must start exactly that."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(
        r"^run: serve-packages local-model-background\n\tHOST=\$\(HOST\) PORT=\$\(PORT\) bash scripts/serve\.sh$",
        makefile,
        re.M,
    )


def planned(target):
    """The commands `make TARGET` would run on a fresh clone (-B: as if nothing were installed).

    Run as its own make, not as a sub-make of `make test` (whose MAKEFLAGS and MAKELEVEL would add
    "Entering/Leaving directory" lines and pass on its flags)."""
    env = {name: value for name, value in os.environ.items() if name not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    command = ["make", "--no-print-directory", "-n", "-B", target]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("target", ["run", "dev"])
def test_a_first_start_installs_only_what_serving_needs_and_builds_the_local_model_meanwhile(target):
    """Neither the Debian packages of the tests nor the test tools, and llama.cpp's compilation (most
    of a first setup) in the background: tests/test_local_model_install.py for what the site shows
    meanwhile."""
    commands = planned(target)
    text = "\n".join(commands)
    assert "pip install --quiet -r requirements.txt" in text
    assert "npm ci" in text
    for absent in ("system-packages.sh", "requirements-dev.txt", "requirements-local.txt", "local-model.sh install"):
        assert absent not in text, f"`make {target}` waits for {absent}"
    background = commands.index("bash scripts/local-model.sh background")
    server = len(commands) - 1
    assert "scripts/serve.sh" in commands[server] or "runserver" in commands[server]
    assert background < server


@pytest.mark.parametrize(
    ("target", "job"),
    [
        ("test", ".venv/bin/python -m pytest"),
        ("bench", ".venv/bin/python -m bench.run"),
        ("run-cluster", "bash scripts/cluster.sh"),
    ],
)
def test_the_tests_and_the_cluster_still_install_everything_first(target, job):
    commands = planned(target)
    text = "\n".join(commands)
    for needed in ("system-packages.sh", "-r requirements-dev.txt", "local-model.sh install", "npm ci"):
        assert needed in text, f"`make {target}` does not run {needed}"
    assert commands.index("bash scripts/local-model.sh install") < commands.index(job)
