"""The site under test: its environment, accounts, daphne processes, and what /proc says of them.

The servers are the real thing (`daphne chatsite.asgi:application`, tests/services.py) with the
production settings (DJANGO_DEBUG=0 over plain HTTP); only the database benchmark runs daphne
through bench/serve.py, which counts the SQL statements the process executes.
"""

import json
import os
import sys
import time
from pathlib import Path

import requests

from tests.services import Daphne, manage, site_env

PASSWORD = "bench password, long enough"
SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdefghijklmnopqrstuvwxyz"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bench_env(folder, upstream_url, database_url=None, redis_url=None, **variables):
    """The environment of a benchmarked server; every setting that differs from the defaults is here."""
    settings = {
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "0",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "DJANGO_STATIC_ROOT": str(Path(folder) / "static"),
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url or f"sqlite:///{Path(folder) / 'db.sqlite3'}",
        "REDIS_URL": redis_url,
        "OPENRESPONSES_BASE_URL": upstream_url,
        "OPENRESPONSES_API_KEY": "sk-bench",
        "OPENRESPONSES_MODELS": "bench",
        "OPENRESPONSES_TIMEOUT": "120",
        # Answers are not queued: a worker thread for each concurrent answer.
        "CHAT_WORKER_THREADS": "320",
        # Every benchmark user sends several messages a minute.
        "CHAT_SENDS_PER_MINUTE": "0",
        "LOCAL_MODEL_ENABLED": "0",
        # A title after each first answer would be one more request to the timed upstream, which
        # plays the measured streams only.
        "CHAT_GENERATED_TITLES": "0",
    }
    settings.update(variables)
    return site_env(**settings)


SHOWN_SETTINGS = (
    "DJANGO_DEBUG",
    "DATABASE_URL",
    "DATABASE_CONN_MAX_AGE",
    "DATABASE_POOL",
    "DATABASE_POOL_MAX_SIZE",
    "CHAT_SEND_THREADS",
    "REDIS_URL",
    "CHAT_WORKER_THREADS",
    "CHAT_FLUSH_INTERVAL",
    "CHAT_CHECKPOINT_INTERVAL",
    "CHAT_HEARTBEAT_INTERVAL",
    "CHAT_SENDS_PER_MINUTE",
    "LOCAL_MODEL_ENABLED",
)


def shown_settings(env):
    """The settings worth printing next to a figure (database passwords are not used here)."""
    defaults = {"CHAT_FLUSH_INTERVAL": "0.03 (default)", "CHAT_CHECKPOINT_INTERVAL": "1.0 (default)"}
    shown = {}
    for name in SHOWN_SETTINGS:
        value = env.get(name) or defaults.get(name)
        if value:
            if name == "DATABASE_URL":
                value = "PostgreSQL" if value.startswith("postgres") else "SQLite (file)"
            if name == "REDIS_URL":
                value = "redis-server on loopback"
            shown[name] = value
    return shown


def prepare_database(env, users):
    """Migrate, create `users` accounts, and return their session cookies.

    The first account logs in later through the login form, as a browser does; the others get a
    session written straight into the database, which costs no password hashing.
    """
    manage(env, "migrate", "--noinput")
    script = f"""
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
User = get_user_model()
keys = []
with transaction.atomic():
    first, created = User.objects.get_or_create(username="bench-0")
    if created:
        first.set_password({PASSWORD!r})
        first.save()
    for number in range(1, {users}):
        user, created = User.objects.get_or_create(username=f"bench-{{number}}")
        if created:
            user.set_unusable_password()
            user.save()
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
print("SESSIONS " + json.dumps(keys))
"""
    output = manage(env, "shell", "-c", script)
    line = next(line for line in output.splitlines() if line.startswith("SESSIONS "))
    return json.loads(line.removeprefix("SESSIONS "))


def log_in(server, username="bench-0", password=PASSWORD):
    """Log in through the site's login form, as a browser does; the session key."""
    http = requests.Session()
    http.trust_env = False
    http.get(f"{server.url}/accounts/login/", timeout=10).raise_for_status()
    response = http.post(
        f"{server.url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        headers={"Referer": f"{server.url}/accounts/login/"},
        allow_redirects=False,
        timeout=10,
    )
    if response.status_code != 302:
        raise RuntimeError(f"login failed with HTTP {response.status_code}")
    return http.cookies["sessionid"]


class Server(Daphne):
    """A daphne process of the site; `instrumented` runs it through bench/serve.py."""

    def __init__(self, name, env, log_folder, instrumented=False):
        super().__init__(name, env, log_folder)
        self.instrumented = instrumented

    def start(self, timeout=60):
        return super().start(timeout)

    def command(self):
        if not self.instrumented:
            return super().command()
        return [
            sys.executable,
            "-m",
            "bench.serve",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "chatsite.asgi:application",
        ]

    def stop(self):
        if self.alive:
            self.terminate()


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Peak RSS of some processes, sampled every `interval` seconds from a thread."""

    def __init__(self, pids, interval=0.05):
        import threading

        self.pids = list(pids)
        self.interval = interval
        self.peak = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], rss_bytes(pid))
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def collect_static(env):
    manage(env, "collectstatic", "--noinput", timeout=300)


def wait_for(condition, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
