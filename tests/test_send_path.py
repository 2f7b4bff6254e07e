"""The send path's database work runs on the runtime's database pool (chat/runtime.py), not on
asgiref's one thread-sensitive thread, where every socket's other database calls queue: a burst
of sends, or one socket's slow read, must not hold back the start of other answers."""

import asyncio
import threading

import pytest
from asgiref.sync import SyncToAsync

from chat.models import Message
from tests.upstream import answer
from tests.websocket import connect, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]


class OrmThreadHeld:
    """asgiref's one thread-sensitive thread kept busy (as by a long read of another socket)
    until the block ends; what still works meanwhile does not need it."""

    def __init__(self):
        self.release = threading.Event()
        self.holding = threading.Event()

    def __enter__(self):
        def hold():
            self.holding.set()
            self.release.wait(60)

        self.future = SyncToAsync.single_thread_executor.submit(hold)
        assert self.holding.wait(10), "the ORM's thread was busy before the test"
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.future.result(timeout=10)


def send_frame(text, client_id, conversation=None):
    return {"type": "chat.send", "conversation": conversation, "text": text, "client_id": client_id}


async def test_sends_regenerations_and_edits_are_answered_while_the_orm_thread_is_busy(alice, upstream, worker):
    for words in (["One ", "answer"], ["Another ", "one"], ["Edited ", "answer"]):
        upstream.queue(answer(words))
    communicator, connected, _ = await connect(alice)  # the handshake reads the session there
    assert connected
    with OrmThreadHeld():
        await communicator.send_json_to(send_frame("Hi", "s1"))
        frames = await receive_until(communicator, "message.done")
        assert frames[0]["type"] == "conversation.created"
        done = frames[-1]
        assert (done["status"], done["text"]) == ("completed", "One answer")

        regenerate = {"type": "chat.regenerate", "message": done["message"], "client_id": "r1"}
        await communicator.send_json_to(regenerate)
        frames = await receive_until(communicator, "message.done")
        assert (frames[-1]["status"], frames[-1]["text"]) == ("completed", "Another one")

        question = [frame for frame in frames if frame["type"] == "message.created"][0]["message"]["parent"]
        await communicator.send_json_to({"type": "chat.edit", "message": question, "text": "Hi!", "client_id": "e1"})
        frames = await receive_until(communicator, "message.done")
        assert (frames[-1]["status"], frames[-1]["text"]) == ("completed", "Edited answer")
    await communicator.disconnect()
    assert await Message.objects.filter(role=Message.Role.ASSISTANT, status="completed").acount() == 3


@pytest.mark.worker_threads(8)
async def test_a_burst_of_sends_from_many_sockets_starts_every_answer_once(alice, bob, upstream, worker, settings):
    settings.CHAT_SENDS_PER_MINUTE = 0
    sockets = []
    for user in (alice, bob) * 4:
        communicator, connected, _ = await connect(user)
        assert connected
        sockets.append(communicator)
    for number in range(len(sockets)):
        upstream.queue(answer([f"answer {number}"]))
    with OrmThreadHeld():
        for number, communicator in enumerate(sockets):
            await communicator.send_json_to(send_frame(f"question {number}", f"b{number}"))
        endings = await asyncio.gather(*(receive_until(communicator, "message.done") for communicator in sockets))
        # A retried frame of the burst is answered with what the first one stored, nothing twice.
        await sockets[0].send_json_to(send_frame("question 0", "b0"))
        replayed = await receive_until(sockets[0], "message.created")
        replayed += await receive_until(sockets[0], "message.created")
    assert sorted(frames[-1]["text"] for frames in endings) == sorted(f"answer {n}" for n in range(len(sockets)))
    assert all(frames[-1]["status"] == "completed" for frames in endings)
    (user_message, replayed_answer) = [frame["message"] for frame in replayed if frame["type"] == "message.created"]
    assert (user_message["role"], replayed_answer["role"]) == ("user", "assistant")
    assert replayed_answer["id"] in {frames[-1]["message"] for frames in endings}
    assert await Message.objects.filter(role=Message.Role.ASSISTANT).acount() == len(sockets)
    assert len(upstream.requests) == len(sockets)
    for communicator in sockets:
        await communicator.disconnect()


class PoolCalls:
    """Every call submitted to the runtime's database pool, named by the consumer's method it
    runs (asgiref submits it wrapped in partials of its own)."""

    KNOWN = ("store_frame", "session_lets_act")

    def __init__(self, pool):
        self.names = []
        self.submit = pool.submit

    def __call__(self, function, *args, **kwargs):
        described = repr(function)
        self.names.append(next((name for name in self.KNOWN if name in described), described))
        return self.submit(function, *args, **kwargs)

    def taken(self):
        names, self.names = self.names, []
        return names


async def test_an_answering_frame_is_one_call_on_the_database_pool_its_session_check_included(
    alice, upstream, worker, monkeypatch
):
    """chat.send (new and existing conversation), chat.regenerate, chat.edit and chat.continue:
    the session check, the lookup and the verb are one hop to the pool, not one each; a frame
    that does not answer (chat.subscribe) still has its check of its own before it acts."""
    from chat.runtime import current

    pool = current().database_pool()
    calls = PoolCalls(pool)
    monkeypatch.setattr(pool, "submit", calls)
    for words in (["One"], ["Two"], ["Three"], ["Four"], ["Five"]):
        upstream.queue(answer(words))
    communicator, connected, _ = await connect(alice)
    assert connected
    calls.taken()  # whatever the handshake did

    await communicator.send_json_to(send_frame("Hi", "one-hop-1"))
    frames = await receive_until(communicator, "message.done")
    conversation, first = frames[0]["conversation"]["id"], frames[-1]["message"]
    assert calls.taken() == ["store_frame"]

    await communicator.send_json_to(send_frame("Again", "one-hop-2", conversation))
    frames = await receive_until(communicator, "message.done")
    assert (frames[-1]["text"], calls.taken()) == ("Two", ["store_frame"])

    await communicator.send_json_to({"type": "chat.regenerate", "message": first, "client_id": "one-hop-3"})
    frames = await receive_until(communicator, "message.done")
    assert (frames[-1]["text"], calls.taken()) == ("Three", ["store_frame"])

    question = [frame for frame in frames if frame["type"] == "message.created"][0]["message"]["parent"]
    await communicator.send_json_to({"type": "chat.edit", "message": question, "text": "Hi!", "client_id": "one-hop-4"})
    frames = await receive_until(communicator, "message.done")
    edited = frames[-1]["message"]
    assert (frames[-1]["text"], calls.taken()) == ("Four", ["store_frame"])

    await Message.objects.filter(pk=edited).aupdate(status=Message.Status.INCOMPLETE)
    await communicator.send_json_to({"type": "chat.continue", "message": edited, "client_id": "one-hop-5"})
    frames = await receive_until(communicator, "message.done")
    assert (frames[-1]["text"], calls.taken()) == ("FourFive", ["store_frame"])

    await communicator.send_json_to({"type": "chat.subscribe", "conversation": conversation})
    await receive_until(communicator, "conversation.subscribed")
    assert calls.taken() == ["session_lets_act"]
    await communicator.disconnect()
    assert len(upstream.requests) == 5
