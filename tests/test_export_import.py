"""A user's own export (GET /export/, GET /c/<id>/export.md) and import (POST /import/) of
this site's export, ChatGPT's conversations.json and Open WebUI's chat export."""

import json
from pathlib import Path

import jsonschema
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from chat import transcripts
from chat.models import Conversation, Message, UsageEntry
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db

DATA = Path(__file__).parent / "data" / "imports"
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "export.schema.json").read_text())


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def upload(client, content, name="export.json"):
    if isinstance(content, (dict, list)):
        content = json.dumps(content).encode()
    return client.post(reverse("chat:import"), {"file": SimpleUploadedFile(name, content)})


def sample(name):
    return (DATA / name).read_bytes()


def with_versions(owner):
    """A conversation with a regenerated answer, an edited question, reasoning and a failure."""
    conversation = conversation_with_answer(owner, "Name a river", "The Rhine.", title="Rivers")
    question = conversation.messages.get(role=Message.Role.USER)
    first = conversation.messages.get(role=Message.Role.ASSISTANT)
    second = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        text="The Danube.",
        reasoning="Europe has many.",
        model="other-model",
        input_tokens=3,
        output_tokens=4,
        total_tokens=7,
    )
    follow = Message.objects.create(conversation=conversation, parent=second, role="user", text="Longer?")
    Message.objects.create(
        conversation=conversation,
        parent=follow,
        role="assistant",
        status="failed",
        error_code="server_error",
        error_message="The API broke.",
    )
    edited = Message.objects.create(conversation=conversation, parent=second, role="user", text="Which is longer?")
    last = Message.objects.create(conversation=conversation, parent=edited, role="assistant", text="The Danube.")
    conversation.move_to(last)
    conversation.set_instructions("Answer in one line.")
    return conversation, first


def comparable(record):
    """An exported conversation without what an import makes anew (ids, owner)."""
    ids = {message["id"]: number for number, message in enumerate(record["messages"])}
    messages = [
        {**message, "id": ids[message["id"]], "parent": ids.get(message["parent"])} for message in record["messages"]
    ]
    return {
        **{key: value for key, value in record.items() if key not in ("id", "owner", "current", "messages")},
        "current": ids.get(record["current"]),
        "messages": messages,
    }


# --- export ----------------------------------------------------------------------------------


def test_the_export_is_an_attachment_of_all_ones_own_conversations_in_the_documented_schema(alice_client, alice, bob):
    mine, _ = with_versions(alice)
    conversation_with_answer(alice, "Second", "Two.")
    conversation_with_answer(bob, "Bob's secret", "Hidden.")
    response = alice_client.get(reverse("chat:export"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="chats-')
    exported = json.loads(response.content)
    jsonschema.validate(exported, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert {record["title"] for record in exported["conversations"]} == {"Rivers", "Second"}
    assert "Bob's secret" not in response.content.decode()
    rivers = next(record for record in exported["conversations"] if record["id"] == str(mine.id))
    assert len(rivers["messages"]) == 7
    assert [m["text"] for m in rivers["messages"] if m["on_current_path"]] == [
        "Name a river",
        "The Danube.",
        "Which is longer?",
        "The Danube.",
    ]


def test_the_admin_export_has_the_same_schema(client, superuser, alice):
    with_versions(alice)
    client.force_login(superuser)
    response = client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_json", "_selected_action": [str(c.pk) for c in Conversation.objects.all()]},
    )
    assert response.status_code == 200
    jsonschema.validate(json.loads(response.content), SCHEMA, format_checker=jsonschema.FormatChecker())


def test_the_schema_refuses_what_the_export_never_writes():
    for wrong in (
        {},
        {"conversations": [{"id": "x"}]},
        {"conversations": [], "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, SCHEMA, format_checker=jsonschema.FormatChecker())


def test_each_conversation_offers_its_markdown_to_its_owner_only(alice_client, alice, bob):
    mine, _ = with_versions(alice)
    response = alice_client.get(reverse("chat:export_markdown", args=[mine.id]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    assert response["Content-Disposition"] == f'attachment; filename="conversation-{mine.id}.md"'
    text = response.content.decode()
    assert text.startswith("# Rivers")
    assert "## Assistant (earlier version)" in text and "The Rhine." in text

    theirs = conversation_with_answer(bob, "Bob's secret", "Hidden.")
    unknown = "00000000-0000-4000-8000-000000000000"
    foreign = alice_client.get(reverse("chat:export_markdown", args=[theirs.id]))
    missing = alice_client.get(reverse("chat:export_markdown", args=[unknown]))
    assert foreign.status_code == missing.status_code == 404
    assert b"Hidden." not in foreign.content


def test_exports_need_a_login(client, alice):
    mine = conversation_with_answer(alice)
    for url in (reverse("chat:export"), reverse("chat:export_markdown", args=[mine.id])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert upload(client, sample("chatgpt-conversations.json")).status_code == 302
    assert Conversation.objects.count() == 1


# --- import: this site's export ------------------------------------------------------------


def test_an_export_imported_elsewhere_is_the_same_conversation(alice_client, alice, bob):
    original, _ = with_versions(alice)
    exported = json.loads(alice_client.get(reverse("chat:export")).content)
    ledger = UsageEntry.objects.count()

    bob_client = Client()
    bob_client.force_login(bob)
    response = upload(bob_client, exported)
    assert response.status_code == 200, response.content
    assert response.json()["imported"] == 1
    assert response.json()["skipped"] == []
    copy = Conversation.objects.get(owner=bob)
    assert copy.pk != original.pk
    assert copy.imported_at is not None and copy.import_source == "chat"
    assert copy.path()[-1].text == "The Danube."
    again = json.loads(bob_client.get(reverse("chat:export")).content)["conversations"][0]
    assert comparable(again) == {**comparable(exported["conversations"][0])}
    # Imported answers are history, not spending here.
    assert UsageEntry.objects.count() == ledger


def test_ones_own_export_imported_back_adds_nothing(alice_client, alice):
    with_versions(alice)
    exported = alice_client.get(reverse("chat:export")).content
    response = upload(alice_client, exported)
    assert response.json() == {
        "imported": 0,
        "skipped": [{"conversation": "Rivers", "reason": "Already one of your conversations here."}],
        "conversations": [],
    }
    assert Conversation.objects.count() == 1


def test_answers_left_unfinished_in_a_file_are_stored_as_interrupted(alice_client, bob):
    """An export made while an answer was being written: here nothing writes it."""
    conversation_with_answer(bob, status=Message.Status.STREAMING)
    exported = json.loads(transcripts.as_json(Conversation.objects.filter(owner=bob)))
    assert exported["conversations"][0]["messages"][1]["status"] == "streaming"
    assert upload(alice_client, exported).json()["imported"] == 1
    imported = Conversation.objects.get(owner__username="alice")
    assert not imported.messages.unfinished().exists()
    assert imported.messages.get(role="assistant").status == Message.Status.INTERRUPTED


# --- import: ChatGPT -------------------------------------------------------------------------


def test_a_chatgpt_export_with_branches_becomes_conversations_with_versions(alice_client, alice):
    ledger = UsageEntry.objects.count()
    response = upload(alice_client, sample("chatgpt-conversations.json"), "conversations.json")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["imported"] == 2
    assert answer["skipped"] == [
        {
            "conversation": "Tomatoes on a balcony",
            "reason": "Left out: 1 images, 1 tool calls, 1 tool results (browsing, code output, generated files).",
        }
    ]
    garden = Conversation.objects.get(owner=alice, title="Tomatoes on a balcony")
    assert garden.import_source == "chatgpt" and garden.model == "gpt-4o"
    assert garden.instructions == "I live in a flat in Lyon.\n\nAnswer briefly."
    assert garden.created_at.isoformat() == "2025-12-01T10:40:00+00:00"
    tree = garden.tree()
    question = tree.children[None]
    assert [m.text for m in question] == ["Can I grow tomatoes on this balcony?"]
    # The regenerated answer is a second version of the answer, oldest first.
    answers = tree.children[question[0].id]
    assert [m.text for m in answers] == [
        "Yes: a south-facing balcony suits cherry tomatoes.",
        "Yes. Pick a dwarf variety and a 20-litre pot.",
    ]
    assert tree.frames([answers[1]])[0]["versions"] == {"index": 1, "count": 2, "ids": [str(a.id) for a in answers]}
    # The edited question is a second version of the follow-up.
    follow_ups = tree.children[answers[1].id]
    assert [m.text for m in follow_ups] == ["How often should I water them?", "How often should I water them in July?"]
    # Thoughts, a web search and the answer after it are one answer with its reasoning.
    path = garden.path()
    assert [m.text for m in path] == [
        "Can I grow tomatoes on this balcony?",
        "Yes. Pick a dwarf variety and a 20-litre pot.",
        "How often should I water them?",
        "Water when the top 2 cm of soil are dry: daily in summer.",
    ]
    assert path[-1].reasoning == "Watering needs\n\nPots dry out fast; daily in summer."
    assert path[-1].model == "o3" and path[-1].status == "completed"
    assert tree.children[follow_ups[1].id][0].model == "o3"
    assert path[-1].created_at.isoformat() == "2025-12-01T10:41:15+00:00"

    haiku = Conversation.objects.get(owner=alice, title="A long haiku")
    assert haiku.archived_at is not None and haiku.pinned_at is None
    cut = haiku.path()[-1]
    assert (cut.status, cut.incomplete_reason, cut.model) == ("incomplete", "max_output_tokens", "gpt-4o-mini")
    assert UsageEntry.objects.count() == ledger
    assert not Message.objects.unfinished().exists()


def test_importing_the_same_file_twice_adds_nothing_the_second_time(alice_client, alice):
    assert upload(alice_client, sample("chatgpt-conversations.json")).json()["imported"] == 2
    before = Message.objects.count()
    second = upload(alice_client, sample("chatgpt-conversations.json")).json()
    assert second["imported"] == 0
    assert [entry["reason"] for entry in second["skipped"]] == ["Already imported."] * 2
    assert Conversation.objects.filter(owner=alice).count() == 2
    assert Message.objects.count() == before


def test_one_users_import_does_not_stop_anothers(alice_client, bob):
    assert upload(alice_client, sample("open-webui-chats.json")).json()["imported"] == 1
    bob_client = Client()
    bob_client.force_login(bob)
    assert upload(bob_client, sample("open-webui-chats.json")).json()["imported"] == 1
    assert Conversation.objects.filter(owner=bob).count() == 1


# --- import: Open WebUI ----------------------------------------------------------------------


def test_an_open_webui_export_keeps_models_reasoning_failures_and_side_by_side_answers(alice_client, alice):
    response = upload(alice_client, sample("open-webui-chats.json"), "chat-export-1764590031.json")
    assert response.status_code == 200, response.content
    assert response.json()["skipped"] == [
        {"conversation": "Capital of Australia", "reason": "Left out: 1 attached files and images."}
    ]
    chat = Conversation.objects.get(owner=alice)
    assert chat.import_source == "open-webui" and chat.model == "llama3.2:3b"
    assert chat.instructions == "You are a geography teacher."
    assert chat.pinned_at is not None and chat.archived_at is None
    tree = chat.tree()
    question = tree.children[None][0]
    llama, qwen = tree.children[question.id]
    assert (llama.text, llama.model, llama.input_tokens, llama.output_tokens, llama.total_tokens) == (
        "Canberra.",
        "llama3.2:3b",
        14,
        3,
        17,
    )
    assert (qwen.text, qwen.model) == ("The capital of Australia is Canberra.", "qwen3:4b")
    assert qwen.reasoning == "The user asks for a capital.\nCanberra, not Sydney."
    path = chat.path()
    assert [m.text for m in path][:3] == ["What is the capital of Australia?", "Canberra.", "And its population?"]
    assert (path[-1].status, path[-1].error_message) == ("failed", "Ollama: 500, message='Internal Server Error'")
    assert chat.updated_at.timestamp() == 1764590031


def test_an_early_open_webui_export_with_a_plain_message_list_is_read(alice_client, alice):
    legacy = [
        {
            "id": "c1",
            "title": "Old chat",
            "chat": {
                "title": "Old chat",
                "models": ["mistral"],
                "messages": [
                    {"role": "user", "content": "Hi", "timestamp": 1700000000},
                    {"role": "assistant", "content": "Hello!", "model": "mistral", "timestamp": 1700000005},
                ],
            },
        }
    ]
    assert upload(alice_client, legacy).json()["imported"] == 1
    assert [m.text for m in Conversation.objects.get(owner=alice).path()] == ["Hi", "Hello!"]


# --- refusals: nothing is stored -------------------------------------------------------------

MALFORMED = [
    (b"{not json", "invalid_file", "not valid JSON"),
    (b"\xff\xfe\x00junk", "unrecognised_file", "not text"),
    (b'{"hello": "world"}', "unrecognised_file", "ChatGPT's conversations.json"),
    (b"[1, 2, 3]", "unrecognised_file", "Open WebUI"),
    (b"[]", "empty_file", "no conversations"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_file", "nested too deeply"),
    (b'[{"title": "x", "mapping": []}]', "invalid_file", "`mapping` must be an object"),
    (b'{"conversations": [{"id": "x", "messages": [{"role": "system", "text": "hi"}]}]}', "invalid_file", "`role`"),
    (
        b'[{"title": "loop", "mapping": {"a": {"parent": "b", "message": null}, '
        b'"b": {"parent": "a", "message": null}}}]',
        "invalid_file",
        "loop",
    ),
    (b'[{"chat": {"history": {"messages": {"m": {"role": "user", "timestamp": "soon"}}}}}]', "invalid_file", "time"),
]


@pytest.mark.parametrize("content, code, words", MALFORMED)
def test_a_malformed_or_foreign_file_is_refused_with_a_sentence(alice_client, alice, content, code, words):
    response = upload(alice_client, content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert not Conversation.objects.exists()


def test_a_file_broken_after_good_conversations_stores_none_of_them(alice_client, alice):
    good = json.loads(sample("chatgpt-conversations.json"))
    broken = {
        "title": "Broken",
        "mapping": {
            "n": {
                "parent": None,
                "message": {
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [1]},
                    "create_time": "yesterday",
                },
            }
        },
    }
    response = upload(alice_client, [*good, broken])
    assert response.status_code == 400
    assert "Conversation 3" in response.json()["error"]["message"]
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_a_file_over_the_limit_is_refused(alice_client, alice, settings):
    settings.CHAT_MAX_IMPORT_BYTES = 2000
    content = sample("open-webui-chats.json")
    assert len(content) > 2000
    response = upload(alice_client, content)  # read until the limit, then refused
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "The file is larger than the 2000 bytes an import may be.",
    }
    huge = b"[" + b" " * (200 * 1024) + b"]"
    response = upload(alice_client, huge)  # refused from its length, before it is read
    assert response.status_code == 413
    assert not Conversation.objects.exists()
    settings.CHAT_MAX_IMPORT_BYTES = 32 * 1024 * 1024
    assert upload(alice_client, content).status_code == 200


def test_an_import_needs_a_file_a_post_and_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = upload(client, sample("open-webui-chats.json"))
    assert response.status_code == 403
    assert not Conversation.objects.exists()
    client.get(reverse("chat:home"))  # the page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    assert client.get(reverse("chat:import")).status_code == 405
    empty = client.post(reverse("chat:import"), {}, headers={"X-CSRFToken": token})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "no_file"
    response = client.post(
        reverse("chat:import"),
        {"file": SimpleUploadedFile("x.json", sample("open-webui-chats.json"))},
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200 and response.json()["imported"] == 1


def test_text_the_database_cannot_store_is_dropped_not_refused(alice_client, alice):
    chat = [{"id": "n", "title": "Nul\u0000s", "chat": {"messages": [{"role": "user", "content": "a\u0000b\ud800c"}]}}]
    assert upload(alice_client, json.dumps(chat).encode()).json()["imported"] == 1
    conversation = Conversation.objects.get(owner=alice)
    assert conversation.title == "Nuls"
    assert conversation.path()[0].text == "abc"


# --- the admin -------------------------------------------------------------------------------


def test_the_admin_filters_imported_conversations(alice_client, alice, client, superuser):
    conversation_with_answer(alice, "Chatted here", "Yes.", title="Chatted here")
    upload(alice_client, sample("open-webui-chats.json"))
    upload(alice_client, sample("chatgpt-conversations.json"))
    admin = Client()
    admin.force_login(superuser)
    url = reverse("admin:chat_conversation_changelist")

    def titles(query):
        response = admin.get(url, query)
        assert response.status_code == 200
        return {conversation.title for conversation in response.context["cl"].result_list}

    assert titles({"origin": "here"}) == {"Chatted here"}
    assert titles({"origin": "open-webui"}) == {"Capital of Australia"}
    assert titles({"origin": "chatgpt"}) == {"Tomatoes on a balcony", "A long haiku"}
    page = admin.get(
        reverse("admin:chat_conversation_change", args=[Conversation.objects.get(title="A long haiku").pk])
    )
    assert b"ChatGPT" in page.content
