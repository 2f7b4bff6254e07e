"""Django's SQLite backend, with this process's writers taking turns on a lock of the process.

SQLite has one writer at a time. A writer that finds the database locked waits in SQLite's busy
handler, which sleeps and tries again (1, 2, 5, 10... up to 100 ms between tries) until its
timeout: nobody wakes it when the lock is free, and a newcomer can take the lock ahead of a
writer that has waited for a second. In a burst of sends, claims and checkpoints (the send
pool's threads and the answer threads all write), the database stood idle between the writers'
sleeps and the last send waited for all the others several times over (docs/benchmarks.md).

Here the process's write transactions (BEGIN IMMEDIATE, the site's transaction mode) and its
writes outside a transaction (an UPDATE in autocommit: a claim, a checkpoint) first take one
lock per database, which the one writing hands to the next waiting as soon as it commits.
SQLite's own lock still decides between processes (a shell, a management command), and its
busy timeout (OPTIONS["timeout"]) bounds the wait for either lock: past it the write fails with
"database is locked", as before, and is retried where it was retried.
"""

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class Writers:
    """The write lock of each database this process opens, by alias (the test run renames the
    file after the first connection is made: the alias stays)."""

    def __init__(self):
        self.locks = {}
        self.guard = threading.Lock()

    def of(self, name):
        with self.guard:
            return self.locks.setdefault(name, threading.Lock())


# One per process, as the database's file is: shared by every thread's connection.
WRITERS = Writers()


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writer = WRITERS.of(self.alias)
        self.holds_writer = False
        self.execute_wrappers.append(self.write_in_turn)

    def take_writer(self):
        timeout = self.settings_dict.get("OPTIONS", {}).get("timeout", 5)
        if not self.writer.acquire(timeout=timeout):
            raise OperationalError("database is locked (by this process's other writers)")

    def _start_transaction_under_autocommit(self):
        self.take_writer()
        self.holds_writer = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self.give_back_writer()
            raise

    def give_back_writer(self):
        if self.holds_writer:
            self.holds_writer = False
            self.writer.release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self.give_back_writer()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self.give_back_writer()

    def _close(self):
        try:
            return super()._close()
        finally:
            self.give_back_writer()

    def write_in_turn(self, execute, sql, params, many, context):
        """A write outside a transaction takes its turn like a transaction does."""
        if self.holds_writer or self.in_atomic_block or not sql.lstrip()[:7].upper().startswith(WRITE_STATEMENTS):
            return execute(sql, params, many, context)
        self.take_writer()
        try:
            return execute(sql, params, many, context)
        finally:
            self.writer.release()
