import pytest

from chat.models import Conversation, Message
from tests.upstream import answer, usage_object
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def test_it_streams_an_answer_and_saves_it_with_usage(alice, upstream, worker):
    upstream.queue(answer(["Hel", "lo ", "there"], usage=usage_object(11, 3, cached=2), pause=0.05))
    communicator, connected, _ = await connect(alice)
    assert connected
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "c1"})
    frames = await receive_until(communicator, "message.done")
    types = [frame["type"] for frame in frames]
    assert types[0] == "conversation.created"
    assert types.count("message.created") == 2
    deltas = [frame["delta"] for frame in frames if frame["type"] == "message.delta"]
    assert "".join(deltas) == "Hello there"
    seqs = [frame["seq"] for frame in frames if frame["type"] == "message.delta"]
    assert seqs == sorted(set(seqs))
    done = frames[-1]
    assert done["status"] == "completed"
    assert done["text"] == "Hello there"
    assert done["usage"] == {
        "input_tokens": 11,
        "output_tokens": 3,
        "total_tokens": 14,
        "cached_tokens": 2,
        "reasoning_tokens": 0,
    }
    await communicator.disconnect()

    answer_row = await Message.objects.aget(pk=done["message"])
    assert answer_row.status == Message.Status.COMPLETED
    assert answer_row.text == "Hello there"
    assert answer_row.total_tokens == 14
    assert answer_row.response_id == "resp_test"
    assert answer_row.started_at and answer_row.first_token_at and answer_row.finished_at
    body = upstream.requests[0]["body"]
    assert upstream.requests[0]["headers"]["Authorization"] == "Bearer sk-test-secret-key"
    assert body["model"] == "test-model"
    assert body["stream"] is True
    assert body["input"] == [{"type": "message", "role": "user", "content": "Hi"}]


async def test_it_rejects_anonymous_sockets(db):
    _, connected, _ = await connect(None)
    assert not connected


async def test_another_users_conversation_is_answered_like_an_unknown_one(alice, bob, upstream, worker):
    conversation = await Conversation.objects.acreate(owner=bob, title="Bob's", model="test-model")
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
    foreign = await receive(communicator)
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": "00000000-0000-0000-0000-000000000000"})
    unknown = await receive(communicator)
    assert foreign == unknown == {"type": "error", "code": "not_found", "message": "No such conversation."}
    await communicator.disconnect()
    assert_no_groups_left()


async def frames_after(communicator, frame):
    await communicator.send_to(text_data=frame) if isinstance(frame, str) else await communicator.send_json_to(frame)
    return await receive(communicator)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"a string"', "invalid_frame"),
        ({"type": "chat.unknown"}, "unknown_type"),
        ({"no": "type"}, "unknown_type"),
        ({"type": "chat.send", "conversation": None}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": 42}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": "   \n"}, "empty_text"),
        ({"type": "chat.send", "conversation": None, "text": "x" * 32_001}, "text_too_long"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "model": "nope"}, "unknown_model"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "client_id": 5}, "invalid_field"),
        ({"type": "chat.send", "conversation": "not-a-uuid", "text": "hi"}, "not_found"),
        ({"type": "chat.send", "conversation": 12, "text": "hi"}, "invalid_field"),
        ({"type": "chat.send", "conversation": "00000000-0000-0000-0000-000000000000", "text": "hi"}, "not_found"),
        ({"type": "chat.subscribe"}, "invalid_field"),
        ({"type": "chat.stop", "message": "00000000-0000-0000-0000-000000000000"}, "not_found"),
        ({"type": "chat.stop", "message": None}, "invalid_field"),
    ],
)
async def test_bad_frames_get_an_error_and_change_nothing(alice, upstream, worker, frame, code):
    communicator, _, _ = await connect(alice)
    reply = await frames_after(communicator, frame)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert reply["message"]
    # The socket stays open and usable.
    reply = await frames_after(communicator, {"type": "chat.unknown"})
    assert reply["code"] == "unknown_type"
    await communicator.disconnect()
    assert await Message.objects.acount() == 0
    assert await Conversation.objects.acount() == 0
    assert upstream.requests == []


async def test_binary_and_oversized_frames_are_refused(alice, upstream, worker, settings):
    settings.CHAT_MAX_FRAME_BYTES = 1000
    communicator, _, _ = await connect(alice)
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert (await receive(communicator))["code"] == "invalid_frame"
    reply = await frames_after(communicator, {"type": "chat.send", "conversation": None, "text": "y" * 2000})
    assert reply["code"] == "frame_too_large"
    await communicator.disconnect()


async def test_error_frames_echo_the_client_id(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    reply = await frames_after(communicator, {"type": "chat.send", "conversation": None, "text": "", "client_id": "k"})
    assert reply == {"type": "error", "code": "empty_text", "message": "The message is empty.", "client_id": "k"}
    await communicator.disconnect()


async def test_a_second_send_while_answering_is_refused_as_busy(alice, upstream, worker):
    upstream.queue(answer(["slow"] * 5, pause=0.2))
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "first"})
    created = await receive(communicator)
    conversation_id = created["conversation"]["id"]
    await communicator.send_json_to({"type": "chat.send", "conversation": conversation_id, "text": "second"})
    frames = await receive_until(communicator, "error")
    assert frames[-1]["code"] == "busy"
    await receive_until(communicator, "message.done")
    assert await Message.objects.acount() == 2
    # Once the answer is done the conversation takes the next message, with the history sent upstream.
    await communicator.send_json_to({"type": "chat.send", "conversation": conversation_id, "text": "third"})
    done = (await receive_until(communicator, "message.done"))[-1]
    assert done["status"] == "completed"
    assert [item["content"] for item in upstream.requests[-1]["body"]["input"]] == [
        "first",
        "slowslowslowslowslow",
        "third",
    ]
    await communicator.disconnect()


async def test_a_retried_send_with_the_same_client_id_is_not_repeated(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    frame = {"type": "chat.send", "conversation": None, "text": "once", "client_id": "same-id"}
    await communicator.send_json_to(frame)
    first = await receive_until(communicator, "message.done")
    await communicator.send_json_to(frame)
    again = [await receive(communicator), await receive(communicator)]
    assert [frame["type"] for frame in again] == ["message.created", "message.created"]
    created = [frame["message"]["id"] for frame in first if frame["type"] == "message.created"]
    assert [frame["message"]["id"] for frame in again] == created
    assert await Message.objects.acount() == 2
    assert len(upstream.requests) == 1
    await communicator.disconnect()


async def test_sending_without_an_api_key_for_a_remote_api_names_the_variable(alice, worker, settings):
    settings.OPENRESPONSES_BASE_URL = "https://api.example.com/v1"
    settings.OPENRESPONSES_API_KEY = ""
    communicator, _, _ = await connect(alice)
    reply = await frames_after(communicator, {"type": "chat.send", "conversation": None, "text": "hi"})
    assert reply["code"] == "not_configured"
    assert "OPENRESPONSES_API_KEY" in reply["message"]
    await communicator.disconnect()
    assert await Message.objects.acount() == 0


async def test_it_rejects_foreign_origins(alice):
    _, connected, _ = await connect(alice, origin=(b"origin", b"https://evil.example"))
    assert not connected


async def test_a_second_socket_of_the_owner_follows_the_answer_live(alice, upstream, worker):
    upstream.queue(answer([f"w{i} " for i in range(30)], pause=0.02))
    sender, _, _ = await connect(alice)
    await sender.send_json_to({"type": "chat.send", "conversation": None, "text": "go"})
    conversation_id = (await receive(sender))["conversation"]["id"]
    follower, _, _ = await connect(alice)
    await follower.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    frames = await receive_until(follower, "message.done")
    assert frames[0]["type"] == "conversation.subscribed"
    snapshot_text, last_seq = "", 0
    for frame in frames:
        if frame["type"] == "message.snapshot":
            snapshot_text, last_seq = frame["text"], frame["seq"]
    deltas = [frame for frame in frames if frame["type"] == "message.delta"]
    assert all(frame["seq"] > last_seq for frame in deltas)
    expected = "".join(f"w{i} " for i in range(30))
    assert snapshot_text + "".join(frame["delta"] for frame in deltas) == expected
    assert frames[-1]["text"] == expected
    await receive_until(sender, "message.done")
    await sender.disconnect()
    await follower.disconnect()
    assert_no_groups_left()


async def test_the_number_of_open_sockets_per_user_is_bounded(alice, bob, settings):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    first, _, _ = await connect(alice)
    second, _, _ = await connect(alice)
    third, connected, _ = await connect(alice)
    assert connected
    assert (await receive(third))["code"] == "too_many_sockets"
    assert (await third.receive_output(timeout=2))["type"] == "websocket.close"
    # Another user is not affected, and closing a tab frees a place.
    other, _, _ = await connect(bob)
    await other.send_json_to({"type": "chat.unknown"})
    assert (await receive(other))["code"] == "unknown_type"
    await first.disconnect()
    fourth, _, _ = await connect(alice)
    await fourth.send_json_to({"type": "chat.unknown"})
    assert (await receive(fourth))["code"] == "unknown_type"
    for communicator in (second, third, other, fourth):
        await communicator.disconnect()


async def test_frames_on_a_refused_socket_are_ignored(alice, settings):
    settings.CHAT_MAX_SOCKETS_PER_USER = 0
    communicator, _, _ = await connect(alice)
    assert (await receive(communicator))["code"] == "too_many_sockets"
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": "00000000-0000-0000-0000-000000000000"})
    assert (await communicator.receive_output(timeout=2))["type"] == "websocket.close"
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()
