"""The stream worker: generates answers in background threads and relays them to browsers.

One `AnswerJob` per assistant message. A thread from the `StreamWorker` pool opens the upstream
stream and feeds its events to the job, which

- coalesces deltas: a delta after a quiet period is flushed at once; deltas arriving faster than
  the flush window are joined and flushed at the end of that window by the `FlushScheduler`
  thread, so none waits longer than one window even when the upstream then goes quiet;
- keeps the text flushed so far with its `seq` (the snapshot a subscriber starts from) and, when
  the cache is shared between processes, writes it there *before* publishing the delta, which is
  what makes resume gap-free (docs/protocol.md);
- checkpoints the text so far to the database about once a second, and saves once at the end.

Threads never run coroutines themselves: events go to the sockets through the relay of the
server's event loop captured when the job was created (chat/relay.py), in order.
"""

import asyncio
import heapq
import json
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
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import close_old_connections
from django.utils import timezone

from chat import protocol, providers
from chat.localmodel.views import local_token
from chat.models import Message, ServerProcess
from chat.relay import relay_for
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

# Which frame each kind of streamed text goes out as, in the order a flush sends them.
STREAMS = (
    ("reasoning", protocol.MESSAGE_REASONING_DELTA),
    ("refusal", protocol.MESSAGE_REFUSAL_DELTA),
    ("text", protocol.MESSAGE_DELTA),
)
FINAL_STATUS = {
    "completed": Message.Status.COMPLETED,
    "incomplete": Message.Status.INCOMPLETE,
    "failed": Message.Status.FAILED,
}


def snapshot_key(message_id):
    return f"chat:snapshot:{message_id}"


def stop_key(message_id):
    return f"chat:stop:{message_id}"


def read_snapshot(message_id):
    """`{seq, status, text, reasoning, refusal}` of an answer in flight, or None before its first flush.

    An answer generated in this process is read from its job; one generated elsewhere, or just
    finished, from the cache (written only when the cache is shared between processes).
    """
    worker = _worker
    job = worker.job(message_id) if worker is not None else None
    snapshot = job.snapshot() if job is not None else None
    return snapshot if snapshot is not None else cache.get(snapshot_key(message_id))


class FlushScheduler:
    """One thread that runs callbacks at given moments (the end of each job's flush window)."""

    def __init__(self):
        self._heap = []
        self._counter = 0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="flush-scheduler", daemon=True)
        self._thread.start()

    def call_at(self, when, callback):
        with self._condition:
            self._counter += 1
            heapq.heappush(self._heap, (when, self._counter, callback))
            if self._heap[0][2] is callback:
                self._condition.notify()

    def _run(self):
        while True:
            with self._condition:
                while not self._heap:
                    self._condition.wait()
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


class AnswerJob:
    """The state of one answer being generated; see the module docstring."""

    def __init__(self, worker, message_id, group, loop, local_base_url=""):
        self.worker = worker
        self.message_id = message_id
        self.local_base_url = local_base_url
        self.group = group
        self.relay = relay_for(loop)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.finalized = False
        self.stream = None

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
            if self.finalized:
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
            if self.has_pending and not self.finalized:
                self._flush_locked(time.monotonic())

    def _flush_locked(self, now):
        """Send what is pending; the cache snapshot is written before any group_send."""
        if not self.has_pending:
            return
        frames = []
        for name, frame_type in STREAMS:
            pending = self.pending[name]
            if not pending:
                continue
            delta = "".join(pending)
            pending.clear()
            self.parts[name].append(delta)
            self.seq += 1
            frames.append((self.seq, frame_type, delta))
        self.has_pending = False
        self.last_flush = now
        if self.worker.shared_snapshots:
            self._write_snapshot(Message.Status.STREAMING)
        for seq, frame_type, delta in frames:
            frame = json.dumps({"type": frame_type, "message": self.message_id, "seq": seq, "delta": delta})
            self.publish({"type": protocol.EVENT_DELTA, "message": self.message_id, "seq": seq, "frame": frame})

    def _snapshot_locked(self, status):
        snapshot = {"seq": self.seq, "status": status}
        for name, _ in STREAMS:
            snapshot[name] = self.text(name)
        return snapshot

    def _write_snapshot(self, status, timeout=3600):
        cache.set(snapshot_key(self.message_id), self._snapshot_locked(status), timeout)

    def snapshot(self):
        """The text flushed so far, consistent with `seq` (None before the first flush)."""
        with self.lock:
            if not self.seq:
                return None
            return self._snapshot_locked(Message.Status.STREAMING)

    def checkpoint_if_due(self):
        """Save the text so far about once per checkpoint interval (bounded writes, crash safety)."""
        now = time.monotonic()
        if now - self.last_checkpoint < settings.CHAT_CHECKPOINT_INTERVAL:
            return
        self.last_checkpoint = now
        with self.lock:
            if self.finalized:
                return
            fields = {name: self.text(name) for name, _ in STREAMS}
        # No lock held here: a database write can be slow and the flush thread must not wait.
        Message.objects.filter(pk=self.message_id, status=Message.Status.STREAMING).update(
            checkpointed_at=timezone.now(), first_token_at=self.first_token_at, **fields
        )

    def run(self):
        """Generate the answer; called in a pool thread."""
        close_old_connections()
        try:
            self._run()
        except Exception as error:
            logger.exception("Answer %s failed unexpectedly", self.message_id)
            self.finish(
                Message.Status.FAILED,
                error_code="internal_error",
                error_message=f"The server hit an unexpected error ({type(error).__name__}).",
            )
        finally:
            self.worker.forget(self)
            close_old_connections()

    def _run(self):
        if self.stop_event.is_set():
            return  # stopped while queued: stop() saved it, and nothing goes upstream
        message = Message.objects.select_related("conversation").filter(pk=self.message_id).first()
        if message is None or not message.claim(self.worker.id):
            return  # deleted, or finished elsewhere while it waited in the queue
        self.publish(protocol.status_event(self.message_id, Message.Status.STREAMING))
        conversation = message.conversation
        client = self.worker.client_for(message.model or conversation.model, self.local_base_url)
        try:
            stream = client.stream_response(
                message.model or conversation.model,
                conversation.upstream_input(before=message),
                conversation.instructions,
                stop_event=self.stop_event,
            )
        except UpstreamError as error:
            self.finish(Message.Status.FAILED, error_code=error.code, error_message=error.message)
            return
        with self.lock:
            self.stream = stream
            # stop() sets stop_event before it looks for the stream: one of us sees the other.
            stopped = self.stop_event.is_set()
        if stopped:
            stream.abort()
            stream.close()
            return
        try:
            for event in stream:
                if self.finalized:
                    break
                if self.handle(event):
                    return
                self.checkpoint_if_due()
        except UpstreamError as error:
            if self.stream_error:  # an `error` event then EOF: the event says what went wrong
                code, text = self.stream_error
                self.finish(Message.Status.FAILED, error_code=code, error_message=text)
            else:
                self.finish(Message.Status.FAILED, error_code=error.code, error_message=error.message)
            return
        # The stream ended without a terminal event and without an error: only stop() ends it so,
        # and stop() has saved the answer; should anything else, the answer still gets a final state.
        self.finish(
            Message.Status.FAILED,
            error_code="stream_truncated",
            error_message="The API ended the stream before finishing the answer.",
        )

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
            self.finish(
                FINAL_STATUS[event.status],
                usage=event.usage,
                final_text=self._final_text(event),
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

    def stop(self, status=Message.Status.CANCELLED, error_code="", error_message=""):
        """End the answer now from any thread: save what there is and close the upstream."""
        self.stop_event.set()
        # Saved before the upstream is closed: the worker thread, woken by the closed stream or
        # the ended retry wait, must find the answer already final rather than call it failed.
        self.finish(status, error_code=error_code, error_message=error_message, stopping=True)
        with self.lock:
            stream = self.stream
        if stream is not None:
            stream.abort()

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
        stopping=False,
    ):
        """Save the final state once and tell the browsers; later calls do nothing."""
        with self.lock:
            if self.finalized or (self.stop_event.is_set() and not stopping):
                return  # once stop() is under way, it alone decides how the answer ends
            self._flush_locked(time.monotonic())
            self.finalized = True
            texts = {name: self.text(name) for name, _ in STREAMS}
            first_token_at = self.first_token_at
        if final_text is not None:
            texts["text"] = final_text
        if final_reasoning:
            texts["reasoning"] = final_reasoning
        if final_refusal:
            texts["refusal"] = final_refusal
        fields = dict(
            texts,
            status=status,
            error_code=error_code[:100],
            error_message=error_message,
            incomplete_reason=incomplete_reason[:100],
            finished_at=timezone.now(),
            first_token_at=first_token_at,
        )
        if self.response_id:
            fields["response_id"] = self.response_id[:200]
        if self.model:
            fields["model"] = self.model[:200]
        if usage is not None:
            fields.update(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
                cached_tokens=usage.cached_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            )
        close_old_connections()
        saved = Message.objects.filter(pk=self.message_id, status__in=Message.UNFINISHED).update(**fields)
        if not saved:
            logger.warning("Answer %s was already finished elsewhere; kept that state", self.message_id)
            return
        message = Message.objects.get(pk=self.message_id)
        with self.lock:
            self.parts.update({name: [value] for name, value in texts.items()})
            self._write_snapshot(status, timeout=60)
        self.publish(protocol.done_event(message))


class StreamWorker:
    """The per-process pool of answer threads, with its heartbeat, reaper and stop poller."""

    def __init__(self, threads=None):
        self.id = uuid.uuid4()
        self.threads = threads or settings.CHAT_WORKER_THREADS
        self.jobs = {}
        self.jobs_lock = threading.Lock()
        self.queue = queue.SimpleQueue()
        self.scheduler = FlushScheduler()
        self.sessions = threading.local()
        # With a shared cache (Redis), other processes resume answers from snapshots written on
        # every flush; a process-local cache is read through the jobs themselves (read_snapshot).
        self.shared_snapshots = not isinstance(caches["default"], LocMemCache)
        # The server's event loop, once known: the reaper tells browsers through it.
        self.loop = None
        self._stopping = threading.Event()
        self.register()
        self._threads = [
            threading.Thread(target=self._serve, name=f"answer-{number}", daemon=True) for number in range(self.threads)
        ]
        self._threads.append(threading.Thread(target=self._maintain, name="answer-maintenance", daemon=True))
        for thread in self._threads:
            thread.start()

    # --- jobs -------------------------------------------------------------------------------

    def client_for(self, model, local_base_url=""):
        """The upstream client for a model, remote or local; each pool thread keeps its own session.

        `local_base_url` is this server's own address, where the local model is served.
        """
        session = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
        provider = providers.provider_for(model)
        if provider is not None and provider.local:
            base = settings.LOCAL_MODEL_BASE_URL or local_base_url
            return UpstreamClient.from_settings(
                session=session,
                base_url=f"{base}/local/v1",
                api_key=local_token(),
                # The local model answers one request at a time: waiting for it is not an error.
                timeout=max(settings.OPENRESPONSES_TIMEOUT, 300),
                temperature=settings.LOCAL_MODEL_TEMPERATURE,
            )
        return UpstreamClient.from_settings(session=session)

    def submit(self, message_id, group, loop, local_base_url=""):
        self.loop = loop
        job = AnswerJob(self, str(message_id), group, loop, local_base_url)
        with self.jobs_lock:
            self.jobs[job.message_id] = job
        self.queue.put(job)
        return job

    def forget(self, job):
        with self.jobs_lock:
            self.jobs.pop(job.message_id, None)

    def job(self, message_id):
        with self.jobs_lock:
            return self.jobs.get(str(message_id))

    def request_stop(self, message_id):
        """Stop an answer generated by any process; True if it was this process's."""
        job = self.job(message_id)
        if job is not None:
            job.stop()
            return True
        cache.set(stop_key(message_id), True, 600)
        return False

    def _serve(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            job.run()

    def close(self, timeout=5):
        """Stop this worker's threads once their current answers end (tests, shutdown)."""
        self._stopping.set()
        for _ in range(self.threads):
            self.queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # --- process liveness -------------------------------------------------------------------

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
        while not self._stopping.wait(0.25):
            try:
                self._poll_stops()
                if time.monotonic() - last_heartbeat >= settings.CHAT_HEARTBEAT_INTERVAL:
                    last_heartbeat = time.monotonic()
                    close_old_connections()
                    self.heartbeat()
                    reap_orphans(self.loop)
            except Exception:
                logger.exception("Answer maintenance failed; trying again")

    def _poll_stops(self):
        """Stops requested through another process arrive as cache keys."""
        with self.jobs_lock:
            ids = list(self.jobs)
        if not ids:
            return
        requested = cache.get_many([stop_key(message_id) for message_id in ids])
        for message_id in ids:
            if stop_key(message_id) in requested:
                cache.delete(stop_key(message_id))
                job = self.job(message_id)
                if job is not None:
                    close_old_connections()
                    job.stop()

    def shutdown(self, timeout=15):
        """Save every answer in flight as interrupted; the server is going away.

        Called on the server's event loop thread, where the ORM may not run: the saving happens
        in a thread of its own, which this waits for.
        """
        saver = threading.Thread(target=self.interrupt_all, name="answer-shutdown")
        saver.start()
        saver.join(timeout)

    def interrupt_all(self):
        """Save every answer in flight as interrupted and tell its browsers (any thread but the loop)."""
        self._stopping.set()
        close_old_connections()
        with self.jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            try:
                job.stop(
                    Message.Status.INTERRUPTED,
                    error_code="server_shutdown",
                    error_message="The server restarted while this answer was being written.",
                )
            except Exception:
                logger.exception("Could not save answer %s at shutdown", job.message_id)
        ServerProcess.objects.filter(id=self.id).delete()
        close_old_connections()


def reap_orphans(loop=None):
    """Mark answers whose server process is gone as interrupted, keeping their checkpoint, and
    tell the browsers following them (through `loop`, the server's event loop, when known)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    alive = ServerProcess.objects.filter(last_seen_at__gte=cutoff).values("id")
    orphans = list(Message.objects.unfinished().exclude(worker__in=alive).values_list("id", flat=True))
    count = Message.objects.filter(pk__in=orphans, status__in=Message.UNFINISHED).update(
        status=Message.Status.INTERRUPTED,
        error_code="server_stopped",
        error_message="The server stopped while this answer was being written; the text so far was kept.",
        finished_at=timezone.now(),
    )
    if count:
        logger.warning("Marked %s answers interrupted: their server process is gone", count)
        if loop is not None and not loop.is_closed():
            relay = relay_for(loop)
            for message in Message.objects.filter(pk__in=orphans).select_related("conversation"):
                relay.publish(message.conversation.group_name, protocol.done_event(message))
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

    The first call writes to the database: call it from synchronous code.
    """
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = StreamWorker()
        return _worker


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
    if _worker is not None:
        _worker.shutdown()


def _stop_gracefully(reactor):
    """Save the answers in a thread (the ORM may not run on the loop), give the loop a moment to
    deliver their message.done frames, then stop the reactor."""
    if getattr(_stop_gracefully, "started", False):
        return
    _stop_gracefully.started = True

    def save_then_stop():
        try:
            if _worker is not None:
                _worker.interrupt_all()
        finally:
            reactor.callFromThread(reactor.callLater, 0.5, reactor.stop)

    threading.Thread(target=save_then_stop, name="answer-shutdown").start()


def _start_logging_failure(loop):
    try:
        get_worker().loop = loop
    except Exception:
        logger.exception("The answer worker could not start; it will be started on the first message")
