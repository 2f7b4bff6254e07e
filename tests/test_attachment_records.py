"""Attachments where staff and exports see them: the admin's transcript (shown, downloaded, each
download audited, served as safely as to the owner) and the JSON and Markdown exports.

The messages are stored by real multipart uploads and the model verb chat.send calls
(Conversation.objects.send); tests/test_attachments.py sends over the websocket.
"""

import datetime
import json
from pathlib import Path

import jsonschema
import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import AuditEvent, Conversation, Message
from tests.files import image_bytes, pdf_with_text

pytestmark = pytest.mark.django_db

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "export.schema.json").read_text())
HOSTILE_PAGE = b"<html><script>alert(document.cookie)</script></html>"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def logged_in(user):
    client = Client()
    client.force_login(user)
    return client


def upload(client, name, data):
    response = client.post("/uploads/", {"file": SimpleUploadedFile(name, data)})
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def sent(alice):
    """A conversation of alice's whose first message carries an image, a PDF and an HTML file
    (stored as text), and whose edited version keeps the image only."""
    client = logged_in(alice)
    photo = upload(client, "photo.png", image_bytes((40, 30)))
    report = upload(client, "report.pdf", pdf_with_text())
    page = upload(client, "page.html", HOSTILE_PAGE)
    stored = Conversation.objects.send(
        alice, None, "Look at these", model="vision-model", attachments=[photo["id"], report["id"], page["id"]]
    )
    Message.objects.filter(pk=stored.answer).update(status=Message.Status.COMPLETED, text="Seen.")
    question = Message.objects.get(conversation_id=stored.conversation_id, role=Message.Role.USER)
    Conversation.objects.edit(alice, question.id, "Only the photo", attachments=[photo["id"]])
    Message.objects.filter(conversation_id=stored.conversation_id).update(status=Message.Status.COMPLETED)
    return Conversation.objects.get(pk=stored.conversation_id), {"photo": photo, "report": report, "page": page}


def attachment_url(conversation, attachment):
    return reverse("admin:chat_conversation_attachment", args=[conversation.pk, attachment["id"]])


# --- the admin -------------------------------------------------------------------------------


def test_the_transcript_shows_each_messages_attachments(client, reviewer, sent):
    conversation, files = sent
    client.force_login(reviewer)
    response = client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    photo_url = attachment_url(conversation, files["photo"])
    # The image as a thumbnail, in both versions (they share it); every file named, sized, linked.
    assert page.count(f'<img src="{photo_url}" alt="photo.png" width="40" height="30"') == 2
    for name, item in files.items():
        assert f'href="{attachment_url(conversation, item)}" download="{item["name"]}"' in page, name
    assert "application/pdf · " in page and "text/plain · 52\xa0bytes" in page
    # The page itself is audited once; nothing was downloaded yet.
    assert list(AuditEvent.objects.values_list("action", "detail")) == [("viewed", "transcript page")]
    # The hostile page's content is never on the transcript page.
    assert "alert(document.cookie)" not in page


def test_a_staff_download_is_audited_and_served_like_the_owners(client, reviewer, sent):
    conversation, files = sent
    client.force_login(reviewer)
    page = client.get(attachment_url(conversation, files["page"]))
    assert page.status_code == 200
    assert b"".join(page.streaming_content) == HOSTILE_PAGE
    assert page["Content-Type"] == "text/plain"
    assert page["Content-Disposition"] == 'attachment; filename="page.html"'
    assert page["X-Content-Type-Options"] == "nosniff"
    assert page["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert page["Cache-Control"].startswith("private, no-store")  # the admin adds its own never-cache

    photo = client.get(attachment_url(conversation, files["photo"]))
    assert photo["Content-Type"] == "image/png" and photo["Content-Disposition"].startswith("inline")
    assert photo["X-Content-Type-Options"] == "nosniff"
    events = AuditEvent.objects.order_by("at")
    assert [(event.staff, event.action, event.conversation, event.detail) for event in events] == [
        (reviewer, "downloaded", conversation, f"attachment {files['page']['id']}"),
        (reviewer, "downloaded", conversation, f"attachment {files['photo']['id']}"),
    ]
    # The owner's own download of the same file is the same answer, and no audit row.
    owner = logged_in(conversation.owner).get(f"/uploads/{files['page']['id']}/")
    assert owner["Content-Disposition"] == page["Content-Disposition"]
    assert AuditEvent.objects.count() == 2


def test_an_attachment_is_served_only_through_its_own_conversation(client, reviewer, sent, bob):
    conversation, files = sent
    other = Conversation.objects.get(pk=Conversation.objects.send(bob, None, "Mine").conversation_id)
    unsent = upload(logged_in(bob), "unsent.txt", b"not sent")
    client.force_login(reviewer)
    for url in (
        attachment_url(other, files["photo"]),  # a conversation it was not sent in
        attachment_url(conversation, unsent),  # never sent at all
        reverse(
            "admin:chat_conversation_attachment", args=["00000000-0000-4000-8000-000000000000", files["photo"]["id"]]
        ),
    ):
        assert client.get(url).status_code == 404, url
    assert not AuditEvent.objects.exists()


def test_staff_who_may_not_read_transcripts_get_no_attachment(client, charlie, reviewer, superuser, sent, settings):
    conversation, files = sent
    url = attachment_url(conversation, files["page"])
    assert client.get(url).status_code == 302  # to the admin's login
    client.force_login(charlie)  # staff without the view permission
    assert client.get(url).status_code == 403
    settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS = False
    for user in (reviewer, superuser):
        client.force_login(user)
        response = client.get(url)
        assert response.status_code == 403
        assert b"alert(document.cookie)" not in response.content
    assert not AuditEvent.objects.exists()


def test_attachment_names_cannot_be_probed_through_the_query_string(client, superuser, sent, monkeypatch):
    """A file's name is its owner's words: refused as transcript text, even in a filter declared
    one day (Django alone would then allow it)."""
    conversation_admin = admin.site.get_model_admin(Conversation)
    monkeypatch.setattr(
        conversation_admin, "list_filter", [*conversation_admin.list_filter, "messages__attachments__name"]
    )
    client.force_login(superuser)
    for model, lookup in (
        ("conversation", "messages__attachments__name__startswith"),
        ("message", "attachments__name"),
        ("message", "conversation__messages__attachments__name__contains"),
    ):
        response = client.get(reverse(f"admin:chat_{model}_changelist"), {lookup: "p"})
        assert response.status_code == 400, lookup


# --- exports ---------------------------------------------------------------------------------


def test_the_json_export_lists_each_messages_attachments_in_the_schema(alice, sent):
    conversation, files = sent
    response = logged_in(alice).get(reverse("chat:export"))
    exported = json.loads(b"".join(response.streaming_content) if response.streaming else response.content)
    jsonschema.validate(exported, SCHEMA, format_checker=jsonschema.FormatChecker())
    messages = exported["conversations"][0]["messages"]
    first, edited = [message for message in messages if message["role"] == "user"]
    assert first["attachments"] == [files["photo"], files["report"], files["page"]]
    assert edited["attachments"] == [files["photo"]]
    assert all(message["attachments"] == [] for message in messages if message["role"] == "assistant")


def test_the_markdown_export_and_the_admins_list_them(client, alice, reviewer, sent):
    conversation, files = sent
    markdown = logged_in(alice).get(reverse("chat:export_markdown", args=[conversation.pk])).content.decode()
    size = files["photo"]["size"]
    assert f"**Attachments:**\n\n- photo.png (image/png, {size}\xa0bytes)\n- report.pdf (application/pdf, " in markdown
    assert "- page.html (text/plain, 52\xa0bytes)" in markdown
    assert markdown.count("- photo.png (") == 2
    client.force_login(reviewer)
    response = client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_json", "_selected_action": [conversation.pk]},
    )
    exported = json.loads(response.content)
    jsonschema.validate(exported, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert exported["conversations"][0]["messages"][0]["attachments"][0]["name"] == "photo.png"


def test_an_export_with_attachments_imports_its_words_and_says_what_it_left_out(alice, bob, sent):
    exported = logged_in(alice).get(reverse("chat:export")).content
    response = logged_in(bob).post(reverse("chat:import"), {"file": SimpleUploadedFile("export.json", exported)})
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["imported"] == 1
    assert answer["skipped"] == [
        {
            "conversation": "Look at these",
            "reason": "Left out: 4 attached files (an export names them, it does not hold them).",
        }
    ]
    copy = Conversation.objects.get(owner=bob)
    assert {message.text for message in copy.messages.all()} >= {"Look at these", "Only the photo"}
    assert not copy.messages.filter(attachment_count__gt=0).exists()


# --- the migration ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_each_sent_attachment_with_its_message_in_order():
    before, after = [("chat", "0011_attachments")], [("chat", "0012_message_attachments")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        owner = old.get_model("auth", "User").objects.create(username="legacy")
        conversation = old.get_model("chat", "Conversation").objects.create(owner=owner, model="test-model")
        message = old.get_model("chat", "Message").objects.create(conversation=conversation, role="user", text="x")
        Attachment_ = old.get_model("chat", "Attachment")
        start = timezone.now() - datetime.timedelta(hours=1)
        sent = [
            Attachment_.objects.create(
                owner=owner,
                message=message,
                file=f"uploads/{number}",
                name=f"{number}.txt",
                content_type="text/plain",
                size=1,
                created_at=start + datetime.timedelta(seconds=10 - number),
            ).pk
            for number in range(3)
        ]
        unsent = Attachment_.objects.create(
            owner=owner, file="uploads/u", name="u.txt", content_type="text/plain", size=1
        )

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        links = new.get_model("chat", "MessageAttachment").objects.filter(message_id=message.pk).order_by("position")
        # In upload order: the last made came first.
        assert list(links.values_list("attachment_id", "position")) == [(pk, n) for n, pk in enumerate(reversed(sent))]
        assert new.get_model("chat", "Message").objects.get(pk=message.pk).attachment_count == 3
        assert not new.get_model("chat", "MessageAttachment").objects.filter(attachment_id=unsent.pk).exists()
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("chat"))
