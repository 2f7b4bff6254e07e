"""The process's runtime: everything one server process keeps for as long as it lives.

- `worker`: the stream worker (chat/answering/), or None where none runs (a shell, a management
  command, a test without the `worker` fixture);
- the relays, one per event loop (chat/relay.py), which hear this process's stops too;
- the synchronous Redis client (with REDIS_URL): shared snapshots and stops to other processes;
- `local_model`: the local model's service (chat/localmodel/service.py), whose thread starts
  with its first request;
- `open_sockets`: open sockets per user in this process, a bound per process (docs/security.md);
- `sweeper`: the periodic sweep of uploads never sent (chat/upload_sweep.py), or None where none
  runs.
- the database pool (`database_pool()`): CHAT_SEND_THREADS threads for the database work of the
  sockets' sends and session checks, so that a burst of sends does not queue behind every other
  socket's database calls on asgiref's one thread-sensitive thread (docs/benchmarks.md).

It is built explicitly at server start: chatsite/asgi.py calls `serve_with_daphne`, which builds
it and starts its worker once daphne's reactor runs. `current()` only looks: it never starts a worker, a thread or a
connection, so that code run from a shell (deactivating a user, say) works on the rows alone.

Tests swap it as Channels' layer manager lets them swap a layer: `install(runtime)` makes a runtime
the process's and returns the one before, to be installed again afterwards (tests/conftest.py
gives every test a fresh one; its `worker` fixture starts that runtime's worker).
"""

import asyncio
import collections
import logging
import signal
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import Error, connection, transaction

from chat.answering.worker import StreamWorker, close_connections_of
from chat.localmodel.service import LocalModelService
from chat.models import Message
from chat.relay import Relay, publish_stops, read_shared_snapshot
from chat.upload_sweep import UploadSweeper

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self):
        self.worker = None
        self.sweeper = None
        self.local_model = LocalModelService()
        self.open_sockets = collections.Counter()
        self._relays = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._redis = None
        self._database_pool = None
        self._stopping = False

    # --- the worker -------------------------------------------------------------------------

    def start_worker(self, threads=None, loop=None):
        """Start this process's worker: its threads, its row among the server processes, and its
        stops heard through the relays. Synchronous code only (it writes to the database)."""
        with self._lock:
            if self.worker is not None:
                return self.worker
            self.worker = StreamWorker(self, threads)
            relays = list(self._relays.values())
        for relay in relays:
            relay.listen_for_stops(self.worker.id, self.worker.notice_stops)
        if loop is not None:
            self.worker.loop = loop
            self.relay_for(loop)
        return self.worker

    def close(self):
        """Stop the worker's threads, the sweeper's, the database pool's and the local model's
        (tests; a server saves answers first)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()
        with self._lock:
            pool, self._database_pool = self._database_pool, None
        if pool is not None:
            close_connections_of(pool, settings.CHAT_SEND_THREADS, timeout=5)
            pool.shutdown(wait=False, cancel_futures=True)
        self.stop_sweeper()
        self.local_model.close()

    # --- the upload sweep -------------------------------------------------------------------

    def start_sweeper(self):
        """Start this process's periodic sweep of uploads never sent (CHAT_UPLOAD_SWEEP_SECONDS;
        0: none); the sweeper, or None."""
        with self._lock:
            if self.sweeper is None and settings.CHAT_UPLOAD_SWEEP_SECONDS > 0:
                self.sweeper = UploadSweeper().start()
            return self.sweeper

    def stop_sweeper(self):
        with self._lock:
            sweeper, self.sweeper = self.sweeper, None
        if sweeper is not None:
            sweeper.stop()

    # --- the database pool ------------------------------------------------------------------

    def database_pool(self):
        """The sends' bounded pool of database threads (see the module docstring). Each thread
        keeps its own connection, as Django has it: on PostgreSQL from the connection pool when
        DATABASE_POOL is set (docs/deploy.md); on SQLite the writes take turns on the database's
        lock (IMMEDIATE transactions), as the answer threads' do."""
        with self._lock:
            if self._database_pool is None:
                self._database_pool = ThreadPoolExecutor(settings.CHAT_SEND_THREADS, thread_name_prefix="send-database")
            return self._database_pool

    # --- relays and Redis -------------------------------------------------------------------

    def relay_for(self, loop):
        """The relay of an event loop (daphne has one; tests have one per test), from any thread."""
        with self._lock:
            relay = self._relays.get(loop)
            if relay is not None:
                return relay
            relay = self._relays[loop] = Relay(loop)
            worker = self.worker
        if worker is not None:
            relay.listen_for_stops(worker.id, worker.notice_stops)
        return relay

    def redis(self):
        """The synchronous Redis client (REDIS_URL set); it connects on its first command."""
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(settings.REDIS_URL)
            return self._redis

    def read_snapshot(self, message_id):
        """`{seq, status, text, reasoning, refusal}` of an answer in flight, or None before its
        first flush: from its job when this process generates it, else from Redis."""
        job = self.worker.job(message_id) if self.worker is not None else None
        if job is not None:
            return job.snapshot()
        if settings.REDIS_URL:
            return read_shared_snapshot(self.redis(), message_id)
        return None

    # --- stops ------------------------------------------------------------------------------

    def request_stop(self, messages):
        """Ask the answers among `messages` (a Message QuerySet) still being written to stop, in
        whichever process they are generated; returns their ids.

        From any thread of any process, inside a transaction or not. The request is recorded on
        the rows (MessageQuerySet.request_stop), the durable record the generating process's
        heartbeat finds; this process's own jobs are told at once, the other processes through
        their stop channels (chat/relay.py), at commit. Nothing of the answers' work happens
        here: their own threads save them as cancelled, with their text so far, and tell the tabs.
        """
        rows = list(messages.unfinished().values_list("pk", "worker"))
        ids = [str(pk) for pk, _ in rows]
        if not ids:
            return ids
        told = []
        if connection.in_atomic_block:
            transaction.on_commit(lambda: self._tell_stops(rows), robust=True)
        else:
            told = self._tell_stops(rows)
        try:
            Message.objects.filter(pk__in=ids).request_stop()
        except Error:
            if connection.in_atomic_block:
                raise
            # Outside a transaction a dropped connection is closed here, for the caller's next
            # query: the cleanup of channels' database_sync_to_async may look at another
            # context's connections.
            connection.close_if_unusable_or_obsolete()
            if len(told) < len(ids):
                raise
            # This process generates all of them and was told: they stop without the record.
            logger.warning("Could not record the stop of answers %s; this process stops them", ", ".join(ids))
        return ids

    def _tell_stops(self, rows):
        """Tell the generating processes; the ids this process's own worker was told."""
        worker = self.worker
        told = worker.notice_stops([str(pk) for pk, _ in rows]) if worker is not None else []
        elsewhere = collections.defaultdict(list)
        for pk, worker_id in rows:
            if str(pk) not in told and worker_id is not None:
                elsewhere[worker_id].append(pk)
        if elsewhere and settings.REDIS_URL:
            try:
                publish_stops(self.redis(), elsewhere)
            except Exception:
                logger.warning("Could not publish stops; the generating processes find them", exc_info=True)
        return told

    # --- life with daphne -------------------------------------------------------------------

    def tie_to(self, reactor):
        """Tie the worker to daphne's life (see `serve_with_daphne`)."""

        def start():
            loop = asyncio.get_event_loop()  # daphne's, running: this is called on its thread
            starter = threading.Thread(
                target=self._start_on_server, args=(loop,), name="answer-worker-start", daemon=True
            )
            starter.start()
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, lambda *args: reactor.callFromThread(self._stop_gracefully, reactor))

        reactor.callWhenRunning(start)
        # A stop that did not come through the signals above still saves the answers.
        reactor.addSystemEventTrigger("before", "shutdown", self._interrupt_answers)

    def _start_on_server(self, loop):
        """Start the worker, trying again while it cannot (the database unavailable at start):
        sends are refused as unavailable until it runs."""
        wait, tries = 0.5, 0
        while not self._stopping:
            tries += 1
            try:
                self.start_worker(loop=loop)
            except Exception:
                # Said once in full; the tries after are debug lines, so that a server whose
                # database stays away does not fill its log (or the pipe it writes to).
                log = logger.exception if tries == 1 else logger.debug
                log("The answer worker could not start; trying again (try %s)", tries, exc_info=True)
                time.sleep(wait)
                wait = min(wait * 2, 30.0)
                continue
            if tries > 1:
                logger.info("The answer worker started after %s tries", tries)
            self.start_sweeper()
            return

    def _interrupt_answers(self):
        if self.worker is not None:
            self.worker.shutdown()

    def _stop_gracefully(self, reactor):
        """Save the answers in a thread (the ORM may not run on the loop), give the loop a moment
        to deliver their message.done frames, then stop the reactor."""
        if self._stopping:
            return
        self._stopping = True

        def save_then_stop():
            try:
                if self.worker is not None:
                    self.worker.interrupt_all()
            finally:
                try:
                    # Between two batches of a sweep: no deleted row is left with its file stored.
                    self.stop_sweeper()
                finally:
                    reactor.callFromThread(reactor.callLater, 0.5, reactor.stop)

        threading.Thread(target=save_then_stop, name="answer-shutdown").start()


class _Installed:
    """The process's runtime: the one installed, or an idle one built on first look."""

    def __init__(self):
        self.runtime = None
        self.lock = threading.Lock()


_installed = _Installed()


def serve_with_daphne():
    """Build the process's runtime and tie it to daphne's life; the runtime, or None outside
    daphne (tools that import the ASGI application get no runtime from it).

    The worker starts as soon as the reactor runs (so a restarted server reaps the answers its
    previous life left unfinished without waiting for a browser), and on SIGTERM or SIGINT every
    answer in flight is saved as interrupted and the browsers are told before the server stops.
    Call at import of the ASGI application, before daphne's server registers its own shutdown
    trigger (which cancels every consumer): ours must run first.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return None
    from twisted.internet import reactor

    with _installed.lock:
        # Kept if one is installed already: a test's, in a test process that imported Twisted
        # (its reactor then never runs, and nothing starts).
        if _installed.runtime is None:
            _installed.runtime = Runtime()
        runtime = _installed.runtime
    runtime.tie_to(reactor)
    return runtime


def current():
    """The process's runtime; never starts anything (see the module docstring)."""
    with _installed.lock:
        if _installed.runtime is None:
            _installed.runtime = Runtime()
        return _installed.runtime


def install(runtime):
    """Make `runtime` the process's and return the one before (None if none was): the server at
    start, and tests, which install the one before again when they are done."""
    with _installed.lock:
        previous, _installed.runtime = _installed.runtime, runtime
        return previous
