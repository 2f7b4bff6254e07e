"""One answer being generated: claim, open, apply, finish.

A pool thread runs `AnswerJob.run()`: it claims the queued row, opens the upstream stream, applies
each event (deltas to the coalescing buffer, the rest to the `Reading`), and finishes with one
final save. Flushed deltas go to the relay of the server's event loop (chat/relay.py), which hands
them to the sockets in order; a window's held deltas are flushed by a timer on that loop.

A stop is a request (`request_stop`) from any thread: the job's own thread notices it (an aborted
stream wakes its read, the stop event its waits), or, where it cannot soon (queued, or waiting for
the upstream's status line), the worker's stop thread ends the answer. The stop's outcome decides
the status; the text and any usage stay.
"""

import dataclasses
import logging
import threading
import time

from django.conf import settings
from django.db import Error
from django.utils import timezone

from chat import protocol
from chat.answering.buffer import StreamBuffer
from chat.answering.database import TRANSIENT_DATABASE_ERRORS, Interrupted, reset_connections, retry_database
from chat.answering.reading import Reading
from chat.content import AttachmentUnreadable, ModelCannotRead
from chat.models import MIN_OUTPUT_TOKENS, Message
from chat.upstream import UpstreamError

logger = logging.getLogger(__name__)


class Phase:
    """Where a job is; it decides which thread can notice a stop (AnswerJob.request_stop)."""

    QUEUED = "queued"  # waiting for a pool thread
    CLAIMING = "claiming"  # its thread moves the row to streaming; a stop ends the waits between tries
    OPENING = "opening"  # its thread waits for the upstream's status line and cannot notice a stop
    STREAMING = "streaming"  # its thread reads the stream; aborting the stream wakes it


class AnswerJob:
    def __init__(self, worker, message_id, group, loop, answer_input=None):
        self.worker = worker
        self.message_id = message_id
        # What the claim and the request need, from the verb that queued the answer (None: read
        # back at the claim); a claim tried once reads it back too (see _claim).
        self.answer_input = answer_input
        self.group = group
        self.loop = loop
        self.relay = worker.runtime.relay_for(loop)
        self.lock = threading.Lock()
        self.phase = Phase.QUEUED
        self.stream = None
        # A stop: the event wakes the job's thread in its waits; the outcome is how it ends.
        self.stop_event = threading.Event()
        self.stop_outcome = None
        # The end: claimed once (`ending`), by the job's thread or the worker's stop thread; its
        # fields (`final`) kept until written; `released` once the worker let the job go.
        self.ending = False
        self.final = None
        self.unsaved = False
        # The database refused this answer's outcome once: the plain failure saved instead.
        self.refused = False
        # The row is this job's to write texts to once claimed: before that, its text is what it
        # was queued with (an answer made by Continue starts with its earlier version's text).
        self.claimed = False
        self.released = threading.Event()

        self.buffer = StreamBuffer(protocol.STREAM_NAMES, settings.CHAT_FLUSH_INTERVAL)
        self.deltas = protocol.DeltaEvents(message_id)
        self.reading = Reading(self)
        self.first_token_at = None
        self.last_checkpoint = time.monotonic()

    def publish(self, event):
        """Hand an event to the sockets following the conversation; never blocks this thread."""
        self.relay.publish(self.group, event)

    # --- the stream, on the job's thread (and the loop's timer) -----------------------------

    def add(self, stream, delta):
        """Take one delta from the upstream: sent at once, or at the end of the window."""
        if not delta:
            return
        with self.lock:
            if self.ending:
                return
            if self.first_token_at is None:
                self.first_token_at = timezone.now()
            self._send(self.buffer.add(stream, delta))
            delay = self.buffer.timer()
        if delay is not None:
            self._arm_timer(delay)

    def _arm_timer(self, delay):
        # One loop timer for the windows of every answer of the relay (Relay.flush_at).
        self.relay.flush_at(time.monotonic() + delay, self._flush_due)

    def _flush_due(self):
        """The end of a window, on the event loop: what waits goes out."""
        with self.lock:
            if not self.ending:
                self._send(self.buffer.flush_due())

    def _send(self, chunks):
        """Publish flushed chunks, under the lock: the snapshot and the deltas agree on seq."""
        for seq, stream, delta in chunks:
            self.publish(self.deltas.event(seq, stream, delta))

    def snapshot(self):
        """The text flushed so far, consistent with its seq (None before the first flush)."""
        with self.lock:
            if not self.buffer.seq:
                return None
            return protocol.Snapshot.of_texts(self.buffer.seq, Message.Status.STREAMING, self.buffer.texts())

    def said_anything(self):
        with self.lock:
            return self.buffer.has_output()

    def checkpoint_if_due(self):
        """Hand the job to the worker's checkpointer about once per checkpoint interval."""
        now = time.monotonic()
        if now - self.last_checkpoint < settings.CHAT_CHECKPOINT_INTERVAL:
            return
        self.last_checkpoint = now
        self.worker.checkpointer.request(self)

    def checkpoint_values(self):
        """(message id, first token time, texts) to save as a checkpoint (bounded writes, crash
        safety), or None once the job is ending (its end saves all); on the checkpointer's thread,
        which writes those of a round together (MessageQuerySet.checkpoint_round)."""
        with self.lock:
            if self.ending:
                return None
            return self.message_id, self.first_token_at, self.buffer.texts()

    def write_checkpoint(self):
        """Save the text so far on its own (the checkpointer's fallback for a refused round)."""
        values = self.checkpoint_values()
        if values is not None:
            message_id, first_token_at, texts = values
            Message.objects.checkpoint(message_id, first_token_at=first_token_at, **texts)

    # --- run: claim, open, apply, finish ----------------------------------------------------

    def run(self):
        """Generate the answer; called in a pool thread (or a test's, see StreamWorker.run_one).

        Whatever happens the answer gets a final state, now or once the database is back, and
        the thread goes on to the next answer.
        """
        try:
            reset_connections()
            self._run()
        except Exception as error:
            logger.exception("Answer %s failed unexpectedly", self.message_id)
            self.finish(
                Message.Status.FAILED,
                error_code="internal_error",
                error_message=f"The server hit an unexpected error ({type(error).__name__}).",
            )
        finally:
            with self.lock:
                # Whoever claimed the end lets the job go once it is written, and a job stopped
                # while queued is the stop thread's; anything else is done with (deleted, ended
                # elsewhere).
                done_with = not self.ending and self.phase != Phase.QUEUED
            if done_with:
                self.worker.forget(self)
            reset_connections()

    def _run(self):
        try:
            claimed = self.claim()
        except (AttachmentUnreadable, ModelCannotRead) as error:
            # The input could not be built (a stored file unreadable, a model's capabilities
            # changed since the send): nothing went upstream, and the answer says why.
            self.finish(Message.Status.FAILED, error_code=error.code, error_message=str(error))
            return
        if claimed is None:
            return
        # Nothing but the checkpointer's thread writes until the end: with CONN_MAX_AGE 0 (the
        # PostgreSQL pool, a pooler) the connection goes back now, not after the whole answer.
        reset_connections()
        stream = self.open(*claimed)
        if stream is None:
            return
        try:
            self.apply(stream)
        except UpstreamError as error:
            # An `error` event then EOF: the event says what went wrong. After a stop, the
            # aborted read lands here too, and the stop decides the outcome (see finish()).
            code, text = self.reading.stream_error or (error.code, error.message)
            self.finish(Message.Status.FAILED, error_code=code, error_message=text)

    def _enter(self, phase):
        """Move to `phase` unless stopped; False (and the answer ended as stopped) if it was."""
        with self.lock:
            stopped = self.stop_event.is_set()
            if not stopped:
                self.phase = phase
        return not stopped

    def claim(self):
        """(AnswerInput, upstream input items) once the row is ours and streaming; None when the
        answer is gone, ended elsewhere, or was stopped meanwhile (then it is ended here or by
        the stop thread)."""
        with self.lock:
            if self.stop_event.is_set():
                return None  # stopped while queued: the stop thread ends it, and nothing goes upstream
            self.phase = Phase.CLAIMING
        try:
            claimed = retry_database(self._claim, "claim", self.message_id, interrupt=self.stop_event)
        except Interrupted:
            self.finish(Message.Status.CANCELLED)
            return None
        if claimed is not None:
            answer_input, context_start = claimed[0], claimed[2]
            # A continued answer goes on from the text it was queued with: its snapshots, its
            # checkpoints and its end all hold that text first, and its deltas follow it.
            start = {"text": answer_input.continued_text} if answer_input.continued_text else None
            with self.lock:
                if start:
                    self.buffer.start_from(start)
                self.claimed = True
            self.publish(
                protocol.status_event(self.message_id, Message.Status.STREAMING, start, context_start=context_start)
            )
        return claimed[:2] if claimed is not None else None

    def _claim(self):
        """(AnswerInput, input items, context_start), or None; retried as a whole.

        With the AnswerInput the verb handed over, the claim is its one UPDATE. Without one, or
        on a retry (the UPDATE of the try before may have been committed with its answer lost
        with the connection), the row is read back, and a claim already made is recognised as
        ours."""
        answer_input, ours = self.answer_input, False
        self.answer_input = None  # a retry reads the row back
        if answer_input is None:
            found = Message.objects.answer_input(self.message_id)
            if found is None:
                return None
            answer_input, status, worker_id = found
            ours = status == Message.Status.STREAMING and worker_id == self.worker.id
            if status != Message.Status.QUEUED and not ours:
                return None
        # Fitted to the model's context (chat/answering/context.py) and recorded with the claim.
        sent = answer_input.fitted()
        if not ours and Message.objects.claim(self.message_id, self.worker.id, sent) is None:
            return None
        # Never more than the context leaves after the input fitted to it (see Fitted.output_cap).
        cap = sent[0].output_cap(answer_input.max_output_tokens, MIN_OUTPUT_TOKENS)
        return dataclasses.replace(answer_input, max_output_tokens=cap), sent[0].items, sent[1]

    def open(self, answer_input, upstream_input):
        """The upstream's open stream; None when the answer ended before it (a stop, an error)."""
        model = answer_input.model
        client = self.worker.client_for(model)
        if not self._enter(Phase.OPENING):
            self.finish(Message.Status.CANCELLED)
            return None
        try:
            stream = client.stream_response(
                model,
                upstream_input,
                answer_input.instructions,
                stop_event=self.stop_event,
                max_output_tokens=answer_input.max_output_tokens,
            )
        except UpstreamError as error:
            self.finish(Message.Status.FAILED, error_code=error.code, error_message=error.message)
            return None
        with self.lock:
            self.stream = stream
            self.phase = Phase.STREAMING
            # request_stop() sets stop_event before it looks for the stream: one of us sees the other.
            stopped = self.stop_event.is_set()
        if stopped:
            # Stopped while the upstream was answering: the stop thread may have ended it already.
            stream.abort()
            stream.close()
            self.finish(Message.Status.CANCELLED)
            return None
        return stream

    def apply(self, stream):
        """Read the stream to its end, a stop, or the terminal event that finishes the answer."""
        for event in stream:
            if self.reading.apply(event):
                return
            if self.stop_event.is_set():
                break
            self.checkpoint_if_due()
        # The stream ended without a terminal event and without an error: a stop (which decides
        # the outcome), or an upstream that closed its stream early.
        self.finish(
            Message.Status.FAILED,
            error_code="stream_truncated",
            error_message="The API ended the stream before finishing the answer.",
        )

    # --- ending -----------------------------------------------------------------------------

    def request_stop(self, status=Message.Status.CANCELLED, error_code="", error_message=""):
        """Ask the answer to end with `status`, from any thread; no database work here.

        The first request's outcome is the one kept (see the module docstring).
        """
        with self.lock:
            if self.stop_outcome is None:
                self.stop_outcome = {
                    "status": status,
                    "error_code": error_code,
                    "error_message": error_message,
                    "requested_at": timezone.now(),
                }
            self.stop_event.set()
            stream = self.stream
            unattended = not self.ending and self.phase in (Phase.QUEUED, Phase.OPENING)
        if stream is not None:
            stream.abort()
        if unattended:
            self.worker.end_unattended(self)

    def finish(self, status, *, final_texts=None, error_code="", error_message="", **outcome):
        """Save the final state and tell the tabs; only the first call counts. Never raises.

        `outcome` holds the rest of what the upstream said (usage, incomplete_reason). A stop
        requested before decides the status and the error. The write is tried again while the
        database is unavailable; the job counts as ended only once it is written (save_final).
        """
        with self.lock:
            if self.ending:
                return
            self.ending = True
            self._send(self.buffer.flush())
            texts = (self.buffer.texts() if self.claimed else {}) | self.buffer.after_start(final_texts or {})
            stop = self.stop_outcome
        try:
            if stop is not None:
                status, error_code, error_message = stop["status"], stop["error_code"], stop["error_message"]
                outcome.pop("incomplete_reason", None)
            self.final = texts | self.reading.ids() | outcome
            self.final.update(
                status=status,
                error_code=error_code,
                error_message=error_message,
                finished_at=timezone.now(),
                first_token_at=self.first_token_at,
            )
            if stop is not None and stop["status"] == Message.Status.CANCELLED:
                # The request is on the row even when this process heard of it first.
                self.final["stop_requested_at"] = stop["requested_at"]
            self.save_final(patient=True)
        except Exception:
            # A bug, not the database: let the job go; this process reaps its row as lost.
            logger.exception("Answer %s could not be ended", self.message_id)
            self.worker.forget(self)

    def save_final(self, patient=False):
        """Write the final state; True once written (or found ended elsewhere) and the tabs told.

        `patient`: retry for up to CHAT_DATABASE_RETRY_SECONDS (the answer's thread). Past that,
        or on one failed try otherwise, the job stays unsaved with the worker, whose maintenance
        loop calls this again until the database takes it.
        """
        try:
            if patient:
                message = retry_database(self._write_final, "final save", self.message_id)
            else:
                message = self._write_final()
        except TRANSIENT_DATABASE_ERRORS:
            self._hand_over()
            return False
        except Error:
            if self.refused:
                raise  # even the plain failure below was refused: finish() lets the job go
            self.refused = True
            # The database refuses this outcome for good (data it cannot store, a bug): end the
            # answer as failed, keeping its last checkpoint, rather than leave it unfinished.
            logger.exception("The database refused the final state of answer %s", self.message_id)
            self.final = {
                "status": Message.Status.FAILED,
                "error_code": "internal_error",
                "error_message": "The server could not save this answer; the text checkpointed so far was kept.",
                "finished_at": timezone.now(),
            }
            return self.save_final(patient)
        self.unsaved = False
        if message is not None:
            # Queued once the end is written and before the tabs hear of it (so that whoever hears
            # can wait for the title); the title's own thread does the work: no answer waits.
            self.worker.titles.after_answer(message, self.loop)
        self._told(message)
        self.worker.forget(self)
        return True

    def _write_final(self):
        return Message.objects.finish_answer(self.message_id, **self.final)

    def _hand_over(self):
        handed_over, self.unsaved = not self.unsaved, True
        if handed_over:
            logger.error(
                "Answer %s could not be saved for %s s; this process's maintenance goes on trying",
                self.message_id,
                settings.CHAT_DATABASE_RETRY_SECONDS,
                extra={"database_retry": "final save handed over", "message_id": self.message_id},
            )

    def _told(self, message):
        if message is None:
            logger.warning("Answer %s was already finished elsewhere; kept that state", self.message_id)
            return
        with self.lock:
            self.buffer.replace({name: getattr(message, name) for name in protocol.STREAM_NAMES})
        self.publish(protocol.done_event(message))
