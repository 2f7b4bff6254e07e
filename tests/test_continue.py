"""Continue: an answer cut short or stopped goes on, as a new version that starts with its text.

Over the real websocket with the loopback upstream: what the model is sent is read off the request
body the upstream received; what a reload shows, off a second socket's subscription and the page.
"""

import asyncio
import threading
import uuid

import pytest
import redis
from asgiref.sync import sync_to_async

from chat.models import CONTINUE_REQUEST, Conversation, Message, UsageEntry, spending_of, tokens_for
from chat.relay import read_shared_snapshot
from tests.factories import conversation_with_answer
from tests.services import redis_server  # noqa: F401  (a fixture, used by name)
from tests.test_outcomes import close, partial
from tests.test_versions import page_messages
from tests.upstream import Gate, Pause, Status, answer, stream, usage_object
from tests.websocket import connect, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(autouse=True)
def no_send_rate_limit(settings):
    settings.CHAT_SENDS_PER_MINUTE = 0


def items(request):
    """(role, content) of each input item an upstream request carried."""
    return [(item["role"], item["content"]) for item in request["body"]["input"]]


def created(frames):
    return [frame["message"] for frame in frames if frame["type"] == "message.created"]


def streamed(frames, message_id):
    return "".join(
        frame["delta"] for frame in frames if frame["type"] == "message.delta" and frame["message"] == message_id
    )


async def first_exchange(communicator, upstream, scenario, text="Name a river"):
    """A new conversation whose first answer plays `scenario` to its end: (conversation, question, answer, done)."""
    upstream.queue(scenario)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": text})
    frames = await receive_until(communicator, "message.done")
    question, reply = created(frames)
    return frames[0]["conversation"]["id"], question, reply, frames[-1]


async def stopped_exchange(communicator, upstream, deltas, text="Tell a story"):
    """A first answer stopped after `deltas` streamed: (conversation, question, answer, done)."""
    upstream.queue(stream(*partial(deltas), Pause(60)))
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": text})
    frames = []
    while len(created(frames)) < 2:
        frames.append(await receive(communicator))
    conversation_id = frames[0]["conversation"]["id"]
    question, reply = created(frames)
    while streamed(frames, reply["id"]) != "".join(deltas):
        frames.append(await receive(communicator))
    await communicator.send_json_to({"type": "chat.stop", "message": reply["id"]})
    frames += await receive_until(communicator, "message.done", message=reply["id"])
    return conversation_id, question, reply, frames[-1]


async def continue_answer(communicator, answer_id, **fields):
    """Send chat.continue; returns (its message.created message, every frame to its message.done)."""
    await communicator.send_json_to({"type": "chat.continue", "message": answer_id, **fields})
    frames = await receive_until(communicator, "message.created")
    new = frames[-1]["message"]
    frames += await receive_until(communicator, "message.done", message=new["id"])
    return new, frames


@sync_to_async
def answer_of(owner, **fields):
    """The id of the answer of a conversation made by the factory for `owner`."""
    conversation = conversation_with_answer(owner, **fields)
    return str(conversation.messages.get(role=Message.Role.ASSISTANT).id)


async def refused(communicator, frame):
    await communicator.send_json_to(frame)
    error = await receive(communicator)
    assert error["type"] == "error", error
    return error


# --- continuing --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_incomplete_answer_continues_as_a_new_version_that_starts_with_its_text(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, original, done = await first_exchange(
        communicator, upstream, answer(["The Nile is ", "the longest"], terminal="incomplete")
    )
    assert (done["status"], done["incomplete_reason"], done["text"]) == (
        "incomplete",
        "max_output_tokens",
        "The Nile is the longest",
    )

    upstream.queue(answer([" river ", "in Africa."], usage=usage_object(40, 4)))
    new, frames = await continue_answer(communicator, original["id"], client_id="continue-1")
    # Announced with the text it goes on from, as a version beside the original: "2/2".
    assert new["text"] == "The Nile is the longest"
    assert (new["status"], new["parent"], new["role"]) == ("queued", question["id"], "assistant")
    assert new["versions"] == {"index": 1, "count": 2, "ids": [original["id"], new["id"]]}
    # Deltas append to it: the first is seq 1, the text so far was never a delta.
    deltas = [frame for frame in frames if frame["type"] == "message.delta"]
    assert deltas[0]["seq"] == 1
    assert "".join(frame["delta"] for frame in deltas) == " river in Africa."
    done = frames[-1]
    assert (done["status"], done["text"]) == ("completed", "The Nile is the longest river in Africa.")

    # The model was sent the path, the text so far as its own turn, then the ask to go on.
    body = upstream.requests[-1]["body"]
    assert items(upstream.requests[-1]) == [
        ("user", "Name a river"),
        ("assistant", "The Nile is the longest"),
        ("user", CONTINUE_REQUEST),
    ]
    assert all(item["type"] == "message" for item in body["input"])

    # The original stays as it was; the page shows the continued version.
    kept = await Message.objects.aget(pk=original["id"])
    assert (kept.status, kept.text, kept.continued_length) == ("incomplete", "The Nile is the longest", 0)
    stored = await Message.objects.aget(pk=new["id"])
    assert stored.text == "The Nile is the longest river in Africa."
    assert stored.continued_length == len("The Nile is the longest")
    shown = await page_messages(alice, conversation_id)
    assert [message["id"] for message in shown] == [question["id"], new["id"]]
    assert shown[1]["text"] == "The Nile is the longest river in Africa."
    assert shown[1]["versions"]["index"] == 1

    # Usage counts as any answer's: the upstream's own figures, in the ledger.
    entry = await UsageEntry.objects.aget(message_id=new["id"])
    assert (entry.input_tokens, entry.output_tokens, entry.total_tokens, entry.estimated) == (40, 4, 44, False)
    # Its reservation counted the text so far as input, as it was sent.
    sent = sum(len(content) for _, content in items(upstream.requests[-1]))
    assert entry.estimated_input_tokens == tokens_for(sent)
    await close(communicator)


@pytest.mark.asyncio
async def test_a_stopped_answer_continues_and_its_continuation_can_be_continued_again(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, original, done = await stopped_exchange(communicator, upstream, ["Once upon ", "a time"])
    assert (done["status"], done["text"]) == ("cancelled", "Once upon a time")

    upstream.queue(answer([" there was", " a"], terminal="incomplete"))
    second, frames = await continue_answer(communicator, original["id"])
    assert second["text"] == "Once upon a time"
    assert (frames[-1]["status"], frames[-1]["text"]) == ("incomplete", "Once upon a time there was a")

    upstream.queue(answer([" river."]))
    third, frames = await continue_answer(communicator, second["id"])
    assert third["text"] == "Once upon a time there was a"
    assert third["versions"]["ids"] == [original["id"], second["id"], third["id"]]
    assert (frames[-1]["status"], frames[-1]["text"]) == ("completed", "Once upon a time there was a river.")
    # The second continuation goes on from the first one's whole text.
    assert items(upstream.requests[-1]) == [
        ("user", "Tell a story"),
        ("assistant", "Once upon a time there was a"),
        ("user", CONTINUE_REQUEST),
    ]
    texts = {message.id.hex: message.text async for message in Message.objects.filter(role="assistant")}
    assert texts == {
        uuid.UUID(original["id"]).hex: "Once upon a time",
        uuid.UUID(second["id"]).hex: "Once upon a time there was a",
        uuid.UUID(third["id"]).hex: "Once upon a time there was a river.",
    }
    # A continuation that is complete is not offered again.
    error = await refused(communicator, {"type": "chat.continue", "message": third["id"]})
    assert error["code"] == "not_continuable"
    await close(communicator)


@pytest.mark.asyncio
async def test_the_upstreams_final_text_is_saved_after_the_text_continued_from(alice, upstream, worker):
    """The terminal event's text is the continuation's only; the saved text still starts with
    the earlier version's."""
    communicator, _, _ = await connect(alice)
    _, _, original, _ = await first_exchange(communicator, upstream, answer(["Half"], terminal="incomplete"))
    steps = answer(["-way", " there"])
    # The terminal event says the continuation's text differently from its deltas: it wins, after the start.
    steps = [step.replace(b'"-way there"', b'"-way done"') if b"response.completed" in step else step for step in steps]
    upstream.queue(steps)
    new, frames = await continue_answer(communicator, original["id"])
    assert frames[-1]["text"] == "Half-way done"
    assert (await Message.objects.aget(pk=new["id"])).text == "Half-way done"
    await close(communicator)


@pytest.mark.asyncio
async def test_a_retried_continue_with_the_same_client_id_is_answered_not_repeated(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    _, _, original, _ = await first_exchange(communicator, upstream, answer(["Cut"], terminal="incomplete"))
    upstream.queue(answer([" short"]))
    new, _ = await continue_answer(communicator, original["id"], client_id="same")
    requests = len(upstream.requests)

    await communicator.send_json_to({"type": "chat.continue", "message": original["id"], "client_id": "same"})
    frames = await receive_until(communicator, "message.created")
    assert frames[-1]["message"]["id"] == new["id"]
    assert await Message.objects.filter(role="assistant").acount() == 2
    assert len(upstream.requests) == requests
    await close(communicator)


# --- a reload mid-continue --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_reload_mid_continue_shows_the_text_continued_from_and_what_followed(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, _, original, _ = await first_exchange(
        communicator, upstream, answer(["Rivers flow ", "to the"], terminal="incomplete")
    )
    gate = threading.Event()
    upstream.queue(stream(*partial([" sea", " and"]), Gate(gate)))
    await communicator.send_json_to({"type": "chat.continue", "message": original["id"]})
    frames = await receive_until(communicator, "message.created")
    new_id = frames[-1]["message"]["id"]
    while streamed(frames, new_id) != " sea and":
        frames.append(await receive(communicator))

    # A second tab (a reload) gets the row and a snapshot holding the whole text so far.
    reload, _, _ = await connect(alice)
    await reload.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    subscribed = await receive(reload)
    assert subscribed["type"] == "conversation.subscribed"
    [row] = [message for message in subscribed["messages"] if message["id"] == new_id]
    assert row["text"].startswith("Rivers flow to the")
    snapshot = await receive(reload)
    assert snapshot["type"] == "message.snapshot"
    assert snapshot["text"] == "Rivers flow to the sea and"
    assert snapshot["seq"] >= 1
    # The page itself, loaded now, shows the same.
    [shown] = [message for message in await page_messages(alice, conversation_id) if message["id"] == new_id]
    assert shown["text"] == "Rivers flow to the sea and"

    # Stopped again, it keeps everything, and can be continued once more.
    await communicator.send_json_to({"type": "chat.stop", "message": new_id})
    done = (await receive_until(reload, "message.done", message=new_id))[-1]
    assert (done["status"], done["text"]) == ("cancelled", "Rivers flow to the sea and")
    gate.set()
    assert (await Message.objects.aget(pk=new_id)).text == "Rivers flow to the sea and"
    upstream.queue(answer([" back."]))
    _, frames = await continue_answer(communicator, new_id)
    assert frames[-1]["text"] == "Rivers flow to the sea and back."
    await close(communicator, reload)


@pytest.mark.asyncio
@pytest.mark.worker_threads(1)
async def test_a_queued_continuation_shows_the_text_it_goes_on_from_and_a_stop_keeps_it(alice, bob, upstream, worker):
    """Before a worker thread takes it, the row is the snapshot: it was stored with the text."""
    communicator, _, _ = await connect(alice)
    conversation_id, _, original, _ = await first_exchange(
        communicator, upstream, answer(["Waiting ", "in"], terminal="incomplete")
    )
    # Bob's answer holds the one worker thread.
    gate = threading.Event()
    upstream.queue(stream(*partial(["busy"]), Gate(gate)))
    bobs, _, _ = await connect(bob)
    await bobs.send_json_to({"type": "chat.send", "conversation": None, "text": "Hold"})
    await receive_until(bobs, "message.delta")

    await communicator.send_json_to({"type": "chat.continue", "message": original["id"]})
    new = (await receive_until(communicator, "message.created"))[-1]["message"]
    assert (new["status"], new["text"]) == ("queued", "Waiting in")
    reload, _, _ = await connect(alice)
    await reload.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    await receive(reload)
    snapshot = await receive(reload)
    assert (snapshot["type"], snapshot["seq"], snapshot["text"]) == ("message.snapshot", 0, "Waiting in")

    # Stopped while queued: nothing went upstream, and the text it was queued with stays.
    requests = len(upstream.requests)
    await communicator.send_json_to({"type": "chat.stop", "message": new["id"]})
    done = (await receive_until(communicator, "message.done", message=new["id"]))[-1]
    assert (done["status"], done["text"]) == ("cancelled", "Waiting in")
    row = await Message.objects.aget(pk=new["id"])
    assert (row.status, row.text) == ("cancelled", "Waiting in")
    assert len(upstream.requests) == requests
    # It cost nothing: the upstream never began it.
    entry = await UsageEntry.objects.aget(message_id=new["id"])
    assert entry.total_tokens == 0
    gate.set()
    await receive_until(bobs, "message.done")
    await close(communicator, reload, bobs)


@pytest.mark.asyncio
async def test_another_process_resumes_a_continuation_from_a_redis_snapshot_that_starts_with_its_text(
    alice, upstream, worker, request, settings
):
    """With REDIS_URL, the relay keeps the snapshot other processes read: it starts as the text
    continued from, and the deltas append to it."""
    settings.REDIS_URL = request.getfixturevalue("redis_server").url
    communicator, _, _ = await connect(alice)
    _, _, original, _ = await first_exchange(communicator, upstream, answer(["Across ", "the"], terminal="incomplete"))
    gate = threading.Event()
    upstream.queue(stream(*partial([" wide", " plain"]), Gate(gate)))
    await communicator.send_json_to({"type": "chat.continue", "message": original["id"]})
    frames = await receive_until(communicator, "message.created")
    new_id = frames[-1]["message"]["id"]
    while streamed(frames, new_id) != " wide plain":
        frames.append(await receive(communicator))
    last_seq = max(frame["seq"] for frame in frames if frame["type"] == "message.delta")

    client = redis.Redis.from_url(settings.REDIS_URL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        shared = await sync_to_async(read_shared_snapshot)(client, new_id)
        if shared is not None and shared.seq == last_seq:
            break
        assert loop.time() < deadline, f"the Redis snapshot did not reach seq {last_seq}: {shared}"
        await asyncio.sleep(0.02)
    assert shared.text == "Across the wide plain"
    await communicator.send_json_to({"type": "chat.stop", "message": new_id})
    await receive_until(communicator, "message.done", message=new_id)
    gate.set()
    client.close()
    await close(communicator)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_continue_is_refused_for_answers_that_did_not_stop_short_and_changes_nothing(
    alice, bob, upstream, worker
):
    communicator, _, _ = await connect(alice)
    _, question, completed, _ = await first_exchange(communicator, upstream, answer(["All done."]))
    _, _, failed, done = await first_exchange(
        communicator, upstream, [Status(400, b'{"error": {"message": "Bad request", "code": "bad"}}')], text="Break"
    )
    assert done["status"] == "failed"
    bobs_answer_id = await answer_of(bob, status=Message.Status.INCOMPLETE)
    before = await Message.objects.acount()
    requests = len(upstream.requests)

    cases = [
        ({"message": completed["id"]}, "not_continuable", "complete"),
        ({"message": failed["id"]}, "not_continuable", "retry"),
        ({"message": question["id"]}, "invalid_field", "Only answers can be continued."),
        ({"message": bobs_answer_id}, "not_found", "No such message."),
        ({"message": UNKNOWN}, "not_found", "No such message."),
        ({"message": "not-an-id"}, "not_found", "No such message."),
        ({}, "invalid_field", "`message`"),
        ({"message": completed["id"], "model": "no-such-model"}, "unknown_model", "Unknown model"),
    ]
    for fields, code, words in cases:
        error = await refused(communicator, {"type": "chat.continue", "client_id": "refused", **fields})
        assert (error["code"], error["client_id"]) == (code, "refused"), (fields, error)
        assert words in error["message"], (fields, error)
    assert await Message.objects.acount() == before
    assert len(upstream.requests) == requests
    await close(communicator)


@pytest.mark.asyncio
async def test_continue_is_refused_while_the_answer_streams_and_while_another_is_written(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, _, stopped, _ = await stopped_exchange(communicator, upstream, ["Some ", "text"])
    # A regenerated version streams: the stopped one cannot be continued meanwhile (busy), and
    # the streaming one is still being written (not_finished).
    gate = threading.Event()
    upstream.queue(stream(*partial(["Other"]), Gate(gate)))
    await communicator.send_json_to({"type": "chat.regenerate", "message": stopped["id"]})
    streaming = (await receive_until(communicator, "message.created"))[-1]["message"]
    await receive_until(communicator, "message.delta", message=streaming["id"])
    before = await Message.objects.acount()

    error = await refused(communicator, {"type": "chat.continue", "message": stopped["id"]})
    assert error["code"] == "busy"
    error = await refused(communicator, {"type": "chat.continue", "message": streaming["id"]})
    assert error["code"] == "not_finished"
    assert "still being written" in error["message"]
    assert await Message.objects.acount() == before

    await communicator.send_json_to({"type": "chat.stop", "message": streaming["id"]})
    await receive_until(communicator, "message.done", message=streaming["id"])
    gate.set()
    await close(communicator)


@pytest.mark.asyncio
async def test_an_answer_stopped_before_any_text_is_refused_with_regenerate_named(alice, upstream, worker):
    answer_id = await answer_of(alice, answer="", status=Message.Status.CANCELLED)
    communicator, _, _ = await connect(alice)
    error = await refused(communicator, {"type": "chat.continue", "message": answer_id})
    assert error["code"] == "not_continuable"
    assert "regenerate" in error["message"]
    await close(communicator)


@pytest.mark.asyncio
async def test_continues_count_against_the_send_rate(alice, upstream, worker, settings):
    # The factory's answer is in the ledger as sent just now: one send, then the continue.
    settings.CHAT_SENDS_PER_MINUTE = 2
    answer_id = await answer_of(alice, status=Message.Status.INCOMPLETE)
    communicator, _, _ = await connect(alice)
    upstream.queue(answer([" more"], terminal="incomplete"))
    new, _ = await continue_answer(communicator, answer_id)
    error = await refused(communicator, {"type": "chat.continue", "message": new["id"]})
    assert error["code"] == "rate_limited"
    await close(communicator)


# --- the ledger -----------------------------------------------------------------------------


def test_an_estimated_continuation_counts_only_the_text_it_added_as_output(alice):
    conversation = conversation_with_answer(alice, answer="x" * 400, status=Message.Status.INCOMPLETE)
    original = conversation.messages.get(role="assistant")
    stored = Conversation.objects.continue_answer(alice, original.id)
    continued = Message.objects.get(pk=stored.answer)
    assert continued.continued_length == 400
    # Stopped after 40 more characters, with no usage reported (as after Stop).
    continued.text += "y" * 40
    continued.status = Message.Status.CANCELLED
    continued.response_id = "resp_1"
    entry = UsageEntry.objects.get(message_id=continued.id)
    input_tokens, output_tokens, total_tokens, estimated = spending_of(continued, entry.estimated_input_tokens)
    assert estimated
    assert output_tokens == tokens_for(40)
    # The input counted the text so far and the ask to go on, as the model is sent them.
    assert input_tokens == entry.estimated_input_tokens
    assert input_tokens == tokens_for(len("What is a river?") + 400 + len(CONTINUE_REQUEST))
