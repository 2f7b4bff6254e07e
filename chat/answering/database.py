"""The worker's threads and an unavailable database: what is worth trying again, and how.

Errors of a database that is unavailable for a while (SQLite locked, PostgreSQL restarting, a
connection dropped) pass by waiting; others (data the database refuses, a bug) do not. Every retry
is logged with `database_retry` (what was retried) and `message_id` on the record, which the
outage tests wait for (tests/outage.py).
"""

import logging
import time

from django.conf import settings
from django.db import Error, InterfaceError, OperationalError, close_old_connections

logger = logging.getLogger(__name__)

TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_FIRST_WAIT = 0.1
RETRY_LONGEST_WAIT = 5.0


class Interrupted(Exception):
    """A wait between two tries of a database write was ended by a stop."""


def reset_connections():
    """Close this thread's broken or expired database connections; the next query opens a new one."""
    try:
        close_old_connections()
    except Error:
        logger.debug("Closing a broken database connection failed", exc_info=True)


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def log_retry(what, message_id, error, wait, tries=None):
    then = f"try {tries + 1}" if tries is not None else "trying again"
    logger.warning(
        "The %s of answer %s failed (%s: %s); %s in %.1f s",
        what,
        message_id,
        type(error).__name__,
        first_line(error),
        then,
        wait,
        extra={"database_retry": what, "message_id": message_id},
    )


def retry_database(operation, what, message_id, interrupt=None):
    """`operation()`, tried again with backoff while the database is unavailable.

    Gives up after CHAT_DATABASE_RETRY_SECONDS and raises the last error. Raises Interrupted when
    the Event `interrupt` is set during a wait. For a worker's own threads, outside any
    transaction: a failed try's connection is closed, and the next try opens a new one.
    """
    deadline = time.monotonic() + settings.CHAT_DATABASE_RETRY_SECONDS
    wait = RETRY_FIRST_WAIT
    tries = 0
    while True:
        tries += 1
        try:
            return operation()
        except TRANSIENT_DATABASE_ERRORS as error:
            if time.monotonic() + wait > deadline:
                raise
            log_retry(what, message_id, error, wait, tries)
            reset_connections()
            if interrupt is None:
                time.sleep(wait)
            elif interrupt.wait(wait):
                raise Interrupted from error
            wait = min(wait * 2, RETRY_LONGEST_WAIT)
