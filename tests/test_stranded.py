"""Nothing strands an answer: a database unavailable for a while at any moment of an answer's life.

Each test holds a real lock on the test database from a connection of its own (tests/outage.py)
while the answer starts, checkpoints, ends or is stopped, waits until the worker has retried (its
log), then lets go. Through the real consumer, the worker's threads and the loopback upstream; the
same tests run on SQLite and, in the second run, on PostgreSQL.
"""

import asyncio
import threading
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import DataError
from django.utils import timezone

from chat.models import Conversation, Message, MessageQuerySet, ServerProcess
from tests.outage import DatabaseOutage
from tests.test_outcomes import (
    assert_outcome,
    assert_still_usable,
    close,
    partial,
    send,
    until_done,
    usage,
)
from tests.upstream import Gate, Pause, answer, stream
from tests.websocket import connect, receive, receive_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("short_busy_timeout"),
]


@pytest.fixture(autouse=True)
def no_send_rate_limit(settings):
    settings.CHAT_SENDS_PER_MINUTE = 0


def gated_answer(deltas, gate, pause=0.0):
    """A whole answer whose deltas stream at once (or `pause` apart) and whose end waits for `gate`."""
    steps = answer(deltas, pause=pause)
    end_of_deltas = next(
        index for index, step in enumerate(steps) if isinstance(step, bytes) and b"response.output_text.done" in step
    )
    steps.insert(end_of_deltas, Gate(gate))
    return steps


async def read_until_streamed(exchange, text):
    while exchange.streamed() != text:
        exchange.frames.append(await receive(exchange.communicator))


async def row(message_id):
    return await Message.objects.aget(pk=message_id)


async def wait_for_row(message_id, condition, what, timeout=30):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await row(message_id)
        if condition(found):
            return found
        assert loop.time() < deadline, f"{what} within {timeout} s; the row is {found.status} with {found.text!r}"
        await asyncio.sleep(0.05)


# --- the end of an answer -------------------------------------------------------------------


@pytest.mark.worker_threads(1)
async def test_an_answer_ending_while_the_database_is_locked_is_saved_and_told_once_it_is_back(
    alice, upstream, worker, retries
):
    gate = threading.Event()
    upstream.queue(gated_answer(["Written ", "while ", "locked"], gate))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Hi")
    await read_until_streamed(exchange, "Written while locked")
    with DatabaseOutage():
        gate.set()
        await retries.wait("final save", exchange.answer)
        assert (await row(exchange.answer)).status == Message.Status.STREAMING
        assert await communicator.receive_nothing(timeout=0.2), "message.done before the answer was saved"
    await until_done(exchange, timeout=60)
    await assert_outcome(exchange, "completed", "Written while locked", usage=usage(7, 3))
    # The only pool thread survived and takes the next answer.
    await assert_still_usable(exchange)
    assert worker.job(exchange.answer) is None
    await close(communicator)


@pytest.mark.worker_threads(1)
async def test_an_answer_the_thread_gave_up_on_is_saved_by_the_maintenance_loop(
    alice, upstream, worker, retries, settings
):
    """Past CHAT_DATABASE_RETRY_SECONDS the pool thread hands the save over and goes on."""
    settings.CHAT_DATABASE_RETRY_SECONDS = 0.5
    settings.CHAT_HEARTBEAT_INTERVAL = 0.2
    gate = threading.Event()
    upstream.queue(gated_answer(["handed ", "over"], gate))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Hi")
    await read_until_streamed(exchange, "handed over")
    with DatabaseOutage():
        gate.set()
        await retries.wait("final save handed over", exchange.answer)
        assert worker.job(exchange.answer).unsaved
    await until_done(exchange, timeout=60)
    await assert_outcome(exchange, "completed", "handed over", usage=usage(7, 2))
    await assert_still_usable(exchange)
    await close(communicator)


@pytest.mark.worker_threads(1)
async def test_an_outcome_the_database_refuses_ends_the_answer_as_failed_and_the_thread_goes_on(
    alice, upstream, worker, monkeypatch
):
    """Not every database error passes by waiting: the answer still gets a final state."""
    original = MessageQuerySet.finish_answer

    def refuse_the_text(queryset, message_id, **outcome):
        if "text" in outcome:
            raise DataError("value too long for this column")
        return original(queryset, message_id, **outcome)

    monkeypatch.setattr(MessageQuerySet, "finish_answer", refuse_the_text)
    upstream.queue(answer(["never ", "stored"]))
    communicator, _, _ = await connect(alice)
    exchange = await until_done(await send(communicator, "Hi"))
    assert exchange.done["status"] == "failed"
    assert exchange.done["error"]["code"] == "internal_error"
    assert (await row(exchange.answer)).status == Message.Status.FAILED
    monkeypatch.setattr(MessageQuerySet, "finish_answer", original)
    await assert_still_usable(exchange)
    await close(communicator)


# --- checkpoints ----------------------------------------------------------------------------


async def test_checkpoints_wait_for_the_database_without_holding_up_the_stream(
    alice, upstream, worker, retries, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    gate = threading.Event()
    words = [f"c{number} " for number in range(600)]
    upstream.queue(gated_answer(words, gate, pause=0.01))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Talk")
    exchange.frames += await receive_until(communicator, "message.delta")
    with DatabaseOutage():
        await retries.wait("checkpoint", exchange.answer)
        # Deltas keep coming to the tab while the checkpoints wait: the stream does not.
        loop = asyncio.get_running_loop()
        started, deltas = loop.time(), 0
        while deltas < 10:
            frame = await receive(communicator, timeout=3)
            exchange.frames.append(frame)
            deltas += frame["type"] == "message.delta"
        assert loop.time() - started < 3
        seen = exchange.streamed()
        assert not (await row(exchange.answer)).text.startswith(seen)
    # Once the database is back, a checkpoint carries at least what the tab had seen.
    await wait_for_row(
        exchange.answer,
        lambda found: found.status == Message.Status.STREAMING and found.text.startswith(seen),
        "no checkpoint after the lock",
    )
    gate.set()
    await until_done(exchange, timeout=60)
    await assert_outcome(exchange, "completed", "".join(words), usage=usage(7, len(words)))
    await close(communicator)


# --- the start of an answer -----------------------------------------------------------------


async def test_an_answer_taken_up_while_the_database_is_locked_starts_once_it_is_back(alice, upstream, worker, retries):
    """The claim (queued to streaming) is retried; the tab following the conversation sees it all."""
    conversation = await Conversation.objects.acreate(owner=alice, title="waiting", model="test-model")
    _, queued = await database_sync_to_async(conversation.start_exchange)("Who waits?", worker_id=worker.id)
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
    await receive_until(communicator, "message.snapshot")
    with DatabaseOutage():
        # What chat.send does once it stored the messages.
        worker.submit(queued.id, conversation.group_name, asyncio.get_running_loop())
        await retries.wait("claim", queued.id)
        assert (await row(queued.id)).status == Message.Status.QUEUED
        assert not upstream.requests
    frames = await receive_until(communicator, "message.done", timeout=60)
    assert [frame["status"] for frame in frames if frame["type"] == "message.status"] == ["streaming"]
    assert frames[-1]["status"] == "completed"
    assert frames[-1]["text"] == "You said: Who waits?"
    saved = await row(queued.id)
    assert (saved.status, saved.text) == (Message.Status.COMPLETED, "You said: Who waits?")
    assert len(upstream.requests) == 1
    await close(communicator)


# --- Stop while the database is unavailable -------------------------------------------------


async def test_stop_while_the_database_is_locked_cancels_the_answer_once_it_is_back(alice, upstream, worker, retries):
    upstream.queue(stream(*partial(["Stopped ", "mid-lock"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Talk slowly")
    await read_until_streamed(exchange, "Stopped mid-lock")
    request = upstream.requests[-1]
    with DatabaseOutage():
        await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
        await retries.wait("final save", exchange.answer)
        assert (await row(exchange.answer)).status == Message.Status.STREAMING
    stopped_at = len(exchange.frames)
    await until_done(exchange, timeout=60)
    assert not [frame for frame in exchange.frames[stopped_at:] if frame["type"] == "error"]
    await assert_outcome(exchange, "cancelled", "Stopped mid-lock")
    assert request.get("disconnected"), "the upstream request was closed at the stop"
    await assert_still_usable(exchange)
    await close(communicator)


@pytest.mark.worker_threads(1)
async def test_stop_of_a_queued_answer_while_the_database_is_locked_cancels_it_unsent(
    alice, bob, upstream, worker, retries
):
    gate = threading.Event()
    upstream.queue(gated_answer(["busy ", "thread"], gate))
    bobs_socket, _, _ = await connect(bob)
    bobs = await send(bobs_socket, "Take the only thread")
    await read_until_streamed(bobs, "busy thread")
    communicator, _, _ = await connect(alice)
    queued = await send(communicator, "Wait in the queue")
    assert queued.frames[-1]["message"]["status"] == "queued"
    with DatabaseOutage():
        await communicator.send_json_to({"type": "chat.stop", "message": queued.answer})
        await retries.wait("final save", queued.answer)
    await until_done(queued, timeout=60)
    await assert_outcome(queued, "cancelled", "")
    assert (await row(queued.answer)).started_at is None
    gate.set()
    await until_done(bobs, timeout=60)
    await assert_outcome(bobs, "completed", "busy thread", usage=usage(7, 2))
    assert len(upstream.requests) == 1, "the stopped answer never went upstream"
    await close(communicator, bobs_socket)


# --- reapers ----------------------------------------------------------------------------------


async def test_an_answer_whose_job_is_gone_is_reaped_by_its_own_live_process(alice, upstream, worker, settings):
    """Other processes leave a live process's answers alone, so the process itself must reap them."""
    settings.CHAT_HEARTBEAT_INTERVAL = 0.2
    gate = threading.Event()
    upstream.queue(gated_answer(["alive ", "and well"], gate))
    communicator, _, _ = await connect(alice)
    living = await send(communicator, "A live answer beside the lost one")
    await read_until_streamed(living, "alive and well")
    # An answer this process stored but whose job it no longer has (a thread that died, a socket
    # gone between storing the answer and handing it over).
    conversation = await Conversation.objects.acreate(owner=alice, title="lost", model="test-model")
    lost = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", text="so far", worker=worker.id
    )
    watcher, _, _ = await connect(alice)
    await watcher.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
    await receive_until(watcher, "message.snapshot")
    done = (await receive_until(watcher, "message.done", timeout=30))[-1]
    assert (done["message"], done["status"], done["text"]) == (str(lost.id), "interrupted", "so far")
    assert done["error"]["code"] == "answer_lost"
    # The answer with a job was left alone, however many heartbeats passed.
    assert (await row(living.answer)).status == Message.Status.STREAMING
    gate.set()
    await until_done(living)
    await assert_outcome(living, "completed", "alive and well", usage=usage(7, 2))
    await close(communicator, watcher)


async def test_after_an_outage_other_processes_get_a_full_timeout_before_their_answers_are_reaped(
    alice, worker, retries, settings
):
    """During the outage no process could mark itself alive: an answer of another live process
    is not taken for an orphan the moment the database is back."""
    settings.CHAT_HEARTBEAT_INTERVAL = 0.1
    settings.CHAT_HEARTBEAT_TIMEOUT = 1.0
    conversation = await Conversation.objects.acreate(owner=alice, title="elsewhere", model="test-model")
    other = await ServerProcess.objects.acreate(
        id=uuid.uuid4(), hostname="elsewhere", pid=1, last_seen_at=timezone.now() - timezone.timedelta(seconds=0.5)
    )
    theirs = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", text="theirs", worker=other.id
    )
    with DatabaseOutage():
        # The first failure comes after a busy timeout (SQLite) or from the reaper's own write
        # (PostgreSQL locks only messages): either way the other's heartbeat is stale by then.
        await retries.wait("maintenance")
        assert (await ServerProcess.objects.aget(pk=other.pk)).last_seen_at < timezone.now() - timezone.timedelta(
            seconds=settings.CHAT_HEARTBEAT_TIMEOUT
        )
    # The other process's first heartbeat after the outage, as it would come.
    await ServerProcess.objects.filter(pk=other.pk).aupdate(last_seen_at=timezone.now())
    mine = await ServerProcess.objects.aget(pk=worker.id)
    await wait_for_heartbeats(worker, mine.last_seen_at, count=3)
    assert (await row(theirs.id)).status == Message.Status.STREAMING
    # Once it really stops marking itself alive, its answer is reaped.
    found = await wait_for_row(theirs.id, lambda found: found.is_finished, "the orphan was not reaped", timeout=15)
    assert (found.status, found.text, found.error_code) == ("interrupted", "theirs", "server_stopped")


async def wait_for_heartbeats(worker, since, count):
    seen = since
    for _ in range(count):
        for _ in range(200):
            last_seen = (await ServerProcess.objects.aget(pk=worker.id)).last_seen_at
            if last_seen > seen:
                seen = last_seen
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the worker stopped marking itself alive")
