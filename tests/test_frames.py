"""Any frame, of any shape, type and depth, gets one answer and leaves the socket working; a socket
gives its place back however it ends (chat/consumers.py)."""

import asyncio
import json
import logging

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import consumers
from chat.models import Conversation, Message
from chat.runtime import current
from tests.factories import conversation_with_answer
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

FRAME_TYPES = ["chat.send", "chat.stop", "chat.subscribe", "chat.edit", "chat.regenerate", "chat.select"]
FIELDS = ["type", "conversation", "message", "text", "model", "client_id", "parent"]
DEEP = 100_000


def deep(depth, opener="["):
    closer = {"[": "]", '{"a":': "}"}[opener]
    return opener * depth + ("0" if opener != "[" else "") + closer * depth


# Values of every JSON kind, NaN and the infinities included (json.dumps writes them as the
# literals NaN, Infinity and -Infinity), numbers of every size, text with any code point: lone
# surrogates come out as \ud800-style escapes.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**300)
    | st.floats()
    | st.text(max_size=30)
    | st.text(alphabet=st.characters(categories=["Cs", "Cc", "Zl", "Co"]), max_size=5)
    | st.uuids().map(str)
    | st.sampled_from(FRAME_TYPES)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
# Raw JSON text that json.dumps would not write: deep nesting, overlong numbers, bare literals.
raw_values = st.one_of(
    st.integers(min_value=1, max_value=DEEP).map(deep),
    st.integers(min_value=1, max_value=3000).map(lambda depth: deep(depth, '{"a":')),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-0", "0.0e-999"]),
    st.sampled_from(['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"a\\u0000b"', '"\\u2028\\u2029"', '"\\uffff"']),
)


@st.composite
def typed_frames(draw):
    """A frame of each type with each of its fields of any kind, possibly raw, deep or doubled."""
    fields = {"type": json.dumps(draw(st.sampled_from(FRAME_TYPES)))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        fields[name] = draw(st.one_of(json_values.map(json.dumps), raw_values))
    members = [f"{json.dumps(name)}: {value}" for name, value in fields.items()]
    if draw(st.booleans()):
        # A duplicate key: the last one wins in Python's parser; either way it is answered.
        name = draw(st.sampled_from(FIELDS))
        members.insert(draw(st.integers(0, len(members))), f"{json.dumps(name)}: {draw(raw_values)}")
    return "{" + ", ".join(members) + "}"


frames = st.one_of(
    typed_frames().map(lambda text: ("text", text)),
    json_values.map(lambda value: ("text", json.dumps(value))),
    raw_values.map(lambda text: ("text", text)),
    st.text(max_size=100).map(lambda text: ("text", text)),
    st.binary(max_size=100).map(lambda data: ("bytes", data)),
)


async def exactly_one_answer(communicator, kind, data):
    """The frame's one answer; the next frame's answer proves nothing else came and the socket lives."""
    await communicator.send_input({"type": "websocket.receive", kind: data})
    reply = await receive(communicator)
    await communicator.send_json_to({"type": "chat.unknown"})
    assert await receive(communicator) == {
        "type": "error",
        "code": "unknown_type",
        "message": "Unknown frame type 'chat.unknown'.",
    }
    return reply


async def every_place_opens(user):
    """The user can hold CHAT_MAX_SOCKETS_PER_USER sockets at once, and not one more: no place
    was lost."""
    sockets = []
    for _ in range(django_settings.CHAT_MAX_SOCKETS_PER_USER):
        communicator, connected, _ = await connect(user)
        assert connected
        await communicator.send_json_to({"type": "chat.unknown"})
        assert (await receive(communicator))["code"] == "unknown_type"
        sockets.append(communicator)
    extra, _, _ = await connect(user)
    assert (await receive(extra))["code"] == "too_many_sockets"
    for communicator in [*sockets, extra]:
        await communicator.disconnect()
    assert current().open_sockets == {}
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
def test_any_frame_gets_one_error_and_no_socket_place_is_lost(alice, worker, settings):
    # Sends are refused for want of a key, so even a well-formed chat.send stores nothing; ids are
    # random, so every other frame is refused too.
    settings.OPENRESPONSES_BASE_URL = "https://api.example.invalid/v1"
    settings.OPENRESPONSES_API_KEY = ""
    settings.CHAT_MAX_SOCKETS_PER_USER = 3

    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frame=frames)
    def one_frame(frame):
        async def exchange():
            communicator, connected, _ = await connect(alice)
            assert connected
            reply = await exactly_one_answer(communicator, *frame)
            await communicator.disconnect()
            return reply

        reply = async_to_sync(exchange)()
        assert reply["type"] == "error"
        assert reply["code"] != "internal_error", reply
        assert isinstance(reply["message"], str) and reply["message"]

    one_frame()
    assert (Conversation.objects.count(), Message.objects.count()) == (0, 0)
    async_to_sync(every_place_opens)(alice)


TYPE_SHAPES = [
    "[]",
    "{}",
    "[[]]",
    '{"type": "chat.send"}',
    '["chat.send"]',
    "null",
    "true",
    "0",
    "1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    '""',
    '"\\ud800"',
    '"chat.send\\u0000"',
    '"CHAT.SEND"',
    deep(5000),
    deep(DEEP),
    deep(1000, '{"a":'),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("shape", TYPE_SHAPES, ids=lambda shape: shape[:20])
async def test_a_type_of_any_shape_is_answered_unknown_or_invalid(alice, worker, settings, shape):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    communicator, _, _ = await connect(alice)
    reply = await exactly_one_answer(communicator, "text", f'{{"type": {shape}}}')
    assert reply["code"] in ("unknown_type", "invalid_json")
    await communicator.disconnect()
    await every_place_opens(alice)


FIELD_SHAPES = [
    "[]",
    "{}",
    "null",
    "true",
    "12",
    "1" * 5000,
    "1e999",
    "NaN",
    "-Infinity",
    '"\\ud800"',
    '"\\udfff"',
    '"a\\u0000b"',
    deep(900),
    deep(DEEP),
    deep(900, '{"a":'),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("frame_type", FRAME_TYPES)
@pytest.mark.parametrize("field", FIELDS[1:])
async def test_every_field_of_every_frame_type_takes_any_shape(alice, worker, settings, frame_type, field):
    """Each field of each frame type, in turn, of every shape, the others well formed. Sends are
    refused for want of a key once their fields passed (not_configured), so each frame gets
    exactly one answer and stores nothing."""
    settings.OPENRESPONSES_BASE_URL = "https://api.example.invalid/v1"
    settings.OPENRESPONSES_API_KEY = ""
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    conversation = await database_sync_to_async(conversation_with_answer)(alice)
    question = await Message.objects.aget(conversation=conversation, role="user")
    reply_row = await Message.objects.aget(conversation=conversation, role="assistant")
    good = {
        "conversation": json.dumps(str(conversation.id)),
        "message": json.dumps(str(question.id if frame_type in ("chat.edit", "chat.select") else reply_row.id)),
        "text": '"fine text"',
        "client_id": '"k"',
    }
    communicator, _, _ = await connect(alice)
    for shape in FIELD_SHAPES:
        members = {"type": json.dumps(frame_type), **good, field: shape}
        text = "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in members.items()) + "}"
        reply = await exactly_one_answer(communicator, "text", text)
        # A field the frame type does not read changes nothing: subscribe and select still answer.
        assert reply["type"] in ("error", "conversation.subscribed", "conversation.path"), (shape[:40], reply)
        assert reply.get("code") != "internal_error", (shape[:40], reply)
    await communicator.disconnect()
    assert await Message.objects.acount() == 2
    await every_place_opens(alice)


UNSTORABLE = [("text", "\ud800 lone"), ("text", "nul \x00 inside"), ("client_id", "\udfff"), ("client_id", "a\x00")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame_type", "field", "value"),
    [
        *[("chat.send", field, value) for field, value in UNSTORABLE],
        *[("chat.edit", field, value) for field, value in UNSTORABLE],
        *[("chat.regenerate", field, value) for field, value in UNSTORABLE if field == "client_id"],
    ],
)
async def test_text_the_database_cannot_store_is_refused_before_anything_is_stored(
    alice, upstream, worker, frame_type, field, value
):
    """A lone surrogate is not UTF-8 and PostgreSQL refuses NUL: both would fail half-way through
    a write. The upstream is configured: a frame that got through would store and send."""
    conversation = await database_sync_to_async(conversation_with_answer)(alice)
    question = await Message.objects.aget(conversation=conversation, role="user")
    answer_row = await Message.objects.aget(conversation=conversation, role="assistant")
    target = {"chat.send": None, "chat.edit": question, "chat.regenerate": answer_row}[frame_type]
    frame = {"type": frame_type, "conversation": str(conversation.id), "text": "fine", "client_id": "fine"}
    if target is not None:
        frame["message"] = str(target.id)
    frame[field] = value
    communicator, _, _ = await connect(alice)
    reply = await exactly_one_answer(communicator, "text", json.dumps(frame))
    assert reply["code"] == "invalid_field"
    assert await Message.objects.acount() == 2
    assert upstream.requests == []
    # The same frame with storable text goes through.
    frame[field] = "fine"
    await communicator.send_json_to(frame)
    assert (await receive_until(communicator, "message.done"))[-1]["status"] == "completed"
    await communicator.disconnect()


# --- Unexpected failures ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_handler_that_raises_is_answered_and_logged_and_the_socket_lives_on(
    alice, worker, monkeypatch, caplog, settings
):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    conversation = await database_sync_to_async(conversation_with_answer)(alice)

    def broken(user, conversation_id):
        raise RuntimeError("a bug in reading the conversation")

    monkeypatch.setattr(consumers, "conversation_state", database_sync_to_async(broken))
    caplog.set_level(logging.ERROR, logger="chat.consumers")
    communicator, _, _ = await connect(alice)
    for _ in range(settings.CHAT_MAX_SOCKETS_PER_USER + 1):
        frame = {"type": "chat.subscribe", "conversation": str(conversation.id), "client_id": "x"}
        reply = await exactly_one_answer(communicator, "text", json.dumps(frame))
        assert reply["code"] == "internal_error" and reply["client_id"] == "x"
        assert "RuntimeError" not in reply["message"]
    failures = [record for record in caplog.records if record.name == "chat.consumers"]
    assert len(failures) == 3
    assert all(record.exc_info and record.exc_info[0] is RuntimeError for record in failures)
    monkeypatch.undo()
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
    assert (await receive(communicator))["type"] == "conversation.subscribed"
    await communicator.disconnect()
    await every_place_opens(alice)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_sockets_that_crash_or_are_cancelled_give_their_place_back(alice, worker, monkeypatch, settings):
    """More crashes than places, of every kind that skips disconnect(), and every place is free."""
    settings.CHAT_MAX_SOCKETS_PER_USER = 2

    def failing_relay_for(loop):
        raise RuntimeError("the relay could not start")

    for _ in range(3):
        # An exception once the place is taken, before the socket is accepted.
        with monkeypatch.context() as patched:
            patched.setattr(current(), "relay_for", failing_relay_for)
            with pytest.raises(RuntimeError):
                await connect(alice)

        # The task cancelled (the server shutting down, or giving up on an application).
        communicator, connected, _ = await connect(alice)
        assert connected
        communicator.future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await communicator.future

        # The browser gone before the accept reached it.
        communicator, _, _ = await connect(alice, origin=None)  # refused at the handshake
        communicator, _, _ = await connect(alice)
        await communicator.send_input({"type": "websocket.disconnect", "code": 1001})
        await communicator.wait(timeout=5)

        # An exception escaping the consumer while it follows a conversation.
        communicator, _, _ = await connect(alice)
        conversation = await database_sync_to_async(conversation_with_answer)(alice)
        await communicator.send_json_to({"type": "chat.subscribe", "conversation": str(conversation.id)})
        await receive_until(communicator, "conversation.subscribed")
        monkeypatch.setattr(consumers.ChatConsumer, "send_json", failing_send)
        await communicator.send_json_to({"type": "chat.unknown"})
        with pytest.raises(RuntimeError):
            await communicator.receive_output(timeout=5)
        monkeypatch.undo()
    await every_place_opens(alice)


async def failing_send(self, content):
    raise RuntimeError("the transport failed")
