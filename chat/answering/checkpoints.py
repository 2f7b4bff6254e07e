"""The checkpointer: one thread that saves the text so far of the answers that are due.

Answer threads only hand their job over: a slow or unavailable database delays checkpoints (they
are for crash safety), never a stream. Failed checkpoints are tried again after a wait that grows
while the database stays unavailable; each round writes the newest text of each job, all of them
in one transaction and one statement (MessageQuerySet.checkpoint_round), or one at a time when
the database refuses the round (so that one answer's refused text holds back no other's).
"""

import logging
import threading
import time

from django.db import connections

from chat.answering.database import (
    RETRY_FIRST_WAIT,
    RETRY_LONGEST_WAIT,
    TRANSIENT_DATABASE_ERRORS,
    log_retry,
    reset_connections,
)
from chat.models import Message

logger = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self):
        self._due = {}  # message id -> job, for the next round
        self._condition = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answer-checkpoints", daemon=True)
        self._thread.start()

    def request(self, job):
        with self._condition:
            self._due[job.message_id] = job
            self._condition.notify()

    def close(self, timeout=5):
        self._closing.set()
        with self._condition:
            self._condition.notify()
        self._thread.join(timeout)

    def _next_round(self):
        """The jobs due, once there are any; None when closing."""
        with self._condition:
            while not self._due and not self._closing.is_set():
                self._condition.wait()
            if self._closing.is_set():
                return None
            jobs = list(self._due.values())
            self._due.clear()
            return jobs

    def _run(self):
        wait = RETRY_FIRST_WAIT
        last_reset = time.monotonic()
        try:
            while (jobs := self._next_round()) is not None:
                if time.monotonic() - last_reset >= 1.0:  # expired connections, about once a second
                    last_reset = time.monotonic()
                    reset_connections()
                failed = self._write_round(jobs, wait)
                if not failed:
                    wait = RETRY_FIRST_WAIT
                    continue
                reset_connections()
                with self._condition:
                    for job in failed:
                        self._due.setdefault(job.message_id, job)
                self._closing.wait(wait)
                wait = min(wait * 2, RETRY_LONGEST_WAIT)
        finally:
            connections.close_all()  # a stopped worker leaves no connection open

    @classmethod
    def _write_round(cls, jobs, wait):
        """Save the round's checkpoints; the jobs to try again (the database was unavailable)."""
        due = [(job, values) for job in jobs if (values := job.checkpoint_values()) is not None]
        if not due:
            return []
        try:
            Message.objects.checkpoint_round([values for _, values in due])
        except TRANSIENT_DATABASE_ERRORS as error:
            for job, _ in due:
                log_retry("checkpoint", job.message_id, error, wait)
            return [job for job, _ in due]
        except Exception:
            logger.warning("A round of %s checkpoints was refused; writing them one at a time", len(due), exc_info=True)
            return [job for job, _ in due if not cls._write(job, wait)]
        return []

    @staticmethod
    def _write(job, wait):
        """Save one job's checkpoint; False if the database was unavailable (to be tried again)."""
        try:
            job.write_checkpoint()
        except TRANSIENT_DATABASE_ERRORS as error:
            log_retry("checkpoint", job.message_id, error, wait)
            return False
        except Exception:
            logger.exception("The checkpoint of answer %s failed", job.message_id)
        return True
