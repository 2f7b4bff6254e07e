"""The periodic sweep of uploads never sent, run by every server process in a thread of its own.

`manage.py sweep_uploads` does the same once (from cron, say). Each process sweeps every
CHAT_UPLOAD_SWEEP_SECONDS, the first time as it starts, so a site whose processes restart more
often than that still sweeps. Several processes sweeping at once share the work without deleting
anything twice (AttachmentQuerySet.sweep). Not part of the answer worker's heartbeat: deleting many
stored files from a remote store can take longer than a heartbeat may.
"""

import logging
import threading

from django.conf import settings
from django.db import connections

from chat.answering.database import TRANSIENT_DATABASE_ERRORS, first_line, reset_connections
from chat.models import Attachment

logger = logging.getLogger(__name__)


class UploadSweeper:
    def __init__(self):
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="upload-sweep", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self, timeout=5):
        """Stop after the batch being deleted, if any; wait for that at most `timeout` seconds."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def run(self):
        try:
            while not self.stopping.is_set():
                self.sweep_once()
                # Read at every turn: a changed setting (a test's) applies from the next sweep on.
                self.stopping.wait(settings.CHAT_UPLOAD_SWEEP_SECONDS)
        finally:
            connections.close_all()  # a stopped sweeper leaves no connection open

    def sweep_once(self):
        """One sweep; how many uploads went, or None when it failed (it runs again next time)."""
        reset_connections()
        try:
            deleted = Attachment.objects.sweep(stop=self.stopping)
        except TRANSIENT_DATABASE_ERRORS as error:
            logger.warning(
                "The upload sweep cannot reach the database (%s: %s); it runs again later",
                type(error).__name__,
                first_line(error),
            )
            reset_connections()
            return None
        except Exception:
            # The thread goes on: the next sweep may well succeed, and nothing else would run it.
            logger.exception("The upload sweep failed; it runs again later")
            return None
        if deleted:
            logger.info("Deleted %s uploads never sent", deleted)
        return deleted
