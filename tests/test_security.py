"""Security properties that do not need a browser (the browser ones are in tests/browser/)."""

import io
import json
import logging
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.models import Conversation, Message
from chat.upstream import HOLD_FROM
from tests.factories import conversation_with_answer
from tests.upstream import (
    Hangup,
    Status,
    answer,
    chunked,
    error_event,
    finished,
    message_item,
    reasoning_events,
    reasoning_item,
    refusal_events,
    started,
    stream,
    text_events,
    usage_object,
)
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


REDACTED = "[API key]"


def key_echoing_scenarios():
    """Answers from an upstream that echoes the key in every field it has, whole or split across
    deltas and SSE chunks: (scenario, expected status, expected stored text or None)."""
    key = API_KEY
    response_id, model = f"resp_{key}", f"model-{key}"
    every_field = stream(
        *started(response_id, model),
        {"type": f"response.{key}", "note": key},  # an event type nobody knows: skipped
        *reasoning_events([[f"think {key[:5]}", f"{key[5:]} on"], [f"and {key}"]]),
        *text_events([f"text {key} ", key[:10], key[10:20], key[20:], " end"]),
        finished(
            "completed",
            [
                reasoning_item([[f"think {key} on"], [f"and {key}"]]),
                message_item(f"text {key} {key} end"),
            ],
            usage={**usage_object(3, 4), "input_tokens_details": {"cached_tokens": 1, key: key}, "note": key},
            response_id=response_id,
            model=model,
        ),
    )
    # Lines that are logged as skipped: not JSON, and JSON without a type.
    every_field[2:2] = [f"data: not json {key}\n\n".encode(), f'data: {{"{key}": "{key}"}}\n\n'.encode()]
    refusal = stream(
        *started(),
        *refusal_events([f"no {key[:3]}", f"{key[3:]}!"]),
        finished("completed", [message_item(refusal=f"no {key}!")]),
    )
    failed_by_events = stream(
        *started(),
        *text_events([f"so far {key[:8]}", key[8:]]),
        error_event(key, f"bad {key}"),
        finished("failed", error={"code": key, "message": f"failed {key}"}),
    )
    flat_error_then_eof = stream(*started(), error_event(key, f"flat {key}", flat=True))
    # Split at every offset, one character per delta, and near-misses that never complete the key.
    deltas = [piece for offset in range(1, len(key)) for piece in (f" {offset}:{key[:offset]}", key[offset:])]
    deltas += [" chars:", *key, " near:", key[:7], " not it ", key[:3], "x", " last ", key[:5]]
    split_everywhere = chunked(
        stream(*started(), *text_events(deltas), finished("completed", [], usage=usage_object(1, 1))), 7
    )
    # Streamed, the key's first characters go out before they can be told from words ending so
    # ("s", "sk"): up to HOLD_FROM - 1 of them show; from there on it is held back until known.
    streamed = "".join(
        f" {offset}:{key[:offset] if offset < HOLD_FROM else ''}{REDACTED}" for offset in range(1, len(key))
    )
    streamed += f" chars:{key[: HOLD_FROM - 1]}{REDACTED} near:{key[:7]} not it {key[:3]}x last {key[:5]}"
    cut_off = stream(
        *started(),
        {"type": "response.output_item.added", "output_index": 0, "item": message_item(status="in_progress")},
        {
            "type": "response.output_text.delta",
            "item_id": "msg_test",
            "output_index": 0,
            "content_index": 0,
            "delta": f"cut {key[:20]}",
        },
        Hangup(),
    )
    http_error = {"error": {"message": f"m {key}", "type": key, "code": key}}
    # (scenario, status, the text stored, the text the deltas built) where the test knows them
    return [
        (every_field, "completed", f"text {REDACTED} {REDACTED} end", f"text {REDACTED} {REDACTED} end"),
        (refusal, "completed", None, None),
        (
            answer(["partial ", key[:4], key[4:]], terminal="incomplete", incomplete_reason=key),
            "incomplete",
            None,
            None,
        ),
        (failed_by_events, "failed", None, None),
        (flat_error_then_eof, "failed", None, None),
        ([Status(400, json.dumps(http_error).encode())], "failed", None, None),
        ([Status(403, json.dumps(http_error).encode())], "failed", None, None),
        ([Status(404, f"<html>{key}</html>".encode())], "failed", None, None),
        # The final text (from output_text.done here, the terminal event's in the next) is stored,
        # with the key blanked out of it as a whole; the deltas built the streamed one.
        (split_everywhere, "completed", "".join(deltas).replace(key, REDACTED), streamed),
        (answer(deltas, pause=0.002), "completed", "".join(deltas).replace(key, REDACTED), streamed),
        (cut_off, "failed", f"cut {REDACTED}", f"cut {REDACTED}"),
    ]


def every_stored_string():
    """Every value of every column of every row of every table, as text."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        value = bytes(value).decode("utf-8", errors="replace")
                    yield f"{table}: {value}"


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
    # Then it echoes the key in every other field too, whole and split.
    echoing = key_echoing_scenarios()
    upstream.queue(*(scenario for scenario, _, _, _ in echoing))
    collected = []
    answers = []

    async def chat():
        communicator, _, _ = await connect(alice)
        conversation = None
        for number in range(3 + len(echoing)):
            text = ("first", "second", "third")[number] if number < 3 else f"message {number}"
            await communicator.send_json_to({"type": "chat.send", "conversation": conversation, "text": text})
            frames = await receive_until(communicator, "message.done", timeout=20)
            collected.extend(json.dumps(frame) for frame in frames)
            answers.append(frames)
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
    for export_format in ("json", "markdown"):
        output = io.StringIO()
        call_command("export_transcripts", "--format", export_format, stdout=output)
        collected.append(output.getvalue())
    collected.extend(record.getMessage() for record in caplog.records)
    collected.extend(str(record.exc_info) for record in caplog.records if record.exc_info)
    collected.extend(every_stored_string())
    stored = list(Message.objects.filter(conversation_id=conversation_id, role="assistant").order_by("created_at"))
    assert [message.status for message in stored][:3] == ["completed", "failed", "failed"]
    assert "[redacted]" in stored[1].error_message or "rejected" in stored[1].error_message
    everything = "\n".join(collected)
    assert "fine answer" in everything
    assert API_KEY not in everything

    assert [message.status for message in stored[3:]] == [status for _, status, _, _ in echoing]
    for message, frames, (_, _, text, streamed) in zip(stored[3:], answers[3:], echoing, strict=True):
        assert frames[-1]["text"] == message.text
        if text is not None:
            assert message.text == text, "the key is blanked out and nothing else is lost"
        if streamed is not None:
            assert "".join(frame["delta"] for frame in frames if frame["type"] == "message.delta") == streamed
    every_field = stored[3]
    assert REDACTED in every_field.response_id and REDACTED in every_field.model
    assert every_field.reasoning == f"think {REDACTED} on\n\nand {REDACTED}"
    assert stored[4].refusal == f"no {REDACTED}!"
    assert stored[5].incomplete_reason == REDACTED[:100]
    assert {stored[6].error_code, stored[7].error_code, stored[8].error_code} == {REDACTED}
    assert API_KEY[:20] not in everything, "a key cut off by a broken stream is blanked out too"


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
