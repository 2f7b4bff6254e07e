import pytest
from channels.layers import get_channel_layer

from chat.models import Conversation, Message
from tests.upstream import answer, usage_object
from tests.websocket import connect, receive, receive_until

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
    assert get_channel_layer().groups == {}
