"""The sweep of uploads: those never sent, and stored files that no upload names any more.

`sweep()` deletes uploads never sent within CHAT_UPLOAD_UNSENT_HOURS (AttachmentQuerySet.sweep),
then the stored files of that age without a row: left by a process that died between writing an
upload's file and its row, or after deleting a row and before its file, or by a store that failed
to delete. `manage.py sweep_uploads` runs it once (from cron, say); every server process runs it
in a thread of its own (`UploadSweeper`) as it starts and then every CHAT_UPLOAD_SWEEP_SECONDS, so a
site whose processes restart more often than that still sweeps. Several processes sweeping at once
share the work without deleting a row twice; a file deleted twice is no error in any store. Not
part of the answer worker's heartbeat: deleting many files from a remote store can take longer
than a heartbeat may.
"""

import datetime
import logging
import threading
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.utils import timezone

from chat.answering.database import TRANSIENT_DATABASE_ERRORS, first_line, reset_connections
from chat.models import UPLOADS_FOLDER, Attachment

logger = logging.getLogger(__name__)

# Stored names looked up in the database at once.
NAMES_PER_QUERY = 500


@dataclass
class Swept:
    uploads: int  # rows of uploads never sent, with their files
    orphans: int  # stored files no row named


def sweep(now=None, stop=None):
    """Delete stale unsent uploads, then orphaned files; what went. Stops early once the Event
    `stop` is set."""
    now = now or timezone.now()
    uploads = Attachment.objects.sweep(now, stop=stop)
    return Swept(uploads, delete_orphaned_files(now, stop=stop))


def delete_orphaned_files(now=None, stop=None):
    """Delete stored upload files that no row names and that are older than
    CHAT_UPLOAD_UNSENT_HOURS (younger ones may belong to an upload whose row is being written);
    how many went. Through the storage API: the same in a folder and in a bucket."""
    now = now or timezone.now()
    cutoff = now - datetime.timedelta(hours=settings.CHAT_UPLOAD_UNSENT_HOURS)
    storage = Attachment._meta.get_field("file").storage
    try:
        _, files = storage.listdir(UPLOADS_FOLDER)
    except FileNotFoundError:  # a folder that no upload has made yet
        return 0
    names = [f"{UPLOADS_FOLDER}/{name}" for name in files]
    deleted = 0
    for start in range(0, len(names), NAMES_PER_QUERY):
        if stop is not None and stop.is_set():
            break
        chunk = names[start : start + NAMES_PER_QUERY]
        known = set(Attachment.objects.filter(file__in=chunk).values_list("file", flat=True))
        for name in chunk:
            if name in known:
                continue
            modified = modified_time(storage, name)
            if modified is None or modified >= cutoff:
                continue
            storage.delete(name)
            logger.warning("Deleted the stored file %s: no upload names it", name)
            deleted += 1
    return deleted


def modified_time(storage, name):
    """When the stored file was last written, or None once it is gone (deleted with its row since
    the folder was listed): each store says "missing" in its own way, so it is asked again."""
    try:
        return storage.get_modified_time(name)
    except Exception:
        if not storage.exists(name):
            return None
        raise


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
                interval = settings.CHAT_UPLOAD_SWEEP_SECONDS
                if interval <= 0:
                    break  # switched off
                self.stopping.wait(interval)
        finally:
            connections.close_all()  # a stopped sweeper leaves no connection open

    def sweep_once(self):
        """One sweep; what went (a Swept), or None when it failed (it runs again next time)."""
        reset_connections()
        try:
            swept = sweep(stop=self.stopping)
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
        if swept.uploads:
            logger.info("Deleted %s uploads never sent", swept.uploads)
        return swept
