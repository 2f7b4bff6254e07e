"""The stream worker: generates answers in background threads and relays them to browsers.

One `AnswerJob` per assistant message. A thread from the `StreamWorker` pool opens the upstream
stream and feeds its events to the job, which

- coalesces deltas: a delta after a quiet period is flushed at once; deltas arriving faster than
  the flush window are joined and flushed at the end of that window by the `FlushScheduler`
  thread, so none waits longer than one window even when the upstream then goes quiet;
- keeps the text flushed so far with its `seq`: the snapshot a subscriber in this process starts
  from (read_snapshot); the relay keeps the same snapshot in Redis for the other processes,
  written in one transaction with the publication of the deltas, which is what makes resume
  gap-free (docs/protocol.md);
- checkpoints the text so far to the database about once a second (through the `Checkpointer`'s
  thread, so that a slow database never holds up a stream), and saves once at the end.

Threads never run coroutines themselves: events go to the sockets through the relay of the
server's event loop captured when the job was created (chat/relay.py), in order.

Nothing strands an answer. A database that is unavailable for a while (SQLite locked, PostgreSQL
restarting, a dropped connection) delays its writes, never loses them: the claim and the final
save are tried again with backoff (`retry_database`), a job counts as ended only once its final
save is written, and after CHAT_DATABASE_RETRY_SECONDS the maintenance loop goes on trying while
the pool thread serves the next answer. The maintenance loop also reaps this process's own
answers that lost their job, and other processes' answers once their heartbeats stopped.

A stop is a request, never work on the caller's thread (`request_stop`): it is recorded on the
answer's row, where the generating process's maintenance loop finds it, and told at once to this
process's own jobs; the answer's own thread then saves it as cancelled with its text so far.
"""

import asyncio
import heapq
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid

import requests
from django.conf import settings
from django.db import (
    Error,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
    transaction,
)
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat import protocol, providers
from chat.localmodel import transport
from chat.localmodel.endpoint import local_token
from chat.models import Message, ServerProcess, UsageEntry
from chat.protocol import STREAMS, Snapshot
from chat.relay import read_shared_snapshot, relay_for
from chat.upstream import (
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    RefusalDone,
    ResponseFinished,
    ResponseStarted,
    StreamError,
    TextDelta,
    TextDone,
    UpstreamClient,
    UpstreamError,
)

logger = logging.getLogger(__name__)

EMPTY_OUTPUT = "empty_output"
EMPTY_OUTPUT_SENTENCE = (
    "The model returned nothing: no text, refusal or reasoning. The conversation may be longer "
    "than the model can read; try a new chat or a shorter message."
)
FINAL_STATUS = {
    "completed": Message.Status.COMPLETED,
    "incomplete": Message.Status.INCOMPLETE,
    "failed": Message.Status.FAILED,
}


# Errors of a database that is unavailable for a while (SQLite locked, PostgreSQL restarting, a
# connection dropped): trying again helps. Others (data the database refuses, a bug) do not.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_FIRST_WAIT = 0.1
RETRY_LONGEST_WAIT = 5.0
# How often the maintenance loop looks for stops requested through the database.
STOP_POLL_INTERVAL = 0.25


class Interrupted(Exception):
    """A wait between two tries of a database write was ended by a stop."""


def reset_connections():
    """Close this thread's broken or expired database connections; the next query opens a new one."""
    try:
        close_old_connections()
    except Error:
        logger.debug("Closing a broken database connection failed", exc_info=True)


def closing_connections(target):
    """A thread's target that closes the thread's database connections when it returns: a stopped
    worker leaves none open (PostgreSQL will not drop a database that has connections)."""

    def run(*args, **kwargs):
        try:
            return target(*args, **kwargs)
        finally:
            connections.close_all()

    return run


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def retry_database(operation, what, message_id, interrupt=None):
    """`operation()`, tried again with backoff while the database is unavailable.

    Gives up after CHAT_DATABASE_RETRY_SECONDS and raises the last error. Raises Interrupted when
    the Event `interrupt` is set during a wait. For a worker's own threads, outside any
    transaction: a failed try's connection is closed, and the next try opens a new one. Each
    retry is logged with `database_retry` (what was retried) and `message_id` on the record.
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
            logger.warning(
                "The %s of answer %s failed (%s: %s); try %s in %.1f s",
                what,
                message_id,
                type(error).__name__,
                _first_line(error),
                tries + 1,
                wait,
                extra={"database_retry": what, "message_id": message_id},
            )
            reset_connections()
            if interrupt is None:
                time.sleep(wait)
            elif interrupt.wait(wait):
                raise Interrupted from error
            wait = min(wait * 2, RETRY_LONGEST_WAIT)


def read_snapshot(message_id):
    """The protocol.Snapshot of an answer in flight, or None before its first flush.

    An answer generated in this process is read from its job; one generated by another process
    from Redis, where the relay keeps it (chat/relay.py).
    """
    worker = running_worker()
    job = worker.job(message_id) if worker is not None else None
    if job is not None:
        return job.snapshot()
    if settings.REDIS_URL:
        return read_shared_snapshot(message_id)
    return None


class FlushScheduler:
    """One thread that runs callbacks at given moments (the end of each job's flush window)."""

    def __init__(self):
        self._heap = []
        self._counter = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flush-scheduler", daemon=True)
        self._thread.start()

    def close(self, timeout=5):
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout)

    def call_at(self, when, callback):
        with self._condition:
            self._counter += 1
            heapq.heappush(self._heap, (when, self._counter, callback))
            if self._heap[0][2] is callback:
                self._condition.notify()

    def _run(self):
        while True:
            with self._condition:
                while not self._heap and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                when, _, callback = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._condition.wait(delay)
                    continue
                heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                logger.exception("A scheduled flush failed")


class Checkpointer:
    """One thread that saves the text so far of the answers that are due, the newest text each time.

    Answer threads only hand their job over: a slow or unavailable database delays checkpoints
    (they are for crash safety), never a stream. Failed checkpoints are tried again after a wait
    that grows while the database stays unavailable.
    """

    def __init__(self):
        self._due = {}  # message id -> job, for the next round
        self._condition = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=closing_connections(self._run), name="answer-checkpoints", daemon=True)
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

    def _run(self):
        wait = RETRY_FIRST_WAIT
        last_reset = time.monotonic()
        while True:
            with self._condition:
                while not self._due and not self._closing.is_set():
                    self._condition.wait()
                if self._closing.is_set():
                    return
                jobs = list(self._due.values())
                self._due.clear()
            if time.monotonic() - last_reset >= 1.0:  # expired connections, about once a second
                last_reset = time.monotonic()
                reset_connections()
            failed = [job for job in jobs if not self._write(job, wait)]
            if not failed:
                wait = RETRY_FIRST_WAIT
                continue
            reset_connections()
            with self._condition:
                for job in failed:
                    self._due.setdefault(job.message_id, job)
            self._closing.wait(wait)
            wait = min(wait * 2, RETRY_LONGEST_WAIT)

    @staticmethod
    def _write(job, wait):
        """Save one job's checkpoint; False if the database was unavailable (to be tried again)."""
        try:
            job.write_checkpoint()
        except TRANSIENT_DATABASE_ERRORS as error:
            logger.warning(
                "The checkpoint of answer %s failed (%s: %s); trying again in %.1f s",
                job.message_id,
                type(error).__name__,
                _first_line(error),
                wait,
                extra={"database_retry": "checkpoint", "message_id": job.message_id},
            )
            return False
        except Exception:
            logger.exception("The checkpoint of answer %s failed", job.message_id)
        return True


class Phase:
    """Where a job is; it decides which thread can notice a stop (AnswerJob.request_stop)."""

    QUEUED = "queued"  # waiting for a pool thread
    CLAIMING = "claiming"  # its thread moves the row to streaming; a stop ends the waits between tries
    OPENING = "opening"  # its thread waits for the upstream's status line and cannot notice a stop
    STREAMING = "streaming"  # its thread reads the stream; aborting the stream wakes it


class AnswerJob:
    """The state of one answer being generated; see the module docstring."""

    def __init__(self, worker, message_id, group, loop):
        self.worker = worker
        self.message_id = message_id
        self.group = group
        self.relay = relay_for(loop)
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
        self.released = threading.Event()

        self.seq = 0
        self.parts = {name: [] for name, _ in STREAMS}
        self.pending = {name: [] for name, _ in STREAMS}
        self.has_pending = False
        self.flush_scheduled = False
        self.last_flush = 0.0
        self.last_checkpoint = time.monotonic()
        self.first_token_at = None
        self.text_done = {}  # (output_index, content_index) -> full text, from output_text.done
        self.reasoning_part = None  # (output_index, part index) of the last reasoning delta
        self.stream_error = None
        self.upstream_queued = False
        self.response_id = ""
        self.model = ""

    def publish(self, event):
        """Hand an event to the sockets following the conversation; never blocks this thread."""
        self.relay.publish(self.group, event)

    # --- streaming, thread side -------------------------------------------------------------

    def text(self, name="text"):
        return "".join(self.parts[name])

    def add(self, name, delta):
        """Take one delta from the upstream; flush at once or at the end of the window."""
        if not delta:
            return
        with self.lock:
            if self.ending:
                return
            if self.first_token_at is None:
                self.first_token_at = timezone.now()
            self.pending[name].append(delta)
            self.has_pending = True
            now = time.monotonic()
            window = settings.CHAT_FLUSH_INTERVAL
            if now - self.last_flush >= window:
                self._flush_locked(now)
            elif not self.flush_scheduled:
                self.flush_scheduled = True
                self.worker.scheduler.call_at(self.last_flush + window, self._scheduled_flush)

    def _scheduled_flush(self):
        with self.lock:
            self.flush_scheduled = False
            if self.has_pending and not self.ending:
                self._flush_locked(time.monotonic())

    def _flush_locked(self, now):
        """Send what is pending, under the lock: the snapshot and the deltas published agree on seq."""
        if not self.has_pending:
            return
        events = []
        for stream in STREAMS:
            pending = self.pending[stream.name]
            if not pending:
                continue
            delta = "".join(pending)
            pending.clear()
            self.parts[stream.name].append(delta)
            self.seq += 1
            events.append(protocol.delta_event(self.message_id, self.seq, stream, delta))
        self.has_pending = False
        self.last_flush = now
        for event in events:
            self.publish(event)

    def _snapshot_locked(self, status):
        return Snapshot.of_texts(self.seq, status, {name: self.text(name) for name, _ in STREAMS})

    def snapshot(self):
        """The text flushed so far, consistent with `seq` (None before the first flush)."""
        with self.lock:
            if not self.seq:
                return None
            return self._snapshot_locked(Message.Status.STREAMING)

    def checkpoint_if_due(self):
        """Hand the job to the worker's checkpointer about once per checkpoint interval."""
        now = time.monotonic()
        if now - self.last_checkpoint < settings.CHAT_CHECKPOINT_INTERVAL:
            return
        self.last_checkpoint = now
        self.worker.checkpointer.request(self)

    def write_checkpoint(self):
        """Save the text so far (bounded writes, crash safety); on the checkpointer's thread."""
        with self.lock:
            if self.ending:
                return
            fields = {name: self.text(name) for name, _ in STREAMS}
            first_token_at = self.first_token_at
        # Only while streaming: a checkpoint that comes late never overwrites the final save.
        Message.objects.filter(pk=self.message_id, status=Message.Status.STREAMING).update(
            checkpointed_at=timezone.now(), first_token_at=first_token_at, **fields
        )

    def run(self):
        """Generate the answer; called in a pool thread.

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
        with self.lock:
            if self.stop_event.is_set():
                return  # stopped while queued: the worker's stop thread ends it, and nothing goes upstream
            self.phase = Phase.CLAIMING
        try:
            claimed = retry_database(self._claim, "claim", self.message_id, interrupt=self.stop_event)
        except Interrupted:
            self.finish(Message.Status.CANCELLED)
            return
        if claimed is None:
            return  # deleted, or finished elsewhere while it waited in the queue
        message, upstream_input = claimed
        self.publish(protocol.status_event(self.message_id, Message.Status.STREAMING))
        conversation = message.conversation
        model = message.model or conversation.model
        client = self.worker.client_for(model)
        with self.lock:
            stopped = self.stop_event.is_set()
            if not stopped:
                self.phase = Phase.OPENING
        if stopped:
            self.finish(Message.Status.CANCELLED)
            return
        try:
            stream = client.stream_response(
                model, upstream_input, conversation.instructions, stop_event=self.stop_event
            )
        except UpstreamError as error:
            self.finish(Message.Status.FAILED, error_code=error.code, error_message=error.message)
            return
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
            return
        try:
            for event in stream:
                if self.handle(event):
                    return
                if self.stop_event.is_set():
                    break
                self.checkpoint_if_due()
        except UpstreamError as error:
            # An `error` event then EOF: the event says what went wrong. After a stop, the
            # aborted read lands here too, and the stop decides the outcome (see finish()).
            code, text = self.stream_error or (error.code, error.message)
            self.finish(Message.Status.FAILED, error_code=code, error_message=text)
            return
        # The stream ended without a terminal event and without an error: a stop (which decides
        # the outcome), or an upstream that closed its stream early.
        self.finish(
            Message.Status.FAILED,
            error_code="stream_truncated",
            error_message="The API ended the stream before finishing the answer.",
        )

    def _claim(self):
        """(message, upstream input) once the answer moved from queued to streaming for this
        worker; None if it is gone or ended elsewhere. Retried as a whole: the claim comes last,
        and a claim whose answer was lost with its connection is recognised as ours."""
        message = Message.objects.select_related("conversation").filter(pk=self.message_id).first()
        if message is None:
            return None
        ours = message.status == Message.Status.STREAMING and message.worker == self.worker.id
        if message.status != Message.Status.QUEUED and not ours:
            return None
        upstream_input = message.conversation.upstream_input(before=message)
        if not ours and not message.claim(self.worker.id):
            return None
        return message, upstream_input

    def handle(self, event):
        """Apply one upstream event; True once the answer is finished."""
        if isinstance(event, TextDelta):
            self.add("text", event.delta)
        elif isinstance(event, ReasoningDelta):
            self.add_reasoning(event)
        elif isinstance(event, RefusalDelta):
            self.add("refusal", event.delta)
        elif isinstance(event, TextDone):
            self.text_done[(event.output_index, event.content_index)] = event.text
        elif isinstance(event, (ReasoningDone, RefusalDone)):
            pass  # the terminal response repeats them; deltas already carry the text
        elif isinstance(event, ResponseStarted):
            self.response_id = event.response_id or self.response_id
            self.model = event.model or self.model
            # The upstream may queue the request (the local model serves one at a time): say so.
            upstream_queued = event.status == "queued"
            if upstream_queued != self.upstream_queued:
                self.upstream_queued = upstream_queued
                status = Message.Status.QUEUED if upstream_queued else Message.Status.STREAMING
                self.publish(protocol.status_event(self.message_id, status))
        elif isinstance(event, StreamError):
            self.stream_error = (event.code, event.message)
        elif isinstance(event, ResponseFinished):
            self.response_id = event.response_id or self.response_id
            self.model = event.model or self.model
            code, text = event.error_code, event.error_message
            if event.status == "failed" and not (code or text) and self.stream_error:
                code, text = self.stream_error
            if event.status == "failed":
                code = code or "response_failed"
                text = text or "The API reported that the answer failed."
            status = FINAL_STATUS[event.status]
            final_text = self._final_text(event)
            if status == Message.Status.COMPLETED and not self.said_anything(event, final_text):
                # Some servers answer a prompt longer than the model reads with an empty success
                # (LiteLLM: completed, no output, usage 0/0/0). Shown as what it is, and findable.
                status, code, text = Message.Status.FAILED, EMPTY_OUTPUT, EMPTY_OUTPUT_SENTENCE
            self.finish(
                status,
                usage=event.usage,
                final_text=final_text,
                final_reasoning=event.reasoning_text,
                final_refusal=event.refusal,
                error_code=code,
                error_message=text,
                incomplete_reason=event.incomplete_reason,
            )
            return True
        return False

    def add_reasoning(self, event):
        """Reasoning deltas; a new summary part starts a new paragraph, as the final text has it."""
        if not event.delta:
            return
        part = (event.output_index, event.part_index)
        separator = "\n\n" if self.reasoning_part not in (None, part) else ""
        self.reasoning_part = part
        self.add("reasoning", separator + event.delta)

    def said_anything(self, event, final_text):
        """Whether the answer has any text, refusal or reasoning, streamed or final."""
        with self.lock:
            streamed = any(self.parts[name] or self.pending[name] for name, _ in STREAMS)
        return streamed or bool(final_text or event.reasoning_text or event.refusal)

    def _final_text(self, event):
        """The upstream's own final text when it sent one, else what the deltas built.

        An empty final text does not wipe out streamed text: a lenient server may leave its
        terminal `output` bare, and the text the person watched arrive is then the best record.
        """
        if event.output_text:
            return event.output_text
        done = "".join(text for _, text in sorted(self.text_done.items()))
        return done or None

    # --- ending -----------------------------------------------------------------------------

    def request_stop(self, status=Message.Status.CANCELLED, error_code="", error_message=""):
        """Ask the answer to end with `status`, from any thread; no database work here.

        The job's own thread notices: aborting the stream wakes its read, the stop event its waits
        between tries. Where that thread cannot notice soon (the job is still queued, or waits for
        the upstream's status line) the worker's stop thread ends the answer instead. The first
        request's outcome is the one kept.
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

    def finish(
        self,
        status,
        *,
        usage=None,
        final_text=None,
        final_reasoning=None,
        final_refusal=None,
        error_code="",
        error_message="",
        incomplete_reason="",
    ):
        """Save the final state and tell the tabs; only the first call counts. Never raises.

        A stop requested before decides the status and the error; the text and any usage the
        upstream reported stay. The write is tried again while the database is unavailable; the
        job counts as ended only once it is written (see save_final).
        """
        with self.lock:
            if self.ending:
                return
            self.ending = True
            self._flush_locked(time.monotonic())
            texts = {name: self.text(name) for name, _ in STREAMS}
            first_token_at = self.first_token_at
            stop = self.stop_outcome
        try:
            if stop is not None:
                status, error_code, error_message = stop["status"], stop["error_code"], stop["error_message"]
                incomplete_reason = ""
            if final_text is not None:
                texts["text"] = final_text
            if final_reasoning:
                texts["reasoning"] = final_reasoning
            if final_refusal:
                texts["refusal"] = final_refusal
            fields = dict(
                texts,
                status=status,
                error_code=Message.fit("error_code", error_code),
                error_message=error_message,
                incomplete_reason=Message.fit("incomplete_reason", incomplete_reason),
                finished_at=timezone.now(),
                first_token_at=first_token_at,
            )
            if self.response_id:
                fields["response_id"] = Message.fit("response_id", self.response_id)
            if self.model:
                fields["model"] = Message.fit("model", self.model)
            if stop is not None and stop["status"] == Message.Status.CANCELLED:
                # The request is on the row even when this process heard of it first, before
                # MessageQuerySet.request_stop wrote it; a time written there before stays.
                fields["stop_requested_at"] = Coalesce(
                    F("stop_requested_at"), Value(stop["requested_at"], output_field=DateTimeField())
                )
            if usage is not None:
                fields.update(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    total_tokens=usage.total_tokens,
                    cached_tokens=usage.cached_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                )
            self.final = fields
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
            handed_over, self.unsaved = not self.unsaved, True
            if handed_over:
                logger.error(
                    "Answer %s could not be saved for %s s; this process's maintenance goes on trying",
                    self.message_id,
                    settings.CHAT_DATABASE_RETRY_SECONDS,
                    extra={"database_retry": "final save handed over", "message_id": self.message_id},
                )
            return False
        except Error:
            if "text" not in self.final:
                raise  # even the plain failure below was refused: finish() lets the job go
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
        if message is None:
            logger.warning("Answer %s was already finished elsewhere; kept that state", self.message_id)
        else:
            with self.lock:
                self.parts.update({name: [getattr(message, name)] for name, _ in STREAMS})
            self.publish(protocol.done_event(message))
        self.worker.forget(self)
        return True

    def _write_final(self):
        return Message.objects.finish_answer(self.message_id, **self.final)


class StreamWorker:
    """The per-process pool of answer threads, with its checkpointer, stop thread and maintenance
    loop (heartbeat, stop requests, unsaved answers, reapers)."""

    def __init__(self, threads=None):
        self.id = uuid.uuid4()
        self.threads = threads or settings.CHAT_WORKER_THREADS
        self.jobs = {}
        self.jobs_lock = threading.Lock()
        self.queue = queue.SimpleQueue()
        self.scheduler = FlushScheduler()
        self.checkpointer = Checkpointer()
        self.sessions = threading.local()
        # The server's event loop, once known: the reapers tell browsers through it.
        self.loop = None
        self._stopping = threading.Event()
        self._unattended = queue.SimpleQueue()  # stopped jobs no pool thread attends
        self._jobless = set()  # own unfinished answers seen without a job at the last heartbeat
        self._reap_others_after = 0.0  # monotonic; later after the database was unavailable
        self._database_trouble = False
        self.register()
        targets = [(self._serve, f"answer-{number}") for number in range(self.threads)]
        targets += [(self._maintain, "answer-maintenance"), (self._end_unattended, "answer-stops")]
        self._threads = [
            threading.Thread(target=closing_connections(target), name=name, daemon=True) for target, name in targets
        ]
        for thread in self._threads:
            thread.start()

    # --- jobs -------------------------------------------------------------------------------

    def client_for(self, model):
        """The upstream client for a model, remote or local; each pool thread keeps its own session.

        The local model is reached in-process (chat/localmodel/transport.py), not over HTTP: the
        site's own address may refuse it (ALLOWED_HOSTS, the HTTPS redirect), a proxy may stand
        in front of it. LOCAL_MODEL_BASE_URL sends its requests to another server instead.
        """
        session = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
        provider = providers.provider_for(model)
        if provider is not None and provider.local:
            if settings.LOCAL_MODEL_BASE_URL:
                base_url = f"{settings.LOCAL_MODEL_BASE_URL}/local/v1"
            else:
                base_url = transport.BASE_URL
                transport.mount(session)
            return UpstreamClient.from_settings(
                session=session,
                base_url=base_url,
                api_key=local_token(),
                # The local model answers one request at a time: waiting for it is not an error.
                timeout=max(settings.OPENRESPONSES_TIMEOUT, 300),
                temperature=settings.LOCAL_MODEL_TEMPERATURE,
                unavailable=provider.problem,
            )
        return UpstreamClient.from_settings(session=session)

    def submit(self, message_id, group, loop):
        self.loop = loop
        job = AnswerJob(self, str(message_id), group, loop)
        with self.jobs_lock:
            self.jobs[job.message_id] = job
        self.queue.put(job)
        return job

    def forget(self, job):
        with self.jobs_lock:
            if self.jobs.get(job.message_id) is job:
                del self.jobs[job.message_id]
        job.released.set()

    def job(self, message_id):
        with self.jobs_lock:
            return self.jobs.get(str(message_id))

    def notice_stops(self, message_ids, **outcome):
        """Tell this process's jobs among `message_ids` to stop (see AnswerJob.request_stop); no
        database work, so any thread may call it. Returns the ids of the jobs told."""
        told = []
        for message_id in message_ids:
            job = self.job(message_id)
            if job is not None:
                job.request_stop(**outcome)
                told.append(job.message_id)
        return told

    def end_unattended(self, job):
        """Have the stop thread end a stopped job whose own thread cannot (queued, or waiting for the
        upstream): the caller's thread never does an answer's work."""
        self._unattended.put(job)

    def _end_unattended(self):
        while True:
            job = self._unattended.get()
            if job is None:
                return
            job.finish(Message.Status.CANCELLED)  # the stop's outcome decides; finish() never raises
            reset_connections()

    def _serve(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                job.run()
            except Exception:  # run() ends its answer whatever happens; this thread must survive
                logger.exception("An answer thread hit an error outside its answer; it goes on")

    def close(self, timeout=5):
        """Stop this worker's threads once their current answers end (tests, shutdown)."""
        self._stopping.set()
        for _ in range(self.threads):
            self.queue.put(None)
        self._unattended.put(None)
        self.checkpointer.close(timeout)
        self.scheduler.close(timeout)
        for thread in self._threads:
            thread.join(timeout)

    # --- process liveness and maintenance --------------------------------------------------

    def register(self):
        close_old_connections()
        hostname = socket.gethostname()
        for process in ServerProcess.objects.filter(hostname=hostname).exclude(id=self.id):
            if not _pid_alive(process.pid):
                process.delete()
        ServerProcess.objects.update_or_create(
            id=self.id, defaults={"hostname": hostname, "pid": os.getpid(), "last_seen_at": timezone.now()}
        )
        reap_orphans()

    def heartbeat(self):
        updated = ServerProcess.objects.filter(id=self.id).update(last_seen_at=timezone.now())
        if not updated:
            self.register()

    def _maintain(self):
        last_heartbeat = time.monotonic()
        while not self._stopping.wait(STOP_POLL_INTERVAL):
            try:
                self.poll_stops()
                if time.monotonic() - last_heartbeat >= settings.CHAT_HEARTBEAT_INTERVAL:
                    last_heartbeat = time.monotonic()
                    self.maintain()
            except TRANSIENT_DATABASE_ERRORS as error:
                self._database_unavailable(error)
                continue
            except Exception:
                logger.exception("Answer maintenance failed; trying again")
                continue
            if self._database_trouble:
                self._database_trouble = False
                logger.info("The database is available again; answer maintenance goes on")

    def maintain(self):
        """One heartbeat's work: mark this process alive, write the answers whose final save is still
        pending, reap this process's lost answers and other processes' orphans."""
        reset_connections()
        self.heartbeat()
        self.save_unsaved()
        self.reap_lost()
        if time.monotonic() >= self._reap_others_after:
            reap_orphans(self.loop)

    def _database_unavailable(self, error):
        if not self._database_trouble:
            self._database_trouble = True
            logger.warning(
                "Answer maintenance cannot reach the database (%s: %s); trying again",
                type(error).__name__,
                _first_line(error),
                extra={"database_retry": "maintenance"},
            )
        # While this process could not reach the database, neither could the others mark
        # themselves alive: give them a full heartbeat timeout once it is back before taking their
        # answers for orphans.
        self._reap_others_after = time.monotonic() + settings.CHAT_HEARTBEAT_TIMEOUT
        reset_connections()

    def poll_stops(self):
        """Stops requested through the database (another process, a shell, a deactivation)."""
        with self.jobs_lock:
            ids = [message_id for message_id, job in self.jobs.items() if not job.stop_event.is_set()]
        if not ids:
            return
        requested = Message.objects.filter(pk__in=ids).stop_requested().values_list("pk", flat=True)
        self.notice_stops([str(message_id) for message_id in requested])

    def save_unsaved(self):
        """Write the final states the answer threads gave up on; they stay until written."""
        with self.jobs_lock:
            unsaved = [job for job in self.jobs.values() if job.unsaved]
        for job in unsaved:
            if not job.save_final():
                return  # the database is still unavailable: the next heartbeat tries again

    def reap_lost(self):
        """End this process's own unfinished answers that have no job here any more.

        A job is gone only through a bug, a thread that died, or a socket that went away between
        storing an answer and handing it over; other processes leave such answers alone, since
        this one is alive. Seen without a job at two heartbeats in a row: one just stored is
        handed over long before the next.
        """
        with self.jobs_lock:
            live = set(self.jobs)
        unfinished = Message.objects.unfinished().filter(worker=self.id).values_list("pk", flat=True)
        jobless = {str(message_id) for message_id in unfinished} - live
        lost, self._jobless = jobless & self._jobless, jobless
        if lost:
            count = end_answers(
                lost,
                "answer_lost",
                "The server lost track of this answer; the text so far was kept.",
                self.loop,
            )
            if count:
                logger.warning("Marked %s answers interrupted: this process had lost their jobs", count)

    def shutdown(self, timeout=15):
        """Save every answer in flight as interrupted; the server is going away.

        Called on the server's event loop thread, where the ORM may not run: the saving happens
        in a thread of its own, which this waits for.
        """
        saver = threading.Thread(target=self.interrupt_all, name="answer-shutdown")
        saver.start()
        saver.join(timeout)

    def interrupt_all(self, timeout=10):
        """Save every answer in flight as interrupted and tell its browsers (any thread but the loop).

        Each is a stop request: the answers' own threads (or the stop thread) save them, as for
        Stop, and this waits for them.
        """
        self._stopping.set()
        with self.jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.request_stop(
                Message.Status.INTERRUPTED,
                error_code="server_shutdown",
                error_message="The server restarted while this answer was being written.",
            )
        deadline = time.monotonic() + timeout
        for job in jobs:
            if not job.released.wait(max(0.0, deadline - time.monotonic())):
                logger.warning("Answer %s was not saved before shutdown; it will be reaped", job.message_id)
        try:
            reset_connections()
            ServerProcess.objects.filter(id=self.id).delete()
        except Error:
            logger.warning("Could not unregister this process; the others will reap it", exc_info=True)
        reset_connections()


def end_answers(message_ids, error_code, error_message, loop=None):
    """Mark unfinished answers interrupted, keeping their checkpoint, each through the one final
    save; tell the browsers following them through `loop` (the server's event loop) when known.
    Returns how many were ended."""
    relay = relay_for(loop) if loop is not None and not loop.is_closed() else None
    ended = 0
    for message_id in message_ids:
        message = Message.objects.finish_answer(
            message_id,
            status=Message.Status.INTERRUPTED,
            error_code=error_code,
            error_message=error_message,
            finished_at=timezone.now(),
        )
        if message is None:
            continue
        ended += 1
        if relay is not None:
            relay.publish(message.conversation.group_name, protocol.done_event(message))
    return ended


def reap_orphans(loop=None):
    """Mark answers whose server process is gone as interrupted, keeping their checkpoint, and
    tell the browsers following them (through `loop`, the server's event loop, when known)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    alive = ServerProcess.objects.filter(last_seen_at__gte=cutoff).values("id")
    orphans = list(Message.objects.unfinished().exclude(worker__in=alive).values_list("id", flat=True))
    count = end_answers(
        orphans,
        "server_stopped",
        "The server stopped while this answer was being written; the text so far was kept.",
        loop,
    )
    # Ended answers are recorded by finish_answer; this catches the rest, e.g. answers deleted
    # while being written, which count their reservation.
    UsageEntry.objects.record_ended()
    if count:
        logger.warning("Marked %s answers interrupted: their server process is gone", count)
    ServerProcess.objects.filter(last_seen_at__lt=cutoff).delete()
    return count


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_worker = None
_worker_lock = threading.Lock()


def get_worker():
    """The process's StreamWorker, started on first use (or at server start, see start_with_server).

    For the server only (it starts 16 threads and registers the process): anything that merely
    asks for a stop uses running_worker(). The first call writes to the database: call it from
    synchronous code.
    """
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = StreamWorker()
        return _worker


def running_worker():
    """This process's StreamWorker, or None where none runs (a shell, a management command, a
    process that has served no answer yet). Never starts one."""
    return _worker


def request_stop(messages):
    """Ask the answers among `messages` (a Message QuerySet) still being written to stop, in
    whichever process they are generated; returns their ids.

    From any thread of any process, inside a transaction or not: it records the request on the
    rows (MessageQuerySet.request_stop) and tells this process's own jobs among them at once,
    at commit. Nothing of the answers' work happens here: their own threads save them as
    cancelled, with their text so far, and tell the tabs.
    """
    ids = [str(message_id) for message_id in messages.unfinished().values_list("pk", flat=True)]
    if not ids:
        return ids
    worker = running_worker()
    told = []
    if worker is not None:
        if connection.in_atomic_block:
            transaction.on_commit(lambda: worker.notice_stops(ids))
        else:
            told = worker.notice_stops(ids)
    try:
        Message.objects.filter(pk__in=ids).request_stop()
    except Error:
        if connection.in_atomic_block:
            raise
        # Outside a transaction a dropped connection is closed here, for the caller's next query:
        # the cleanup of channels' database_sync_to_async may look at another context's connections.
        connection.close_if_unusable_or_obsolete()
        if len(told) < len(ids):
            raise
        # This process generates all of them and was told: they stop without the record.
        logger.warning("Could not record the stop of answers %s; this process stops them", ", ".join(ids))
    return ids


def current_loop():
    return asyncio.get_running_loop()


def start_with_server():
    """Tie the worker to daphne's life: started as soon as the reactor runs (so a restarted server
    reaps the answers its previous life left unfinished without waiting for a browser), and on
    SIGTERM or SIGINT every answer in flight is saved as interrupted and the browsers are told
    before the server stops.

    Call at import of the ASGI application, before daphne's server registers its own shutdown
    trigger (which cancels every consumer): ours must run first.
    """
    import sys

    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    def start():
        loop = asyncio.get_event_loop()  # daphne's, running: this is called on its thread
        threading.Thread(target=_start_logging_failure, args=(loop,), name="answer-worker-start", daemon=True).start()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *args: reactor.callFromThread(_stop_gracefully, reactor))

    reactor.callWhenRunning(start)
    # A stop that did not come through the signals above still saves the answers.
    reactor.addSystemEventTrigger("before", "shutdown", _interrupt_answers)


def _interrupt_answers():
    worker = running_worker()
    if worker is not None:
        worker.shutdown()


def _stop_gracefully(reactor):
    """Save the answers in a thread (the ORM may not run on the loop), give the loop a moment to
    deliver their message.done frames, then stop the reactor."""
    if getattr(_stop_gracefully, "started", False):
        return
    _stop_gracefully.started = True

    def save_then_stop():
        try:
            worker = running_worker()
            if worker is not None:
                worker.interrupt_all()
        finally:
            reactor.callFromThread(reactor.callLater, 0.5, reactor.stop)

    threading.Thread(target=save_then_stop, name="answer-shutdown").start()


def _start_logging_failure(loop):
    try:
        get_worker().loop = loop
    except Exception:
        logger.exception("The answer worker could not start; it will be started on the first message")
