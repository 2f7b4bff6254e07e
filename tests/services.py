"""Real servers for scale-out tests and local runs: Redis, PostgreSQL, S3 and daphne on loopback.

`running_redis()`, `running_postgres()` and `running_s3()` (moto's server mode) start the real
servers on free loopback ports, each in a temporary folder of its own, and stop them and remove
the folder on exit. The pytest fixtures `redis_server`, `postgres_server` and `s3_server` wrap them
for a test session; `Daphne` runs the site itself in a subprocess against them. A missing binary
fails with a message naming the package to install (`scripts/system-packages.sh` installs the
Debian ones): a scale-out test is never skipped.

Run as a program, this module starts the three servers, runs a command with `DATABASE_URL`,
`REDIS_URL` and the `CHAT_S3_*` settings pointing at them, stops them and exits with the
command's status (`scripts/with-services.sh`):

    python -m tests.services -- .venv/bin/python -m pytest tests -q
"""

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAPHNE = Path(sys.executable).parent / "daphne"
# Tests must not wait on the network: only loopback is ever used, with no proxy in between.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(Exception):
    """A server could not be found, started or reached; the message says what to do."""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready, process, what, log_path, timeout):
    """Poll `ready()` until it is true; fail early with the log if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited with status {process.returncode}:\n{tail(log_path)}")
        if ready():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} was not ready within {timeout} s:\n{tail(log_path)}")


def tail(path, lines=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process, first_signal=signal.SIGTERM, timeout=10):
    """Signal a process, wait for it, and SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(first_signal)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# --- Redis ------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


def redis_binary():
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceError(
            "redis-server is needed (Debian package `redis-server`); run `bash scripts/system-packages.sh`."
        )
    return binary


def redis_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(timeout=20):
    """A redis-server on a free loopback port, without persistence, in a temporary folder."""
    binary = redis_binary()
    folder = Path(tempfile.mkdtemp(prefix="chatsite-redis-"))
    log_path = folder / "redis.log"
    process = None
    try:
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            port = free_port()
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                    + ["--dir", str(folder), "--daemonize", "no"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C meant for the command must not stop it first
                )
            try:
                wait_until(lambda port=port: redis_answers(port), process, "redis-server", log_path, timeout)
                break
            except ServiceError:
                stop_process(process)
                if attempt == 2:
                    raise
        yield RedisServer(port, process)
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)


# --- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen
    database: str = "chatsite"
    user: str = "postgres"

    @property
    def url(self):
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def connect(self, **options):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=self.database, connect_timeout=5, **options
        )


def postgres_binaries():
    """The folder with initdb and postgres: POSTGRES_BIN_DIR, Debian's newest, or the PATH."""
    candidates = [os.environ.get("POSTGRES_BIN_DIR", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path)],
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    raise ServiceError(
        "PostgreSQL's server binaries (initdb, postgres) are needed (Debian package `postgresql`); "
        "run `bash scripts/system-packages.sh`, or set POSTGRES_BIN_DIR."
    )


def postgres_account():
    """PostgreSQL refuses to run as root: as root, its files and processes belong to `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "Running as root, PostgreSQL needs the system user `postgres` (created by the Debian package "
            "`postgresql`); run `bash scripts/system-packages.sh`."
        ) from None


def postgres_answers(port):
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=1):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def running_postgres(timeout=60):
    """A PostgreSQL server on a free loopback port with an empty database `chatsite`.

    Trust authentication on loopback and no fsync: a throwaway server for tests and local runs.
    """
    import psycopg

    binaries = postgres_binaries()
    account = postgres_account()
    as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    folder = Path(tempfile.mkdtemp(prefix="chatsite-postgres-"))
    data = folder / "data"
    log_path = folder / "postgres.log"
    process = None
    try:
        folder.chmod(0o755)  # the postgres account must reach its data folder inside
        data.mkdir(mode=0o700)
        if account:
            os.chown(data, account.pw_uid, account.pw_gid)
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        initdb = subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"]
            + ["--no-sync"],
            env=environment,
            cwd=folder,
            capture_output=True,
            text=True,
            **as_account,
        )
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        for attempt in range(3):
            port = free_port()
            settings = {
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(data),
                "max_connections": "300",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
            options = [item for name, value in settings.items() for item in ("-c", f"{name}={value}")]
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [binaries / "postgres", "-D", data, "-p", str(port), *options],
                    env=environment,
                    cwd=folder,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **as_account,
                )
            try:
                wait_until(lambda port=port: postgres_answers(port), process, "PostgreSQL", log_path, timeout)
                break
            except ServiceError:
                stop_process(process, signal.SIGINT)
                if attempt == 2:
                    raise
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE chatsite")
        yield PostgresServer(port, process)
    finally:
        if process is not None:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
            stop_process(process, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the test session."""
    try:
        with running_redis() as server:
            yield server
    except ServiceError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server with an empty database for the test session."""
    try:
        with running_postgres() as server:
            yield server
    except ServiceError as error:
        pytest.fail(str(error), pytrace=False)


# --- An S3-compatible store -------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's server mode: the S3 API on loopback, with one empty bucket, any credentials taken."""

    port: int
    process: subprocess.Popen
    bucket: str = "chatsite-uploads"
    region: str = "us-east-1"
    access_key_id: str = "chatsite-test"
    secret_access_key: str = "chatsite-test-secret"

    @property
    def endpoint_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self):
        """The site's settings for this store (chatsite/settings.py, "Attachments")."""
        return {
            "CHAT_S3_BUCKET": self.bucket,
            "CHAT_S3_ENDPOINT_URL": self.endpoint_url,
            "CHAT_S3_REGION": self.region,
            "CHAT_S3_ACCESS_KEY_ID": self.access_key_id,
            "CHAT_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self):
        """A boto3 client straight to the store, to look inside it (never through a proxy)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(proxies={}, retries={"max_attempts": 1}),
        )

    @classmethod
    def configured(cls):
        """The store the environment configures (scripts/with-services.sh), or None."""
        if not os.environ.get("CHAT_S3_BUCKET") or not os.environ.get("CHAT_S3_ENDPOINT_URL"):
            return None
        port = int(os.environ["CHAT_S3_ENDPOINT_URL"].rsplit(":", 1)[1].rstrip("/"))
        return cls(
            port,
            None,
            bucket=os.environ["CHAT_S3_BUCKET"],
            region=os.environ.get("CHAT_S3_REGION") or "us-east-1",
            access_key_id=os.environ.get("CHAT_S3_ACCESS_KEY_ID", ""),
            secret_access_key=os.environ.get("CHAT_S3_SECRET_ACCESS_KEY", ""),
        )


def s3_answers(port):
    try:
        status, _, _ = http_get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
    except OSError:
        return False
    return status == 200


@contextlib.contextmanager
def running_s3(timeout=30):
    """moto's S3 server on a free loopback port, with the bucket created; all in memory."""
    try:
        import moto.server  # noqa: F401  (moto[server], requirements-dev.txt)
    except ImportError:
        raise ServiceError("moto[server] is needed for the S3 store: run `make dev-packages`.") from None
    folder = Path(tempfile.mkdtemp(prefix="chatsite-s3-"))
    log_path = folder / "moto.log"
    process = None
    try:
        for attempt in range(3):
            port = free_port()
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    cwd=folder,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_until(lambda port=port: s3_answers(port), process, "moto's S3 server", log_path, timeout)
                break
            except ServiceError:
                stop_process(process)
                if attempt == 2:
                    raise
        server = S3Server(port, process)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """The S3-compatible store of the run (scripts/with-services.sh starts one for the whole
    PostgreSQL and Redis run), or else one started for this test session: never skipped."""
    configured = S3Server.configured()
    if configured is not None:
        yield configured
        return
    try:
        with running_s3() as server:
            yield server
    except ServiceError as error:
        pytest.fail(str(error), pytrace=False)


# --- The site in subprocesses -----------------------------------------------------------------


def site_env(**variables):
    """The environment of a site process: this one's, less the services a run chose (the process
    is given its own), with the given variables set."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith("CHAT_S3_")
    }
    # No model-written titles unless a test asks: each would be one more request to the upstream,
    # taking the scenario queued for the next answer (tests/test_titles.py turns them on).
    env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", PYTHONUNBUFFERED="1", CHAT_GENERATED_TITLES="0")
    env.update({key: str(value) for key, value in variables.items() if value is not None})
    return env


def manage(env, *args, timeout=120):
    """Run `manage.py` with the given environment; its output, or a failure that shows it."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise ServiceError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def http_get(url, headers=None, timeout=5):
    """(status, headers, body) of a GET; error statuses are answers too, redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def migrated_site_env(database, upstream_url, password, **variables):
    """site_env for a site on a new SQLite file `database` answering `test-model` from the test
    upstream at `upstream_url`, migrated, with the account alice (`password`)."""
    env = site_env(
        DATABASE_URL=f"sqlite:///{database}",
        DJANGO_DEBUG="1",
        OPENRESPONSES_BASE_URL=upstream_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model",
        **variables,
    )
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        f"from django.contrib.auth.models import User; User.objects.create_user('alice', password='{password}')",
    )
    return env


class Daphne:
    """`daphne -b 127.0.0.1 -p PORT chatsite.asgi:application` in a subprocess, with its own log."""

    def __init__(self, name, env, log_folder, port=None):
        self.name = name
        self.env = env
        self.port = port or free_port()
        self.log_path = Path(log_folder) / f"daphne-{name}.log"
        self.process = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    @property
    def pid(self):
        return self.process.pid

    @property
    def alive(self):
        return self.process is not None and self.process.poll() is None

    def start(self, timeout=30):
        """Start the server and wait until /healthz answers 200."""
        if not DAPHNE.exists():
            raise ServiceError(f"{DAPHNE} is missing: run `make python-packages`.")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.healthy, self.process, f"daphne {self.name}", self.log_path, timeout)
        return self

    def command(self):
        return [str(DAPHNE), "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"]

    def healthy(self):
        try:
            status, _, _ = http_get(f"{self.url}/healthz", timeout=1)
        except OSError:
            return False
        return status == 200

    def terminate(self, timeout=15):
        """SIGTERM, as a service manager stops it; SIGKILL if it has not exited in time."""
        return stop_process(self.process, signal.SIGTERM, timeout) if self.process else None

    def kill(self):
        """SIGKILL: the process dies at once, as in a crash or power loss."""
        if self.alive:
            self.process.kill()
        return self.process.wait()

    def log(self):
        return tail(self.log_path, 200)


# --- Command line: scripts/with-services.sh ---------------------------------------------------


def no_proxy_with_loopback(value):
    hosts = [host.strip() for host in (value or "").split(",") if host.strip()]
    return ",".join(hosts + [host for host in ("127.0.0.1", "localhost") if host not in hosts])


def main(argv):
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m tests.services -- COMMAND [ARGUMENT...]", file=sys.stderr)
        return 2
    try:
        with running_redis() as redis_server, running_postgres() as postgres_server, running_s3() as s3_server:
            print(
                f"with-services: PostgreSQL at {postgres_server.url}, Redis at {redis_server.url}, "
                f"S3 bucket {s3_server.bucket} at {s3_server.endpoint_url}",
                file=sys.stderr,
                flush=True,
            )
            env = {
                **os.environ,
                "DATABASE_URL": postgres_server.url,
                "REDIS_URL": redis_server.url,
                **s3_server.env,
                # The store is on loopback: never through a proxy the environment may name.
                "NO_PROXY": no_proxy_with_loopback(os.environ.get("NO_PROXY") or os.environ.get("no_proxy")),
            }
            env["no_proxy"] = env["NO_PROXY"]
            command = subprocess.Popen(argv, env=env)

            def forward(signal_number, frame):
                if command.poll() is None:
                    command.send_signal(signal_number)

            # Ctrl-C reaches the command from the terminal already (the servers have sessions of
            # their own); once it has exited, the servers are stopped below.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, forward)
            signal.signal(signal.SIGHUP, forward)
            return command.wait()
    except ServiceError as error:
        print(f"with-services: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
