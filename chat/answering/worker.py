"""The stream worker: this process's pool of answer threads and the jobs it carries.

Answers run on a `ThreadPoolExecutor` of CHAT_WORKER_THREADS threads; beyond that they wait in its
queue and the tabs see them queued. Beside the pool: one thread for stopped answers no pool thread
attends (queued, or waiting for the upstream), one for the titles the model writes after a first
answer (chat/answering/titles.py), the checkpointer's, and the maintenance loop's.
The worker is built and closed by the process's runtime (chat/runtime.py), which it reaches the
relays and the local model through; nothing here starts on import or on first use.

Nothing strands an answer: a job counts as ended only once its final save is written; past
CHAT_DATABASE_RETRY_SECONDS the maintenance loop goes on trying while the pool thread serves the
next answer (chat/answering/job.py, chat/answering/maintenance.py).
"""

import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from django.conf import settings
from django.db import Error, connections

from chat import providers
from chat.answering.checkpoints import Checkpointer
from chat.answering.database import reset_connections
from chat.answering.job import AnswerJob
from chat.answering.maintenance import Maintenance
from chat.answering.titles import TitleWriter
from chat.localmodel import transport
from chat.models import Message, ServerProcess

logger = logging.getLogger(__name__)

# Thread names: the pool's are answer-pool_0, answer-pool_1..., the stop thread's answer-stops_0.
POOL_THREADS = "answer-pool"
STOP_THREAD = "answer-stops"


class StreamWorker:
    def __init__(self, runtime, threads=None):
        self.runtime = runtime
        self.id = uuid.uuid4()
        self.threads = threads or settings.CHAT_WORKER_THREADS
        self.jobs = {}
        self.jobs_lock = threading.Lock()
        self.sessions = threading.local()
        # The server's event loop, once known: the reapers tell browsers through it.
        self.loop = None
        self.maintenance = Maintenance(self)
        self.maintenance.register()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix=POOL_THREADS)
        self.stops = ThreadPoolExecutor(1, thread_name_prefix=STOP_THREAD)
        self.checkpointer = Checkpointer()
        self.titles = TitleWriter(self)
        self.maintenance.start()

    # --- jobs -------------------------------------------------------------------------------

    def client_for(self, model):
        """The upstream client for a model; each pool thread keeps its own session, on which the
        local model's in-process adapter is mounted (chat/localmodel/transport.py)."""
        session = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
            transport.mount(session, self.runtime)
        return providers.provider_for(model).client(session)

    def submit(self, message_id, group, loop, answer_input=None):
        """Queue the answer `message_id` for a pool thread; its events go to `group` through the
        relay of `loop` (the server's event loop). `answer_input` (models.AnswerInput), from the
        verb that queued it, spares the claim its reads."""
        job = self._register(message_id, group, loop, answer_input)
        self.pool.submit(self._serve, job)
        return job

    def run_one(self, message_id, group, loop, answer_input=None):
        """Generate one answer on the calling thread and return its job (tests, tools)."""
        job = self._register(message_id, group, loop, answer_input)
        job.run()
        return job

    def _register(self, message_id, group, loop, answer_input):
        self.loop = loop
        job = AnswerJob(self, str(message_id), group, loop, answer_input)
        with self.jobs_lock:
            self.jobs[job.message_id] = job
        return job

    @staticmethod
    def _serve(job):
        try:
            job.run()
        except Exception:  # run() ends its answer whatever happens; the pool thread must survive
            logger.exception("An answer thread hit an error outside its answer; it goes on")

    def forget(self, job):
        with self.jobs_lock:
            if self.jobs.get(job.message_id) is job:
                del self.jobs[job.message_id]
        job.released.set()

    def job(self, message_id):
        with self.jobs_lock:
            return self.jobs.get(str(message_id))

    def job_ids(self):
        with self.jobs_lock:
            return set(self.jobs)

    def unstopped_ids(self):
        with self.jobs_lock:
            return [message_id for message_id, job in self.jobs.items() if not job.stop_event.is_set()]

    def unsaved_jobs(self):
        with self.jobs_lock:
            return [job for job in self.jobs.values() if job.unsaved]

    def relay(self):
        """The relay of the server's event loop, once known and while it runs; else None."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return None
        return self.runtime.relay_for(loop)

    # --- stops ------------------------------------------------------------------------------

    def notice_stops(self, message_ids, **outcome):
        """Tell this process's jobs among `message_ids` to stop (see AnswerJob.request_stop); no
        database work, so any thread may call it, the event loop's included. Returns the ids of
        the jobs told."""
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
        self.stops.submit(self._end_stopped, job)

    @staticmethod
    def _end_stopped(job):
        job.finish(Message.Status.CANCELLED)  # the stop's outcome decides; finish() never raises
        reset_connections()

    # --- the end ----------------------------------------------------------------------------

    def close(self, timeout=5):
        """Stop this worker's threads once their current answers end (tests, shutdown)."""
        self.maintenance.stop(timeout)
        self.titles.close()
        for pool, threads in ((self.stops, 1), (self.titles.pool, 1), (self.pool, self.threads)):
            close_connections_of(pool, threads, timeout)
            pool.shutdown(wait=False, cancel_futures=True)
        self.checkpointer.close(timeout)

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
        self.maintenance.stopping.set()
        self.titles.close()  # a title is a nicety: it must not hold the process past its answers
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


def close_connections_of(pool, threads, timeout):
    """Have each of the pool's threads close its database connections, so that a closed worker
    leaves none open (PostgreSQL will not drop a database that has connections).

    One task per thread: the barrier holds each thread that took one until all have, so no thread
    takes two. A thread still busy with an answer past `timeout` keeps its connection until it
    ends.
    """
    barrier = threading.Barrier(threads, timeout=timeout)

    def close():
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        connections.close_all()

    futures = [pool.submit(close) for _ in range(threads)]
    concurrent.futures.wait(futures, timeout)
