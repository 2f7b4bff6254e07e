"""The stream worker with real threads, the real in-memory channel layer and a loopback upstream."""

import asyncio

import pytest
from django.db.backends.signals import connection_created

from chat.models import Message
from tests.upstream import answer
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def words(prefix, count):
    return [f"{prefix}-{index} " for index in range(count)]


@pytest.mark.worker_threads(24)
@pytest.mark.timeout(120)
async def test_twenty_answers_at_once_each_arrive_whole_once_and_in_order(alice, upstream, worker):
    count = 20
    scripts = {f"question {number}": words(f"a{number}", 60) for number in range(count)}
    upstream.queue(*[(lambda body: answer(scripts[body["input"][-1]["content"]], pause=0.005)) for _ in range(count)])
    sockets = []
    for _ in range(count):
        communicator, connected, _ = await connect(alice)
        assert connected
        sockets.append(communicator)

    async def converse(number, communicator):
        await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": f"question {number}"})
        return await receive_until(communicator, "message.done", timeout=60)

    results = await asyncio.gather(*(converse(n, s) for n, s in enumerate(sockets)))
    for number, frames in enumerate(results):
        deltas = [frame for frame in frames if frame["type"] == "message.delta"]
        seqs = [frame["seq"] for frame in deltas]
        assert seqs == list(range(1, len(seqs) + 1)), "each delta once, in order, none missing"
        expected = "".join(scripts[f"question {number}"])
        assert "".join(frame["delta"] for frame in deltas) == expected
        assert frames[-1]["text"] == expected
        assert frames[-1]["status"] == "completed"
    for communicator in sockets:
        await communicator.disconnect()
    assert await Message.objects.filter(role="assistant", status="completed").acount() == count
    assert_no_groups_left()


async def test_fast_deltas_are_coalesced_into_fewer_frames(alice, upstream, worker, settings):
    settings.CHAT_FLUSH_INTERVAL = 0.05
    upstream.queue(answer(words("x", 500)))
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "fast"})
    frames = await receive_until(communicator, "message.done")
    deltas = [frame for frame in frames if frame["type"] == "message.delta"]
    assert "".join(frame["delta"] for frame in deltas) == "".join(words("x", 500))
    assert len(deltas) < 100
    await communicator.disconnect()


async def test_a_delta_after_a_quiet_period_is_not_held_back(alice, upstream, worker, settings):
    """With a long window, a lone delta still goes out at once, and a burst's tail within one window."""
    settings.CHAT_FLUSH_INTERVAL = 0.4
    from tests.upstream import Pause

    steps = answer(["first ", "second ", "third"], pause=0)
    # Hold the stream open after the deltas, before the terminal events.
    steps.insert(-4, Pause(2.0))
    upstream.queue(steps)
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "go"})
    loop = asyncio.get_running_loop()
    received = []
    while True:
        frame = await receive(communicator, timeout=5)
        if frame["type"] == "message.delta":
            received.append((loop.time(), frame["delta"]))
        if frame["type"] == "message.done":
            done_at = loop.time()
            break
    assert "".join(delta for _, delta in received) == "first second third"
    # Everything streamed arrived well before the 2 s silence ended.
    assert received[-1][0] < done_at - 1.0
    await communicator.disconnect()


class WriteCounter:
    """Counts INSERT/UPDATE/DELETE statements on messages, in every thread's connection."""

    def __init__(self):
        self.writes = []

    def __call__(self, execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) and "chat_message" in sql:
            self.writes.append(sql.split()[0].upper())
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        # Once per connection object: it keeps its wrappers when it reconnects.
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)


@pytest.fixture
def message_writes():
    """A WriteCounter on every connection opened from here on: requested before `worker`, so that
    the pool threads' connections, which outlive an answer, all carry it."""
    counter = WriteCounter()
    connection_created.connect(counter.install)
    yield counter
    connection_created.disconnect(counter.install)


async def writes_for_an_answer(alice, upstream, counter, deltas):
    start = len(counter.writes)
    upstream.queue(answer(words("w", deltas)))
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "count"})
    frames = await receive_until(communicator, "message.done", timeout=60)
    await communicator.disconnect()
    assert frames[-1]["text"] == "".join(words("w", deltas))
    assert frames[-1]["status"] == "completed"
    return counter.writes[start:]


async def test_database_writes_per_answer_do_not_grow_with_its_length(
    alice, upstream, message_writes, worker, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 60
    settings.CHAT_HEARTBEAT_INTERVAL = 600
    short = await writes_for_an_answer(alice, upstream, message_writes, 100)
    long = await writes_for_an_answer(alice, upstream, message_writes, 5000)
    assert short == long
    # The messages' inserts, the claim and one final save: a handful, however long the answer.
    assert len(short) <= 6


async def test_an_upstream_that_queues_the_request_shows_the_answer_as_queued(alice, upstream, worker):
    from tests.upstream import Pause, response_object, sse

    steps = answer(["after ", "the queue"])
    queued = [
        sse({"type": "response.created", "sequence_number": 0, "response": response_object("r", "m", "queued")}),
        sse({"type": "response.queued", "sequence_number": 1, "response": response_object("r", "m", "queued")}),
        Pause(0.3),
    ]
    upstream.queue(queued + steps[1:])  # in_progress and the rest follow
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "wait"})
    frames = await receive_until(communicator, "message.done")
    statuses = [frame["status"] for frame in frames if frame["type"] == "message.status"]
    assert statuses == ["streaming", "queued", "streaming"]
    assert frames[-1]["text"] == "after the queue"
    await communicator.disconnect()


async def test_the_reaper_tells_the_tabs_following_an_orphaned_answer(alice, worker):
    """An answer whose process died is marked interrupted, and open tabs hear of it."""
    import uuid

    from channels.db import database_sync_to_async

    from chat.answering.maintenance import reap_orphans
    from chat.models import Conversation
    from chat.runtime import current

    conversation = await Conversation.objects.acreate(owner=alice, title="orphan", model="test-model")
    orphan = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", text="so far", worker=uuid.uuid4()
    )
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
    await receive_until(communicator, "message.snapshot")
    relay = current().relay_for(asyncio.get_running_loop())
    assert await database_sync_to_async(reap_orphans)(relay) == 1
    done = (await receive_until(communicator, "message.done"))[-1]
    assert (done["message"], done["status"], done["text"]) == (str(orphan.id), "interrupted", "so far")
    await communicator.disconnect()


async def test_one_job_runs_synchronously_on_the_callers_thread(alice, upstream, worker):
    """StreamWorker.run_one: the whole answer (claim, open, apply, finish) on the test's own thread."""
    import threading

    from channels.db import database_sync_to_async

    from chat.models import Conversation

    conversation = await Conversation.objects.acreate(owner=alice, title="sync", model="test-model")
    _, queued = await database_sync_to_async(conversation.start_exchange)("Once", worker_id=worker.id)
    loop = asyncio.get_running_loop()
    threads = []

    def run():
        threads.append(threading.current_thread())
        return worker.run_one(queued.id, conversation.group_name, loop)

    caller = threading.Thread(target=run, name="the-test-itself")
    caller.start()
    await loop.run_in_executor(None, caller.join, 30)
    saved = await Message.objects.aget(pk=queued.id)
    assert (saved.status, saved.text) == (Message.Status.COMPLETED, "You said: Once")
    assert worker.job(queued.id) is None, "the job let go once saved"
    assert [thread.name for thread in threads] == ["the-test-itself"]
    assert len(upstream.requests) == 1
