"""The worker's maintenance: this process's heartbeat, and what it catches at each beat.

Every CHAT_HEARTBEAT_INTERVAL the process marks itself alive (ServerProcess), then

- stops its answers whose stop request reached the row but not this process (a publish missed
  while Redis was away, a shell without Redis, an owner deactivated by an UPDATE that sends no
  signal): stops normally arrive at once (chat/runtime.py, `request_stop`), this is the backstop;
- writes the final states its answer threads gave up on while the database was unavailable;
- reaps its own unfinished answers that lost their job, and other processes' answers once their
  heartbeats stopped (`reap_orphans`), each through the one final save and told to the tabs.
"""

import logging
import os
import socket
import threading
import time

from django.conf import settings
from django.db import connections
from django.utils import timezone

from chat import protocol
from chat.answering.database import TRANSIENT_DATABASE_ERRORS, first_line, reset_connections
from chat.models import Message, ServerProcess, UsageEntry

logger = logging.getLogger(__name__)

# How often the loop looks whether a heartbeat is due: settings changed at run time (tests) take
# effect within this, and closing the worker waits at most this long.
TICK = 0.25


def end_answers(message_ids, error_code, error_message, relay=None):
    """Mark unfinished answers interrupted, keeping their checkpoint, each through the one final
    save; tell the browsers following them through `relay` when given. Returns how many ended."""
    ended = 0
    for message_id in message_ids:
        message = Message.objects.interrupt(message_id, error_code, error_message)
        if message is None:
            continue
        ended += 1
        if relay is not None:
            relay.publish(message.conversation.group_name, protocol.done_event(message))
    return ended


def reap_orphans(relay=None):
    """Mark answers whose server process is gone as interrupted, keeping their checkpoint, and
    tell the browsers following them (through `relay`, the server's event loop's, when known)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    alive = ServerProcess.objects.filter(last_seen_at__gte=cutoff).values("id")
    orphans = list(Message.objects.unfinished().exclude(worker__in=alive).values_list("id", flat=True))
    count = end_answers(
        orphans,
        "server_stopped",
        "The server stopped while this answer was being written; the text so far was kept.",
        relay,
    )
    # Ended answers are recorded by finish_answer; this catches the rest, e.g. answers deleted
    # while being written, which count their reservation.
    UsageEntry.objects.record_ended()
    if count:
        logger.warning("Marked %s answers interrupted: their server process is gone", count)
    ServerProcess.objects.filter(last_seen_at__lt=cutoff).delete()
    return count


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Maintenance:
    def __init__(self, worker):
        self.worker = worker
        self.stopping = threading.Event()
        self.jobless = set()  # own unfinished answers seen without a job at the last heartbeat
        self.reap_others_after = 0.0  # monotonic; later after the database was unavailable
        self.database_trouble = False
        self.thread = threading.Thread(target=self.run, name="answer-maintenance", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self, timeout=5):
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def register(self):
        """Mark this process alive (dropping rows of dead processes on this host), reap orphans."""
        reset_connections()
        hostname = socket.gethostname()
        for process in ServerProcess.objects.filter(hostname=hostname).exclude(id=self.worker.id):
            if not pid_alive(process.pid):
                process.delete()
        ServerProcess.objects.update_or_create(
            id=self.worker.id, defaults={"hostname": hostname, "pid": os.getpid(), "last_seen_at": timezone.now()}
        )
        reap_orphans()

    def run(self):
        last_beat = time.monotonic()
        try:
            while not self.stopping.wait(min(TICK, settings.CHAT_HEARTBEAT_INTERVAL)):
                if time.monotonic() - last_beat < settings.CHAT_HEARTBEAT_INTERVAL:
                    continue
                last_beat = time.monotonic()
                self.beat_safely()
        finally:
            connections.close_all()  # a stopped worker leaves no connection open

    def beat_safely(self):
        try:
            self.beat()
        except TRANSIENT_DATABASE_ERRORS as error:
            self.database_unavailable(error)
            return
        except Exception:
            logger.exception("Answer maintenance failed; trying again")
            return
        if self.database_trouble:
            self.database_trouble = False
            logger.info("The database is available again; answer maintenance goes on")

    def beat(self):
        """One heartbeat's work (see the module docstring)."""
        reset_connections()
        if not ServerProcess.objects.filter(id=self.worker.id).update(last_seen_at=timezone.now()):
            self.register()
        self.worker.notice_stops(self.stops_on_rows())
        self.save_unsaved()
        self.reap_lost()
        if time.monotonic() >= self.reap_others_after:
            reap_orphans(self.worker.relay())

    def database_unavailable(self, error):
        if not self.database_trouble:
            self.database_trouble = True
            logger.warning(
                "Answer maintenance cannot reach the database (%s: %s); trying again",
                type(error).__name__,
                first_line(error),
                extra={"database_retry": "maintenance"},
            )
        # While this process could not reach the database, neither could the others mark
        # themselves alive: give them a full heartbeat timeout once it is back before taking their
        # answers for orphans.
        self.reap_others_after = time.monotonic() + settings.CHAT_HEARTBEAT_TIMEOUT
        reset_connections()

    def stops_on_rows(self):
        """This process's answers asked to stop through their rows and not yet told."""
        ids = self.worker.unstopped_ids()
        if not ids:
            return []
        requested = Message.objects.filter(pk__in=ids).stop_requested().values_list("pk", flat=True)
        return [str(message_id) for message_id in requested]

    def save_unsaved(self):
        """Write the final states the answer threads gave up on; they stay until written."""
        for job in self.worker.unsaved_jobs():
            if not job.save_final():
                return  # the database is still unavailable: the next heartbeat tries again

    def reap_lost(self):
        """End this process's own unfinished answers that have no job here any more.

        A job is gone only through a bug, a thread that died, or a socket that went away between
        storing an answer and handing it over; other processes leave such answers alone, since
        this one is alive. Seen without a job at two heartbeats in a row: one just stored is
        handed over long before the next.
        """
        live = self.worker.job_ids()
        unfinished = Message.objects.unfinished().filter(worker=self.worker.id).values_list("pk", flat=True)
        jobless = {str(message_id) for message_id in unfinished} - live
        lost, self.jobless = jobless & self.jobless, jobless
        if not lost:
            return
        count = end_answers(
            lost, "answer_lost", "The server lost track of this answer; the text so far was kept.", self.worker.relay()
        )
        if count:
            logger.warning("Marked %s answers interrupted: this process had lost their jobs", count)
