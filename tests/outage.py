"""A database unavailable for a while, for real, and the worker's retries as they are logged.

`DatabaseOutage` takes a real lock in a connection of its own, on either backend the suite runs on:

- SQLite: that connection holds the write lock (`BEGIN IMMEDIATE`); the site's writes wait their
  busy timeout (made short by `short_busy_timeout`) and fail with "database is locked", as when a
  long transaction or a backup holds the file.
- PostgreSQL: that connection holds `LOCK TABLE chat_message IN EXCLUSIVE MODE` (reads go on, writes
  to messages wait), and every backend left waiting on a lock is terminated, as a restart of the
  server does: its statement fails with a dropped connection.

`RetryLog` collects the `database_retry` records chat.answering logs, so that a test ends the outage
once the worker has retried (an event), not after a guessed delay.
"""

import asyncio
import logging
import sqlite3
import threading

import pytest
from django.db import connection


class DatabaseOutage:
    def __init__(self):
        self.vendor = connection.vendor
        self.settings = dict(connection.settings_dict)
        self._holder = None
        self._terminator = None
        self._ending = threading.Event()
        self.terminated = 0

    def __enter__(self):
        self.begin()
        return self

    def __exit__(self, *exc_info):
        self.end()

    def begin(self):
        if self.vendor == "sqlite":
            self._holder = sqlite3.connect(self.settings["NAME"], isolation_level=None, timeout=30)
            self._holder.execute("BEGIN IMMEDIATE")
        elif self.vendor == "postgresql":
            self._holder = self._postgres()
            self._holder.execute("LOCK TABLE chat_message IN EXCLUSIVE MODE")
            self._terminator = threading.Thread(target=self._terminate_waiters, name="outage", daemon=True)
            self._terminator.start()
        else:
            raise NotImplementedError(self.vendor)

    def end(self):
        self._ending.set()
        if self._terminator is not None:
            self._terminator.join(10)
        if self._holder is not None:
            self._holder.rollback()
            self._holder.close()
            self._holder = None

    def _postgres(self, autocommit=False):
        import psycopg

        return psycopg.connect(
            host=self.settings["HOST"] or None,
            port=self.settings["PORT"] or None,
            user=self.settings["USER"] or None,
            password=self.settings["PASSWORD"] or None,
            dbname=self.settings["NAME"],
            autocommit=autocommit,
        )

    def _terminate_waiters(self):
        holder_pid = self._holder.info.backend_pid
        with self._postgres(autocommit=True) as terminator:
            while not self._ending.wait(0.02):
                killed = terminator.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)"
                    " AND wait_event_type = 'Lock'",
                    (holder_pid,),
                ).fetchall()
                self.terminated += len(killed)


class RetryLog(logging.Handler):
    """The `database_retry` records of chat.answering: what was retried, for which answer."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.seen = []  # (what, message id or None)
        self._condition = threading.Condition()

    def emit(self, record):
        what = getattr(record, "database_retry", None)
        if what is None:
            return
        with self._condition:
            self.seen.append((what, getattr(record, "message_id", None)))
            self._condition.notify_all()

    def count(self, what, message_id=None):
        """Retries of `what`, for `message_id` if given."""
        with self._condition:
            return sum(
                1
                for seen_what, seen_id in self.seen
                if seen_what == what and (message_id is None or seen_id == str(message_id))
            )

    def wait_sync(self, what, message_id=None, timeout=60, more_than=0):
        with self._condition:
            return self._condition.wait_for(lambda: self.count(what, message_id) > more_than, timeout)

    async def wait(self, what, message_id=None, timeout=60, more_than=0):
        """Until the worker has retried `what` (for `message_id`) more than `more_than` times."""
        retried = await asyncio.get_running_loop().run_in_executor(
            None, self.wait_sync, what, message_id, timeout, more_than
        )
        assert retried, f"the worker did not retry the {what} within {timeout} s (retries seen: {self.seen})"


@pytest.fixture
def retries():
    log = RetryLog()
    logger = logging.getLogger("chat.answering")
    logger.addHandler(log)
    yield log
    logger.removeHandler(log)


@pytest.fixture
def short_busy_timeout():
    """SQLite writers wait 20 s for a lock before they fail; here 1 s, so that a retry comes soon.

    Connections opened from now on take it: each thread opens its own, and the test's worker and
    database pool have threads of their own. asgiref's one thread outlives the tests, and its
    connection persists (CONN_MAX_AGE): it is closed before and after, so it opens with the
    timeout of the test it serves.
    """
    options = connection.settings_dict.get("OPTIONS", {})
    before = options.get("timeout")
    if connection.vendor == "sqlite":
        close_orm_thread_connections()
        options["timeout"] = 1
    yield
    if connection.vendor == "sqlite":
        close_orm_thread_connections()
        options["timeout"] = before


def close_orm_thread_connections():
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
