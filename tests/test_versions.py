"""Message versions: regenerate, edit and switching between versions, over the real websocket.

Answers come from the loopback upstream; what each answer was generated from is read off the
request body the upstream received.
"""

import datetime
import json

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message, MessageTree
from chat.transcripts import export
from tests.factories import conversation_with_answer
from tests.upstream import Status, answer
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def texts(request):
    """The contents of the input items an upstream request carried."""
    return [item["content"] for item in request["body"]["input"]]


def created(frames):
    return [frame["message"] for frame in frames if frame["type"] == "message.created"]


async def exchange(communicator, frame, *scenarios, upstream=None):
    """Send a frame that starts an answer; returns (message.created messages, message.done)."""
    if upstream is not None:
        upstream.queue(*scenarios)
    await communicator.send_json_to(frame)
    frames = await receive_until(communicator, "message.done")
    return created(frames), frames[-1]


async def start(communicator, upstream, text="Hi", reply="First answer."):
    """A new conversation with one finished exchange: (conversation id, user message, answer)."""
    upstream.queue(answer([reply]))
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": text})
    frames = await receive_until(communicator, "message.done")
    conversation_id = frames[0]["conversation"]["id"]
    question, reply_frame = created(frames)
    return conversation_id, question, reply_frame


@database_sync_to_async
def page_messages(user, conversation_id):
    """The messages the conversation's page shows after a reload."""
    client = Client()
    client.force_login(user)
    response = client.get(reverse("chat:conversation", args=[conversation_id]))
    return response.context["page_data"]["messages"]


# --- over the websocket --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_regenerate_adds_a_version_generated_from_the_same_question(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, first = await start(communicator, upstream, "Name a river", "The Nile.")
    assert first["parent"] == question["id"]
    assert first["versions"] == {"index": 0, "count": 1, "ids": [first["id"]]}

    messages, done = await exchange(
        communicator, {"type": "chat.regenerate", "message": first["id"]}, answer(["The Amazon."]), upstream=upstream
    )
    [second] = messages
    assert second["role"] == "assistant"
    assert second["status"] == "queued"
    assert second["parent"] == question["id"]
    assert second["versions"] == {"index": 1, "count": 2, "ids": [first["id"], second["id"]]}
    assert (done["message"], done["status"], done["text"]) == (second["id"], "completed", "The Amazon.")
    # The new version answers the same question, without the version it replaces.
    assert texts(upstream.requests[-1]) == ["Name a river"]

    # Both versions are kept; the page now shows the new one.
    assert await Message.objects.filter(conversation_id=conversation_id).acount() == 3
    shown = await page_messages(alice, conversation_id)
    assert [message["id"] for message in shown] == [question["id"], second["id"]]
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_regenerating_a_later_answer_keeps_the_path_before_it(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, _, first = await start(communicator, upstream, "one", "ONE")
    messages, _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": conversation_id, "text": "two"},
        answer(["TWO"]),
        upstream=upstream,
    )
    messages, done = await exchange(
        communicator, {"type": "chat.regenerate", "message": messages[1]["id"]}, answer(["Two!"]), upstream=upstream
    )
    assert done["text"] == "Two!"
    assert texts(upstream.requests[-1]) == ["one", "ONE", "two"]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_edit_sends_the_new_text_and_not_the_old_branch(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, _, first = await start(communicator, upstream, "one", "ONE")
    (old_question, old_answer), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": conversation_id, "text": "two"},
        answer(["TWO"]),
        upstream=upstream,
    )

    messages, done = await exchange(
        communicator,
        {"type": "chat.edit", "message": old_question["id"], "text": "three"},
        answer(["THREE"]),
        upstream=upstream,
    )
    new_question, new_answer = messages
    assert new_question["role"] == "user"
    assert new_question["text"] == "three"
    assert new_question["parent"] == first["id"]
    assert new_question["versions"] == {"index": 1, "count": 2, "ids": [old_question["id"], new_question["id"]]}
    assert new_answer["parent"] == new_question["id"]
    assert new_answer["versions"]["count"] == 1
    assert (done["message"], done["text"]) == (new_answer["id"], "THREE")
    sent = texts(upstream.requests[-1])
    assert sent == ["one", "ONE", "three"]
    assert "two" not in sent and "TWO" not in sent

    # The old exchange is still stored, one chat.select away.
    await communicator.send_json_to({"type": "chat.select", "message": old_question["id"]})
    path = await receive(communicator)
    assert path["type"] == "conversation.path"
    assert path["conversation"] == conversation_id
    assert [message["text"] for message in path["messages"]] == ["one", "ONE", "two", "TWO"]
    assert path["messages"][2]["versions"]["index"] == 0
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_editing_the_first_message_starts_the_input_afresh(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    _, question, _ = await start(communicator, upstream, "Hello", "Hi there.")
    messages, _ = await exchange(
        communicator, {"type": "chat.edit", "message": question["id"], "text": "Bonjour"}, upstream=upstream
    )
    assert messages[0]["parent"] is None
    assert messages[0]["versions"]["count"] == 2
    assert texts(upstream.requests[-1]) == ["Bonjour"]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_select_switches_the_path_and_a_reload_keeps_it(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, first = await start(communicator, upstream, "Name a river", "The Nile.")
    (second,), _ = await exchange(
        communicator, {"type": "chat.regenerate", "message": first["id"]}, answer(["The Amazon."]), upstream=upstream
    )

    await communicator.send_json_to({"type": "chat.select", "message": first["id"]})
    path = await receive(communicator)
    assert [message["id"] for message in path["messages"]] == [question["id"], first["id"]]
    assert path["messages"][1]["versions"] == {"index": 0, "count": 2, "ids": [first["id"], second["id"]]}
    assert path["messages"][1]["text"] == "The Nile."

    # A reload and another tab show the chosen version.
    assert [message["id"] for message in await page_messages(alice, conversation_id)] == [question["id"], first["id"]]
    other, _, _ = await connect(alice)
    await other.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    subscribed = await receive(other)
    assert [message["id"] for message in subscribed["messages"]] == [question["id"], first["id"]]

    # A send follows the path shown: the chosen version is in its input, the other is not.
    messages, _ = await exchange(
        communicator, {"type": "chat.send", "conversation": conversation_id, "text": "Longer?"}, upstream=upstream
    )
    assert messages[0]["parent"] == first["id"]
    assert texts(upstream.requests[-1]) == ["Name a river", "The Nile.", "Longer?"]
    await receive_until(other, "message.done")
    await other.disconnect()
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_selecting_a_message_follows_the_newest_versions_below_it(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, first = await start(communicator, upstream, "q1", "a1")
    (question_2, answer_2), _ = await exchange(
        communicator, {"type": "chat.send", "conversation": conversation_id, "text": "q2"}, upstream=upstream
    )
    (answer_2b,), _ = await exchange(
        communicator, {"type": "chat.regenerate", "message": answer_2["id"]}, upstream=upstream
    )
    (answer_1b,), _ = await exchange(
        communicator, {"type": "chat.regenerate", "message": first["id"]}, upstream=upstream
    )

    await communicator.send_json_to({"type": "chat.select", "message": first["id"]})
    path = await receive(communicator)
    assert [message["id"] for message in path["messages"]] == [
        question["id"],
        first["id"],
        question_2["id"],
        answer_2b["id"],
    ]
    await communicator.send_json_to({"type": "chat.select", "message": answer_1b["id"]})
    path = await receive(communicator)
    assert [message["id"] for message in path["messages"]] == [question["id"], answer_1b["id"]]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_send_names_the_answer_it_follows(alice, upstream, worker):
    """A tab still showing another version sends where its person sees, not where another tab is."""
    communicator, _, _ = await connect(alice)
    conversation_id, _, first = await start(communicator, upstream, "Name a river", "The Nile.")
    await exchange(communicator, {"type": "chat.regenerate", "message": first["id"]}, upstream=upstream)
    messages, _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": conversation_id, "text": "Why?", "parent": first["id"]},
        upstream=upstream,
    )
    assert messages[0]["parent"] == first["id"]
    assert texts(upstream.requests[-1]) == ["Name a river", "The Nile.", "Why?"]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_retry_of_a_failed_answer_is_a_regenerate(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    upstream.queue([Status(500, b'{"error":{"message":"boom","type":"server_error"}}')])
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Try me"})
    frames = await receive_until(communicator, "message.done")
    assert frames[-1]["status"] == "failed"
    failed = created(frames)[1]
    (retried,), done = await exchange(
        communicator, {"type": "chat.regenerate", "message": failed["id"]}, answer(["Worked."]), upstream=upstream
    )
    assert done["status"] == "completed"
    assert retried["versions"]["ids"] == [failed["id"], retried["id"]]
    assert texts(upstream.requests[-1]) == ["Try me"]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_retried_regenerate_with_the_same_client_id_is_not_repeated(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    _, _, first = await start(communicator, upstream)
    frame = {"type": "chat.regenerate", "message": first["id"], "client_id": "regen-1"}
    (again,), _ = await exchange(communicator, frame, upstream=upstream)
    requests = len(upstream.requests)
    await communicator.send_json_to(frame)
    repeated = await receive(communicator)
    assert repeated["type"] == "message.created"
    assert repeated["message"]["id"] == again["id"]
    assert await communicator.receive_nothing(timeout=0.3)
    assert len(upstream.requests) == requests
    assert await Message.objects.acount() == 3
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_versions_are_refused_while_an_answer_is_written(alice, upstream, worker):
    communicator, _, _ = await connect(alice)
    conversation_id, question, first = await start(communicator, upstream)
    upstream.queue(answer(["slow "] * 6, pause=0.2))
    await communicator.send_json_to({"type": "chat.regenerate", "message": first["id"]})
    writing = created(await receive_until(communicator, "message.delta"))[0]
    for frame in (
        {"type": "chat.regenerate", "message": first["id"], "client_id": "r"},
        {"type": "chat.edit", "message": question["id"], "text": "other", "client_id": "e"},
        {"type": "chat.select", "message": first["id"], "client_id": "s"},
    ):
        await communicator.send_json_to(frame)
        refused = (await receive_until(communicator, "error"))[-1]
        assert (refused["code"], refused["client_id"]) == ("busy", frame["client_id"])
    await receive_until(communicator, "message.done")
    assert await Message.objects.acount() == 3
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert str(conversation.current_id) == writing["id"], "the answer being written stays on the path"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_regenerates_count_against_the_send_rate(alice, upstream, worker, settings):
    settings.CHAT_SENDS_PER_MINUTE = 2
    communicator, _, _ = await connect(alice)
    _, _, first = await start(communicator, upstream)
    await exchange(communicator, {"type": "chat.regenerate", "message": first["id"]}, upstream=upstream)
    await communicator.send_json_to({"type": "chat.regenerate", "message": first["id"]})
    assert (await receive(communicator))["code"] == "rate_limited"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_another_users_messages_are_answered_like_unknown_ones(alice, bob, upstream, worker):
    theirs = await database_sync_to_async(conversation_with_answer)(bob, "bob's secret")
    bobs_question = await Message.objects.filter(conversation=theirs, role="user").afirst()
    bobs_answer = await Message.objects.filter(conversation=theirs, role="assistant").afirst()
    communicator, _, _ = await connect(alice)
    mine = await database_sync_to_async(conversation_with_answer)(alice, "mine")
    for frame in (
        {"type": "chat.regenerate", "message": str(bobs_answer.id)},
        {"type": "chat.edit", "message": str(bobs_question.id), "text": "mine now"},
        {"type": "chat.select", "message": str(bobs_answer.id)},
        {"type": "chat.send", "conversation": str(mine.id), "text": "hi", "parent": str(bobs_answer.id)},
    ):
        await communicator.send_json_to(frame)
        foreign = await receive(communicator)
        unknown_id = {key: (UNKNOWN if key in ("message", "parent") else value) for key, value in frame.items()}
        await communicator.send_json_to(unknown_id)
        unknown = await receive(communicator)
        assert foreign == unknown == {"type": "error", "code": "not_found", "message": "No such message."}
    assert await Message.objects.acount() == 4
    assert upstream.requests == []
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "chat.regenerate"}, "invalid_field"),
        ({"type": "chat.regenerate", "message": 7}, "invalid_field"),
        ({"type": "chat.regenerate", "message": "not-an-id"}, "not_found"),
        ({"type": "chat.regenerate", "message": "{question}"}, "invalid_field"),
        ({"type": "chat.regenerate", "message": "{answer}", "model": "nope"}, "unknown_model"),
        ({"type": "chat.regenerate", "message": "{answer}", "client_id": ["x"]}, "invalid_field"),
        ({"type": "chat.edit", "message": "{question}"}, "invalid_field"),
        ({"type": "chat.edit", "message": "{question}", "text": "  "}, "empty_text"),
        ({"type": "chat.edit", "message": "{question}", "text": "x" * 32_001}, "text_too_long"),
        ({"type": "chat.edit", "message": "{answer}", "text": "an answer is not mine to edit"}, "invalid_field"),
        ({"type": "chat.edit", "text": "no id"}, "invalid_field"),
        ({"type": "chat.select", "message": None}, "invalid_field"),
        ({"type": "chat.select", "message": UNKNOWN}, "not_found"),
        ({"type": "chat.send", "conversation": "{conversation}", "text": "hi", "parent": "{question}"}, "not_found"),
        ({"type": "chat.send", "conversation": "{conversation}", "text": "hi", "parent": 3}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "parent": "{answer}"}, "invalid_field"),
    ],
)
async def test_bad_version_frames_get_an_error_and_change_nothing(alice, upstream, worker, frame, code):
    conversation = await database_sync_to_async(conversation_with_answer)(alice)
    question = await Message.objects.filter(conversation=conversation, role="user").afirst()
    reply = await Message.objects.filter(conversation=conversation, role="assistant").afirst()
    names = {"{question}": str(question.id), "{answer}": str(reply.id), "{conversation}": str(conversation.id)}
    frame = {key: names.get(value, value) if isinstance(value, str) else value for key, value in frame.items()}
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to(frame)
    error = await receive(communicator)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    await communicator.send_json_to({"type": "chat.unknown"})
    assert (await receive(communicator))["code"] == "unknown_type"
    await communicator.disconnect()
    assert await Message.objects.acount() == 2
    assert upstream.requests == []


# --- the tree, the migration and the records -----------------------------------------------


def upstream_input(conversation, before):
    """The message items the answer `before` is sent (AnswerInput.pairs), its files read."""
    return [item for _, item in conversation.answer_input(before).pairs()]


@pytest.mark.django_db
def test_upstream_input_follows_the_answers_own_path_and_skips_textless_turns(alice):
    conversation = conversation_with_answer(alice, "one", "ONE")
    first_answer = conversation.current
    failed = conversation.queue_answer(first_answer.parent)
    Message.objects.filter(pk=failed.pk).update(status=Message.Status.FAILED)
    _, later = conversation.start_exchange("two", after=first_answer)
    assert upstream_input(conversation, later) == [
        {"type": "message", "role": "user", "content": "one"},
        {"type": "message", "role": "assistant", "content": "ONE"},
        {"type": "message", "role": "user", "content": "two"},
    ]
    _, after_failed = conversation.start_exchange("three", after=failed)
    assert [item["content"] for item in upstream_input(conversation, after_failed)] == ["one", "three"]


@pytest.mark.django_db
def test_a_conversation_without_a_current_message_shows_its_newest_path(alice):
    """Rows stored before versions existed, or straight in the database, still make a path."""
    conversation = conversation_with_answer(alice)
    Conversation.objects.filter(pk=conversation.pk).update(current=None)
    conversation.refresh_from_db()
    assert [message.role for message in conversation.path()] == ["user", "assistant"]
    assert MessageTree([]).path(None) == []


@pytest.mark.django_db
def test_exports_and_the_admin_mark_earlier_versions(alice, admin_client):
    conversation = conversation_with_answer(alice, "Name a river", "The Nile.")
    earlier = conversation.current
    [later] = conversation.regenerate(earlier)
    Message.objects.filter(pk=later.pk).update(status=Message.Status.COMPLETED, text="The Amazon.")

    data = json.loads(export(Conversation.objects.all(), "json")[0])["conversations"][0]
    assert data["current"] == str(later.id)
    rows = {row["text"]: row for row in data["messages"]}
    assert rows["The Nile."]["parent"] == rows["The Amazon."]["parent"] == str(earlier.parent_id)
    assert rows["Name a river"]["parent"] is None
    assert [rows[text]["on_current_path"] for text in ("Name a river", "The Nile.", "The Amazon.")] == [
        True,
        False,
        True,
    ]
    markdown = export(Conversation.objects.all(), "markdown")[0]
    assert markdown.count("## Assistant (earlier version)") == 1

    page = admin_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk])).content.decode()
    assert page.count('aria-label="Assistant message, earlier version"') == 1
    assert page.count('aria-label="Assistant message"') == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_links_existing_messages_in_order_and_can_be_reversed():
    executor = MigrationExecutor(connection)
    before, after = [("chat", "0002_audit_and_limits")], [("chat", "0003_versions")]
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        owner = old.get_model("auth", "User").objects.create(username="legacy")
        Conversation_ = old.get_model("chat", "Conversation")
        Message_ = old.get_model("chat", "Message")
        start = timezone.now() - datetime.timedelta(hours=1)
        conversations, expected = [], {}
        for number in range(2):
            conversation = Conversation_.objects.create(owner=owner, title=f"c{number}", model="test-model")
            conversations.append(conversation.id)
            rows = [
                Message_.objects.create(
                    conversation=conversation,
                    role=("user", "assistant")[index % 2],
                    text=f"c{number} m{index}",
                    created_at=start + datetime.timedelta(seconds=index * 10 + number),
                )
                for index in range(4)
            ]
            expected[conversation.id] = [row.id for row in rows]
        Conversation_.objects.create(owner=owner, title="empty", model="test-model")

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        for conversation_id, ids in expected.items():
            conversation = new.get_model("chat", "Conversation").objects.get(pk=conversation_id)
            assert conversation.current_id == ids[-1]
            parents = dict(
                new.get_model("chat", "Message")
                .objects.filter(conversation_id=conversation_id)
                .values_list("id", "parent_id")
            )
            assert [parents[message_id] for message_id in ids] == [None, *ids[:-1]]
        assert new.get_model("chat", "Conversation").objects.get(title="empty").current_id is None

        executor = MigrationExecutor(connection)
        executor.migrate(before)  # reversible: the columns go, the messages stay
        assert old.get_model("chat", "Message").objects.count() == 8
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("chat"))
