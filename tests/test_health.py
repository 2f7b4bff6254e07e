"""/healthz and /readyz for load balancers, and the production settings (DJANGO_DEBUG=0)."""

import json
import re
import secrets
import stat
import subprocess
import sys

import pytest

from tests.services import ROOT, Daphne, free_port, http_get, manage, site_env

PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "LOCAL_MODEL_ENABLED": "0",
}


# Every deployment warning counts as a failure.
DEPLOYMENT_CHECKS = ("--deploy", "--fail-level", "DEBUG")


def manage_check(env, *options):
    """`manage.py check` in a process of its own, so that the settings are read from `env`."""
    return subprocess.run(
        [sys.executable, "manage.py", "check", *options], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_liveness_answers_without_touching_the_database_or_redis(client):
    """No `db` mark: any database access here would fail the test."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_readiness_answers_ok_when_the_database_cache_and_channel_layer_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "cache": "ok", "channel_layer": "ok"},
    }
    assert "no-cache" in response["Cache-Control"]


def test_readiness_names_everything_that_is_down_with_a_503(tmp_path):
    """A real server whose PostgreSQL and Redis do not answer: alive, but not ready."""
    closed = free_port()
    env = site_env(
        DJANGO_DEBUG="1",
        DATABASE_URL=f"postgres://chat@127.0.0.1:{closed}/chat",
        REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        LOCAL_MODEL_ENABLED="0",
    )
    server = Daphne("down", env, tmp_path).start()
    try:
        status, _, body = http_get(f"{server.url}/readyz", timeout=15)
        assert status == 503, body
        answer = json.loads(body)
        assert answer["status"] == "unavailable"
        assert answer["failed"] == ["database", "cache", "channel_layer"]
        assert all(result.startswith(("failed: ", "timeout")) for result in answer["checks"].values())
        assert str(closed) not in body.decode(), "the answer must not name hosts or ports"
        assert http_get(f"{server.url}/healthz")[0] == 200
    finally:
        server.terminate()


def test_production_settings_pass_the_deployment_checks():
    env = site_env(**PRODUCTION, DATABASE_URL="postgres://chat:secret@db.internal/chat", REDIS_URL="redis://redis/0")
    result = manage_check(env, *DEPLOYMENT_CHECKS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert result.stderr == ""


def test_production_without_a_secret_key_starts_with_a_generated_private_one(tmp_path):
    """No key is committed: unset, one is generated into a 0600 file, and the deployment checks
    find nothing to say about it (chatsite/secret_key.py; tests/test_secret_key.py for the rest)."""
    key_file = tmp_path / "var" / "secret_key"
    env = site_env(**{**PRODUCTION, "DJANGO_SECRET_KEY": "", "DJANGO_SECRET_KEY_FILE": key_file})
    result = manage_check(env, *DEPLOYMENT_CHECKS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 50


@pytest.mark.parametrize("problem", ["readable by others", "unwritable location"])
def test_production_refuses_to_start_with_a_key_file_it_cannot_trust_or_write(tmp_path, problem):
    if problem == "readable by others":
        key_file = tmp_path / "secret_key"
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o644)
        expected = "can be read by other accounts"
    else:
        (tmp_path / "a-file").write_text("")
        key_file = tmp_path / "a-file" / "secret_key"
        expected = "could not be created"
    env = site_env(**{**PRODUCTION, "DJANGO_SECRET_KEY": "", "DJANGO_SECRET_KEY_FILE": key_file})
    result = manage_check(env)
    assert result.returncode != 0
    assert f"The secret key file {key_file} {expected}" in result.stderr
    assert "set DJANGO_SECRET_KEY, or DJANGO_SECRET_KEY_FILE" in result.stderr


def test_production_serves_hashed_static_files_over_https_only(tmp_path):
    """DJANGO_DEBUG=0 behind a TLS proxy: hashed, compressed static files, secure cookies, HSTS."""
    env = site_env(
        **PRODUCTION,
        DJANGO_BEHIND_TLS_PROXY="1",
        DJANGO_STATIC_ROOT=tmp_path / "static",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    manage(env, "collectstatic", "--noinput")
    manage(env, "migrate", "--noinput")
    server = Daphne("production", env, tmp_path).start()
    through_tls = {"X-Forwarded-Proto": "https"}
    try:
        status, headers, body = http_get(f"{server.url}/accounts/login/", headers=through_tls)
        assert status == 200
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        csrf_cookie = next(value for value in headers.get_all("Set-Cookie") if value.startswith("csrftoken="))
        assert "Secure" in csrf_cookie
        stylesheet = re.search(r'href="(/static/chat/chat\.[0-9a-f]{12}\.css)"', body.decode())
        assert stylesheet, "the page does not link the hashed stylesheet"

        status, headers, _ = http_get(
            f"{server.url}{stylesheet[1]}", headers={**through_tls, "Accept-Encoding": "gzip"}
        )
        assert status == 200
        assert headers["Cache-Control"] == "max-age=315360000, public, immutable"
        assert headers["Content-Encoding"] == "gzip"

        status, headers, _ = http_get(f"{server.url}/accounts/login/")
        assert status == 301
        assert headers["Location"] == f"https://127.0.0.1:{server.port}/accounts/login/"
        # Load balancers probe each process over plain HTTP.
        assert http_get(f"{server.url}/healthz")[0] == 200
        assert http_get(f"{server.url}/readyz")[0] == 200
    finally:
        server.terminate()
