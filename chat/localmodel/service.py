"""The process's local model service: one model thread, one generation at a time, a bounded queue.

Every request for the local model, from the HTTP endpoint (chat/localmodel/endpoint.py) or from the
site's own worker in-process (chat/localmodel/transport.py), is submitted here as a `Generation`
with a sink, a callable the model thread hands its output to:

    ("queued", None)             another generation holds the model: this one waits its turn
    ("started", None)            its turn came
    ("piece", Piece)             text; the last piece carries the finish reason and the usage
    ("error", exception)         it failed; nothing follows
    ("end", None)                nothing follows

Waiting costs no thread: a waiting generation is an entry in a deque, its HTTP request a coroutine
awaiting its sink on the event loop, and the site's own answers wait in the worker thread that
already carries them. Requests over HTTP are refused once LOCAL_MODEL_QUEUE are waiting
(`QueueFull`, answered 503 with Retry-After); the site's own answers are never refused, as the
worker's pool (CHAT_WORKER_THREADS) already bounds them. `Generation.cancel()` takes a waiting
request out of the queue at once and stops a running one at the next prompt batch or token.

The process's service is its runtime's (chat/runtime.py: `current().local_model`); tests and tools
observe it through `listen()` and swap it (for one around a fake model) through the runtime.
"""

import collections
import logging
import math
import threading
import time

from django.conf import settings

from chat.localmodel.runtime import ContextTooLong, LocalModel, PromptProgress

logger = logging.getLogger(__name__)

# Retry-After when there is no generation yet to measure, and its bounds in seconds.
DEFAULT_RETRY_AFTER = 5
MAX_RETRY_AFTER = 120


class QueueFull(Exception):
    def __init__(self, waiting, retry_after):
        super().__init__(f"{waiting} requests are waiting for the local model already.")
        self.waiting = waiting
        self.retry_after = retry_after


class Generation:
    """One request's turn on the model; see the module docstring for what its sink receives."""

    WAITING, RUNNING, DONE = "waiting", "running", "done"

    def __init__(self, service, request, sink, bounded):
        self.service = service
        self.request = request
        self.sink = sink
        self.bounded = bounded
        self.state = self.WAITING
        self.stop_event = threading.Event()
        self.prompt_evaluated = 0
        self.prompt_tokens = 0
        self.outcome = None  # "finished", "stopped", "cancelled" (while waiting) or "failed"

    def cancel(self):
        """The client is gone: leave the queue, or stop at the next prompt batch or token."""
        self.service.cancel(self)


class LocalModelService:
    def __init__(self, model=None, queue_limit=None):
        self.model = model if model is not None else LocalModel()
        self.queue_limit = settings.LOCAL_MODEL_QUEUE if queue_limit is None else queue_limit
        self.waiting = collections.deque()
        self.running = None
        self.condition = threading.Condition()
        self.listeners = []
        self.durations = collections.deque(maxlen=8)  # seconds of recent generations
        self._thread = None
        self._closed = False

    # --- requests ---------------------------------------------------------------------------

    def submit(self, request, sink, *, bounded=True):
        """Queue a generation; QueueFull when `bounded` and LOCAL_MODEL_QUEUE are waiting."""
        with self.condition:
            if bounded and len(self.waiting) >= self.queue_limit:
                error = QueueFull(len(self.waiting), self.retry_after())
                self._notify("refused", None)
                raise error
            generation = Generation(self, request, sink, bounded)
            if self.running is not None or self.waiting:
                self._hand(generation, "queued")
            self.waiting.append(generation)
            self._notify("queued", generation)
            self._closed = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="local-model", daemon=True)
                self._thread.start()
            self.condition.notify()
        return generation

    def close(self):
        """Let the model thread end once the queue is empty (a runtime that is closed)."""
        with self.condition:
            self._closed = True
            self.condition.notify()

    def cancel(self, generation):
        with self.condition:
            if generation.state == Generation.WAITING:
                self.waiting.remove(generation)
                generation.state = Generation.DONE
                generation.outcome = "cancelled"
                self._notify("cancelled", generation)
            elif generation.state == Generation.RUNNING:
                generation.stop_event.set()

    def retry_after(self):
        """Seconds until a place in the queue is likely to be free: one generation's time."""
        if not self.durations:
            return DEFAULT_RETRY_AFTER
        average = sum(self.durations) / len(self.durations)
        return min(MAX_RETRY_AFTER, max(1, math.ceil(average)))

    # --- observing --------------------------------------------------------------------------

    def listen(self, callback):
        """Call `callback(event, generation)` on queued, refused (generation None), cancelled,
        started, prompt (after each prompt batch), piece (after each piece handed on), stopped,
        finished and failed. It runs on the
        thread where the event happens, the model thread for most: it must be quick. Returns a
        function that stops the calls."""
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    def _notify(self, event, generation):
        for callback in list(self.listeners):
            try:
                callback(event, generation)
            except Exception:
                logger.exception("A local model listener failed")

    # --- the model thread -------------------------------------------------------------------

    def _hand(self, generation, kind, value=None):
        """Give one item to a generation's sink; a sink that fails (its event loop closed) ends it."""
        try:
            generation.sink((kind, value))
        except Exception:
            logger.warning("The reader of a local model answer is gone; stopping it", exc_info=True)
            generation.stop_event.set()

    def _serve(self):
        while True:
            with self.condition:
                while not self.waiting and not self._closed:
                    self.condition.wait()
                if not self.waiting:
                    self._thread = None  # a request submitted later starts a new one
                    return
                generation = self.waiting.popleft()
                generation.state = Generation.RUNNING
                self.running = generation
            started = time.monotonic()
            try:
                self._run(generation)
            finally:
                with self.condition:
                    self.running = None
                    generation.state = Generation.DONE
                self.durations.append(time.monotonic() - started)
                self._notify(generation.outcome, generation)

    def _run(self, generation):
        self._hand(generation, "started")
        self._notify("started", generation)
        finished = False
        pieces = self.model.generate(generation.request, generation.stop_event)
        try:
            for piece in pieces:
                if isinstance(piece, PromptProgress):
                    generation.prompt_evaluated, generation.prompt_tokens = piece.evaluated, piece.total
                    self._notify("prompt", generation)
                    continue
                if generation.stop_event.is_set():
                    break
                self._hand(generation, "piece", piece)
                self._notify("piece", generation)
                finished = finished or piece.finish_reason is not None
        except Exception as error:  # handed to the reader, which answers it
            if not isinstance(error, ContextTooLong):
                logger.exception("The local model failed")
            generation.outcome = "failed"
            self._hand(generation, "error", error)
            return
        finally:
            pieces.close()
        generation.outcome = "finished" if finished else "stopped"
        self._hand(generation, "end")
