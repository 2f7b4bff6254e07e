"""Security properties that do not need a browser (the browser ones are in tests/browser/)."""

import json
import logging
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.models import Conversation, Message
from tests.factories import conversation_with_answer
from tests.upstream import Status, answer
from tests.websocket import connect, receive, receive_until

API_KEY = "sk-very-secret-key-0123456789"

# --- Robust parsing of client frames ---------------------------------------------------------

identifiers = st.one_of(
    st.none(), st.integers(), st.text(max_size=40), st.uuids().map(str), st.lists(st.integers(), max_size=3)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
typed_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat.send", "chat.stop", "chat.subscribe", "chat.edit", "", "CHAT.SEND"])},
    optional={
        "conversation": identifiers,
        "message": identifiers,
        "text": st.one_of(st.text(max_size=200), json_values),
        "model": st.one_of(st.text(max_size=20), json_values),
        "client_id": st.one_of(st.text(max_size=80), json_values),
    },
).map(json.dumps)
frames = st.one_of(
    st.binary(max_size=200).map(lambda data: ("bytes", data)),
    st.text(max_size=200).map(lambda text: ("text", text)),
    json_values.map(lambda value: ("text", json.dumps(value))),
    typed_frames.map(lambda text: ("text", text)),
)


@pytest.mark.django_db(transaction=True)
@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_random_frames_get_an_error_and_change_nothing(alice, bob, worker, settings, frame):
    # Sends are refused for want of a key, so even a well-formed chat.send stores nothing.
    settings.OPENRESPONSES_BASE_URL = "https://api.example.invalid/v1"
    settings.OPENRESPONSES_API_KEY = ""
    kind, data = frame

    async def exchange():
        communicator, connected, _ = await connect(alice)
        assert connected
        # Straight to the application: the communicator's helpers refuse empty frames.
        await communicator.send_input({"type": "websocket.receive", kind: data})
        reply = await receive(communicator)
        await communicator.disconnect()
        return reply

    before = (Conversation.objects.count(), Message.objects.count())
    reply = async_to_sync(exchange)()
    assert reply["type"] in ("error", "conversation.subscribed")
    if reply["type"] == "error":
        assert reply["code"] and reply["message"]
    assert (Conversation.objects.count(), Message.objects.count()) == before


# --- Secrets ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_api_key_appears_in_no_page_frame_log_or_export(alice, upstream, worker, settings, client, caplog):
    settings.OPENRESPONSES_API_KEY = API_KEY
    caplog.set_level(logging.DEBUG)
    # The upstream echoes the request's Authorization header into its error message, the worst case.
    upstream.queue(
        answer(["fine ", "answer"]),
        [
            Status(
                401, json.dumps({"error": {"message": f"Bad key Bearer {API_KEY}", "code": "invalid_api_key"}}).encode()
            )
        ],
        [Status(400, json.dumps({"error": {"message": f"Header was: Authorization: Bearer {API_KEY}"}}).encode())],
    )
    collected = []

    async def chat():
        communicator, _, _ = await connect(alice)
        conversation = None
        for text in ("first", "second", "third"):
            await communicator.send_json_to({"type": "chat.send", "conversation": conversation, "text": text})
            frames = await receive_until(communicator, "message.done")
            collected.extend(json.dumps(frame) for frame in frames)
            conversation = frames[0].get("conversation", {}).get("id") if conversation is None else conversation
        await communicator.disconnect()
        return conversation

    conversation_id = async_to_sync(chat)()
    assert all(
        upstream_request["headers"]["Authorization"] == f"Bearer {API_KEY}" for upstream_request in upstream.requests
    )
    client.force_login(alice)
    collected.append(client.get(reverse("chat:home")).content.decode())
    collected.append(client.get(reverse("chat:conversation", args=[conversation_id])).content.decode())
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client.force_login(alice)
    collected.append(client.get(reverse("admin:chat_conversation_change", args=[conversation_id])).content.decode())
    collected.append(client.get(reverse("admin:chat_message_changelist")).content.decode())
    for action in ("export_json", "export_markdown"):
        response = client.post(
            reverse("admin:chat_conversation_changelist"), {"action": action, "_selected_action": [conversation_id]}
        )
        collected.append(response.content.decode())
    collected.extend(record.getMessage() for record in caplog.records)
    collected.extend(str(record.exc_info) for record in caplog.records if record.exc_info)
    stored = Message.objects.filter(conversation_id=conversation_id, role="assistant").order_by("created_at")
    assert [message.status for message in stored] == ["completed", "failed", "failed"]
    assert "[redacted]" in stored[1].error_message or "rejected" in stored[1].error_message
    everything = "\n".join(collected)
    assert "fine answer" in everything
    assert API_KEY not in everything


# --- CSRF and isolation ------------------------------------------------------------------------


@pytest.mark.django_db
def test_state_changing_forms_need_the_csrf_token(alice):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(reverse("logout")).status_code == 403
    assert strict.post(reverse("password_change"), {}).status_code == 403
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(reverse("login"), {"username": "alice", "password": "x"}).status_code == 403


@pytest.mark.django_db
def test_another_users_conversation_page_is_a_404_like_a_missing_one(client, alice, bob):
    bobs = conversation_with_answer(bob, "bob's secret")
    client.force_login(alice)
    foreign = client.get(reverse("chat:conversation", args=[bobs.pk]))
    missing = client.get(reverse("chat:conversation", args=[uuid.uuid4()]))
    assert foreign.status_code == missing.status_code == 404
    assert "bob's secret" not in foreign.content.decode()
    assert "bob's secret" not in client.get(reverse("chat:home")).content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_every_frame_type_treats_another_users_ids_as_unknown(alice, bob, upstream, worker):
    from channels.db import database_sync_to_async

    bobs = await database_sync_to_async(conversation_with_answer)(bob, "bob's secret")
    bobs_answer = await Message.objects.filter(conversation=bobs, role="assistant").afirst()
    communicator, _, _ = await connect(alice)
    frames = [
        (
            {"type": "chat.subscribe", "conversation": str(bobs.pk)},
            {"type": "chat.subscribe", "conversation": str(uuid.uuid4())},
        ),
        (
            {"type": "chat.send", "conversation": str(bobs.pk), "text": "hi"},
            {"type": "chat.send", "conversation": str(uuid.uuid4()), "text": "hi"},
        ),
        ({"type": "chat.stop", "message": str(bobs_answer.pk)}, {"type": "chat.stop", "message": str(uuid.uuid4())}),
    ]
    for foreign, missing in frames:
        await communicator.send_json_to(foreign)
        foreign_reply = await receive(communicator)
        await communicator.send_json_to(missing)
        missing_reply = await receive(communicator)
        assert foreign_reply == missing_reply
        assert foreign_reply["code"] == "not_found"
    await communicator.disconnect()
    assert await Message.objects.filter(conversation=bobs).acount() == 2
    assert upstream.requests == []
