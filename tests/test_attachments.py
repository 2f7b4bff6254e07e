"""Attachments in messages, end to end: a real multipart upload through Django's test client, then
chat.send / chat.edit / chat.regenerate over a real websocket on the same session, and the body
the loopback upstream received; the frames, versions and deletion that follow.

tests/test_uploads.py covers the upload endpoints themselves; tests/unit/test_attachment_input.py
the content items one by one.
"""

import base64
import io
import uuid

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from chat.models import Attachment, Conversation, Message, MessageAttachment
from tests.files import image_bytes, jpeg_with_gps, pdf_with_text
from tests.storage import fresh_store
from tests.upstream import answer, usage_object
from tests.websocket import assert_no_groups_left, connect, cookie_of, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

IMAGE_PREFIX = "data:image/jpeg;base64,"
PDF_PREFIX = "data:application/pdf;base64,"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """The test's own empty store, of the run's kind: a folder, or a prefix in the run's bucket."""
    return fresh_store(settings, tmp_path)


def stored_files(store):
    """The storage names of the files stored, through the storage API (either store)."""
    return store.names()


class Person:
    """A logged-in browser: its test client uploads over HTTP, its sockets ride on the same session."""

    def __init__(self, user):
        self.client = Client()
        self.client.force_login(user)

    async def upload(self, name, data):
        response = await database_sync_to_async(self.client.post)(
            "/uploads/", {"file": SimpleUploadedFile(name, data, content_type="application/octet-stream")}
        )
        assert response.status_code == 201, response.content
        return response.json()

    async def socket(self):
        communicator, connected, _ = await connect(cookie=cookie_of(self.client))
        assert connected
        return communicator

    async def get(self, url):
        return await database_sync_to_async(self.client.get)(url)

    async def post(self, url):
        return await database_sync_to_async(self.client.post)(url)


@pytest.fixture
def alice_browser(alice):
    return Person(alice)


@pytest.fixture
def bob_browser(bob):
    return Person(bob)


def created(frames):
    return [frame["message"] for frame in frames if frame["type"] == "message.created"]


async def exchange(communicator, frame, upstream, reply="Seen."):
    """Send a frame that starts an answer; returns (the message.created messages, message.done)."""
    upstream.queue(answer([reply]))
    await communicator.send_json_to(frame)
    frames = await receive_until(communicator, "message.done")
    return created(frames), frames[-1]


async def refused(communicator, frame):
    """The error frame answering `frame`."""
    await communicator.send_json_to(frame)
    reply = await receive(communicator)
    assert reply["type"] == "error", reply
    return reply


def last_content(request):
    """The content of the last input item an upstream request carried."""
    return request["body"]["input"][-1]["content"]


def decoded_image(item):
    assert item["type"] == "input_image" and item["image_url"].startswith(IMAGE_PREFIX)
    with Image.open(io.BytesIO(base64.b64decode(item["image_url"][len(IMAGE_PREFIX) :]))) as image:
        return image.format, image.size


@database_sync_to_async
def stored_bytes(attachment_id):
    return Attachment.objects.get(pk=attachment_id).read()


@database_sync_to_async
def counts():
    return Message.objects.count(), MessageAttachment.objects.count()


# --- to the upstream -------------------------------------------------------------------------


async def test_an_image_a_pdf_and_a_text_file_reach_the_upstream_as_content_items(
    alice_browser, upstream, worker, settings
):
    settings.CHAT_IMAGE_MAX_SIDE = 50
    photo = await alice_browser.upload("photo.jpg", jpeg_with_gps((200, 100)))
    report = await alice_browser.upload("report.pdf", pdf_with_text("Rivers flow to the sea."))
    notes = await alice_browser.upload("notes.md", b"# Notes\nsalt water")
    communicator = await alice_browser.socket()

    (question, reply), done = await exchange(
        communicator,
        {
            "type": "chat.send",
            "conversation": None,
            "text": "What do these say?",
            "attachments": [photo["id"], report["id"], notes["id"]],
        },
        upstream,
    )
    assert done["status"] == "completed", done
    # The frame: each attachment as uploaded, where to download it, an image's size.
    assert question["attachments"] == [
        {**photo, "url": f"/uploads/{photo['id']}/", "width": 50, "height": 25},
        {**report, "url": f"/uploads/{report['id']}/"},
        {**notes, "url": f"/uploads/{notes['id']}/"},
    ]
    assert reply["attachments"] == []

    # The exact items the upstream received: the text, then each attachment in the order sent.
    [request] = upstream.requests
    text, image, pdf_file, pdf_text, notes_text = last_content(request)
    assert text == {"type": "input_text", "text": "What do these say?"}
    assert decoded_image(image) == ("JPEG", (50, 25))
    assert pdf_file["type"] == "input_file" and pdf_file["filename"] == "report.pdf"
    assert pdf_file["file_data"].startswith(PDF_PREFIX)
    assert base64.b64decode(pdf_file["file_data"][len(PDF_PREFIX) :]) == await stored_bytes(report["id"])
    assert pdf_text["type"] == "input_text" and "Rivers flow to the sea." in pdf_text["text"]
    assert "report.pdf" in pdf_text["text"]
    assert notes_text == {"type": "input_text", "text": "Attached file notes.md:\n\n# Notes\nsalt water"}

    # A reload shows them, and their links download them for their owner.
    response = await alice_browser.get(reverse("chat:conversation", args=[question["conversation"]]))
    shown = response.context["page_data"]["messages"]
    assert shown[0]["attachments"] == question["attachments"]
    download = await alice_browser.get(question["attachments"][2]["url"])
    assert b"".join(download.streaming_content) == b"# Notes\nsalt water"
    await communicator.disconnect()
    assert_no_groups_left()


async def test_files_alone_make_a_message_named_after_its_first_file(alice_browser, upstream, worker):
    """A screenshot with no words is a message (as in other chat apps); no words and no files is
    not, and an edit still needs words."""
    photo = await alice_browser.upload("screenshot.jpg", image_bytes((40, 30), "JPEG"))
    communicator = await alice_browser.socket()
    empty = await refused(communicator, {"type": "chat.send", "conversation": None, "text": "  "})
    assert empty["code"] == "empty_text"
    (question, reply), done = await exchange(
        communicator, {"type": "chat.send", "conversation": None, "text": "", "attachments": [photo["id"]]}, upstream
    )
    assert done["status"] == "completed", done
    assert question["text"] == "" and [item["id"] for item in question["attachments"]] == [photo["id"]]
    conversation = await Conversation.objects.aget(pk=question["conversation"])
    assert conversation.title == "screenshot.jpg"
    # The upstream is sent the image alone: no empty text part.
    [request] = upstream.requests
    [image] = last_content(request)
    assert decoded_image(image) == ("JPEG", (40, 30))
    # Later answers still see it, and an edit of it needs words.
    await exchange(communicator, {"type": "chat.send", "conversation": str(conversation.id), "text": "And?"}, upstream)
    assert [item["role"] for item in upstream.requests[-1]["body"]["input"]] == ["user", "assistant", "user"]
    edit = await refused(communicator, {"type": "chat.edit", "message": question["id"], "text": ""})
    assert edit["code"] == "empty_text"
    await communicator.disconnect()


async def test_a_text_only_model_gets_a_pdfs_text_and_no_file(alice_browser, upstream, worker, settings):
    settings.CHAT_MODEL_CAPABILITIES = {"other-model": []}
    report = await alice_browser.upload("report.pdf", pdf_with_text("Salt is in the sea."))
    communicator = await alice_browser.socket()
    _, done = await exchange(
        communicator,
        {
            "type": "chat.send",
            "conversation": None,
            "text": "Summarise",
            "model": "other-model",
            "attachments": [report["id"]],
        },
        upstream,
    )
    assert done["status"] == "completed"
    [request] = upstream.requests
    assert request["body"]["model"] == "other-model"
    text, pdf_text = last_content(request)
    assert text == {"type": "input_text", "text": "Summarise"}
    assert pdf_text["type"] == "input_text" and "Salt is in the sea." in pdf_text["text"]
    await communicator.disconnect()


async def test_a_model_that_cannot_read_images_refuses_before_anything_is_stored_or_sent(
    alice_browser, upstream, worker, settings, media_root
):
    settings.CHAT_MODEL_CAPABILITIES = {"other-model": ["files"]}
    photo = await alice_browser.upload("cat.png", image_bytes())
    communicator = await alice_browser.socket()
    error = await refused(
        communicator,
        {
            "type": "chat.send",
            "conversation": None,
            "text": "Who is this?",
            "model": "other-model",
            "attachments": [photo["id"]],
            "client_id": "c-1",
        },
    )
    assert error == {
        "type": "error",
        "code": "unsupported_attachment",
        "message": "The model other-model cannot read images; remove cat.png or choose another model.",
        "client_id": "c-1",
    }
    assert await counts() == (0, 0) and not await Conversation.objects.aexists()
    assert upstream.requests == []

    # In a conversation whose earlier message carries an image, a later send to that model is
    # refused too: its input would carry the image.
    (question, _), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "Look", "attachments": [photo["id"]]},
        upstream,
    )
    stored = await counts()
    for frame in (
        {"type": "chat.send", "conversation": question["conversation"], "text": "And now?", "model": "other-model"},
        {"type": "chat.regenerate", "message": (await latest_answer(question["conversation"])), "model": "other-model"},
    ):
        error = await refused(communicator, frame)
        assert error["code"] == "unsupported_attachment" and "other-model" in error["message"]
    assert await counts() == stored and len(upstream.requests) == 1
    # The image is still the photo's own, sent once: a refusal changes nothing stored.
    assert len(stored_files(media_root)) == 1
    await communicator.disconnect()
    assert_no_groups_left()


@database_sync_to_async
def latest_answer(conversation_id):
    return str(Message.objects.filter(conversation_id=conversation_id, role="assistant").latest("created_at").id)


# --- whose uploads ---------------------------------------------------------------------------


async def test_only_the_senders_own_unsent_uploads_can_be_attached(alice_browser, bob_browser, upstream, worker):
    bobs = await bob_browser.upload("bob.txt", b"bob's notes")
    mine = await alice_browser.upload("mine.txt", b"my notes")
    communicator = await alice_browser.socket()
    (question, _), _ = await exchange(
        communicator, {"type": "chat.send", "conversation": None, "text": "one", "attachments": [mine["id"]]}, upstream
    )
    conversation_id = question["conversation"]
    stored = await counts()

    unknown = str(uuid.uuid4())
    for attachments in ([bobs["id"]], [mine["id"]], [unknown], ["not-a-uuid"]):
        for conversation in (None, conversation_id):
            error = await refused(
                communicator,
                {"type": "chat.send", "conversation": conversation, "text": "again", "attachments": attachments},
            )
            # Another user's, one already sent, an unknown one: the same answer.
            assert error["code"] == "not_found", (attachments, error)
            assert error["message"] == "No such upload to attach: upload the file again."

    # A fresh upload of alice's listed with bob's is refused as a whole: nothing links the fresh one.
    fresh = await alice_browser.upload("fresh.txt", b"fresh")
    error = await refused(
        communicator,
        {"type": "chat.send", "conversation": conversation_id, "text": "x", "attachments": [fresh["id"], bobs["id"]]},
    )
    assert error["code"] == "not_found"
    assert await counts() == stored and len(upstream.requests) == 1

    # Shapes: too many, not a list, not strings, twice the same.
    too_many = [str(uuid.uuid4()) for _ in range(11)]
    error = await refused(
        communicator, {"type": "chat.send", "conversation": None, "text": "x", "attachments": too_many}
    )
    assert error["code"] == "too_many_attachments" and "at most 10" in error["message"]
    for bad in ("abc", {"id": fresh["id"]}, [1], [fresh["id"], fresh["id"]]):
        error = await refused(
            communicator, {"type": "chat.send", "conversation": None, "text": "x", "attachments": bad}
        )
        assert error["code"] == "invalid_field", bad
    assert await counts() == stored

    # chat.edit takes the same ids, with the same answers.
    for attachments, code in (([bobs["id"]], "not_found"), (too_many, "too_many_attachments")):
        error = await refused(
            communicator, {"type": "chat.edit", "message": question["id"], "text": "e", "attachments": attachments}
        )
        assert error["code"] == code
    assert await counts() == stored
    # Bob's file is still his alone, unsent.
    assert await Attachment.objects.filter(pk=bobs["id"], links__isnull=True).aexists()
    await communicator.disconnect()
    assert_no_groups_left()


async def test_ten_attachments_are_accepted(alice_browser, upstream, worker):
    ids = [(await alice_browser.upload(f"{n}.txt", f"file {n}".encode()))["id"] for n in range(10)]
    communicator = await alice_browser.socket()
    (question, _), _ = await exchange(
        communicator, {"type": "chat.send", "conversation": None, "text": "ten", "attachments": ids}, upstream
    )
    assert [attachment["id"] for attachment in question["attachments"]] == ids
    items = last_content(upstream.requests[-1])
    assert [item["text"] for item in items[1:]] == [f"Attached file {n}.txt:\n\nfile {n}" for n in range(10)]
    await communicator.disconnect()


# --- versions --------------------------------------------------------------------------------


async def test_regenerate_resends_the_same_attachments(alice_browser, upstream, worker):
    photo = await alice_browser.upload("photo.jpg", jpeg_with_gps())
    communicator = await alice_browser.socket()
    (question, first), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "Look", "attachments": [photo["id"]]},
        upstream,
    )
    _, done = await exchange(communicator, {"type": "chat.regenerate", "message": first["id"]}, upstream)
    assert done["status"] == "completed"
    original, again = upstream.requests
    assert last_content(again) == last_content(original)
    assert decoded_image(last_content(again)[1]) == ("JPEG", (64, 48))
    await communicator.disconnect()


async def test_edit_keeps_replaces_or_removes_attachments_and_each_input_has_its_own(
    alice_browser, upstream, worker, media_root
):
    first_file = await alice_browser.upload("first.txt", b"first file")
    second_file = await alice_browser.upload("second.txt", b"second file")
    communicator = await alice_browser.socket()
    (question, _), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "v1", "attachments": [first_file["id"], second_file["id"]]},
        upstream,
    )

    def sent_files(request):
        content = last_content(request)
        return [] if isinstance(content, str) else [item["text"].split(":")[0] for item in content[1:]]

    # No `attachments`: the new version keeps the edited message's, the same rows.
    (kept, _), _ = await exchange(
        communicator, {"type": "chat.edit", "message": question["id"], "text": "v2"}, upstream
    )
    assert kept["attachments"] == question["attachments"]
    assert sent_files(upstream.requests[-1]) == ["Attached file first.txt", "Attached file second.txt"]

    # A list: exactly these, the edited message's own in a new order and a new upload.
    third_file = await alice_browser.upload("third.txt", b"third file")
    (replaced, _), _ = await exchange(
        communicator,
        {"type": "chat.edit", "message": kept["id"], "text": "v3", "attachments": [third_file["id"], first_file["id"]]},
        upstream,
    )
    assert [attachment["id"] for attachment in replaced["attachments"]] == [third_file["id"], first_file["id"]]
    assert sent_files(upstream.requests[-1]) == ["Attached file third.txt", "Attached file first.txt"]

    # An empty list removes them all: the input has the text alone, none of the other versions' files.
    (bare, _), _ = await exchange(
        communicator, {"type": "chat.edit", "message": replaced["id"], "text": "v4", "attachments": []}, upstream
    )
    assert bare["attachments"] == []
    assert last_content(upstream.requests[-1]) == "v4"

    # Another version's attachment is not the edited message's: third.txt belongs to v3, not v1.
    fourth = await alice_browser.upload("fourth.txt", b"fourth")
    error = await refused(
        communicator,
        {"type": "chat.edit", "message": question["id"], "text": "v5", "attachments": [third_file["id"], fourth["id"]]},
    )
    assert error["code"] == "not_found"

    # Each version shows its own after a switch, and nothing was copied: three uploads, three files.
    await communicator.send_json_to({"type": "chat.select", "message": question["id"]})
    path = await receive(communicator)
    assert path["type"] == "conversation.path"
    assert path["messages"][0]["attachments"] == question["attachments"]
    assert len(stored_files(media_root)) == 4  # the three sent and the unsent fourth
    other = await alice_browser.socket()
    await other.send_json_to({"type": "chat.subscribe", "conversation": question["conversation"]})
    subscribed = await receive(other)
    assert subscribed["type"] == "conversation.subscribed"
    assert subscribed["messages"][0]["attachments"] == question["attachments"]
    await other.disconnect()
    await communicator.disconnect()
    assert_no_groups_left()


async def test_a_stored_file_that_cannot_be_read_fails_the_answer_saying_which(
    alice_browser, upstream, worker, media_root
):
    notes = await alice_browser.upload("notes.txt", b"gone soon")
    for name in stored_files(media_root):
        media_root.storage.delete(name)
    communicator = await alice_browser.socket()
    _, done = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "read", "attachments": [notes["id"]]},
        upstream,
    )
    assert done["status"] == "failed"
    assert done["error"]["code"] == "attachment_unreadable" and "notes.txt" in done["error"]["message"]
    assert upstream.requests == []
    await communicator.disconnect()


def counting(open_file, opened):
    """`open_file` (a storage's open), noting in `opened` the name of each file opened."""

    def open_counted(name, *args, **kwargs):
        opened.append(name)
        return open_file(name, *args, **kwargs)

    return open_counted


async def test_the_files_of_turns_a_long_chat_leaves_out_are_never_opened(
    alice_browser, upstream, worker, media_root, settings, monkeypatch
):
    """Only the turns that fit the model's context are sent, and only their files are read: an
    image, a PDF and a text file in the turns left out stay unopened (counted at the store)."""
    settings.CHAT_MODEL_CONTEXT = {"test-model": 2048}
    settings.CHAT_ANSWER_ROOM_TOKENS = 4096  # a quarter of the context: 1,536 tokens of input
    files = [
        ("photo.jpg", jpeg_with_gps()),
        ("report.pdf", pdf_with_text("Old report.")),
        *((f"notes-{turn}.txt", f"notes of turn {turn}".encode()) for turn in range(3, 7)),
    ]
    communicator = await alice_browser.socket()
    conversation, names = None, []
    for turn, (name, data) in enumerate(files, start=1):
        upload = await alice_browser.upload(name, data)
        names.append((await Attachment.objects.aget(pk=upload["id"])).file.name)
        if turn == len(files):
            # Counted from the last send on: the uploads and the earlier answers read their own.
            monkeypatch.setattr(media_root.storage, "open", counting(media_root.storage.open, opened := []))
        # Reported without an input count: the rate stays the default, and the fitting as computed.
        upstream.queue(answer(["Seen."], usage=usage_object(0, 1)))
        head = f"Question {turn}: "
        text = head + "lorem ipsum dolor sit amet " * ((1200 - len(head)) // 27)
        await communicator.send_json_to(
            {"type": "chat.send", "conversation": conversation, "text": text, "attachments": [upload["id"]]}
        )
        done = (await receive_until(communicator, "message.done", timeout=30))[-1]
        assert done["status"] == "completed", done
        conversation = done["conversation"]

    sent = upstream.requests[-1]["body"]["input"]
    questions = [item["content"][0]["text"] for item in sent if item["role"] == "user"]
    assert [question.split(":")[0] for question in questions] == ["Question 4", "Question 5", "Question 6"]
    assert sorted(opened) == sorted(names[3:]), "the files of the turns sent, each once, and no other"
    await communicator.disconnect()


# --- deletion --------------------------------------------------------------------------------


async def test_deleting_a_conversation_deletes_the_files_of_all_its_versions(
    alice_browser, upstream, worker, media_root
):
    shared = await alice_browser.upload("shared.txt", b"both versions")
    own = await alice_browser.upload("own.png", image_bytes())
    elsewhere = await alice_browser.upload("elsewhere.txt", b"another chat")
    unsent = await alice_browser.upload("unsent.txt", b"not sent")
    communicator = await alice_browser.socket()
    (question, _), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "one", "attachments": [shared["id"]]},
        upstream,
    )
    await exchange(
        communicator,
        {"type": "chat.edit", "message": question["id"], "text": "two", "attachments": [shared["id"], own["id"]]},
        upstream,
    )
    (kept_question, _), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "other", "attachments": [elsewhere["id"]]},
        upstream,
    )
    assert len(stored_files(media_root)) == 4

    response = await alice_browser.post(reverse("chat:delete", args=[question["conversation"]]))
    assert response.status_code == 200
    left = {str(pk) async for pk in Attachment.objects.values_list("pk", flat=True)}
    assert left == {elsewhere["id"], unsent["id"]}
    assert len(stored_files(media_root)) == 2
    assert (await alice_browser.get(f"/uploads/{shared['id']}/")).status_code == 404
    await communicator.disconnect()


@database_sync_to_async
def delete_message(message_id):
    Message.objects.get(pk=message_id).delete()


async def test_a_file_two_versions_share_goes_only_when_both_do(alice_browser, upstream, worker, media_root):
    shared = await alice_browser.upload("shared.txt", b"both versions")
    communicator = await alice_browser.socket()
    (first, _), _ = await exchange(
        communicator,
        {"type": "chat.send", "conversation": None, "text": "one", "attachments": [shared["id"]]},
        upstream,
    )
    (second, _), _ = await exchange(
        communicator, {"type": "chat.edit", "message": first["id"], "text": "two"}, upstream
    )
    assert second["attachments"] == first["attachments"]

    await delete_message(first["id"])
    assert await Attachment.objects.filter(pk=shared["id"]).aexists()
    assert len(stored_files(media_root)) == 1
    # Still sent (with the second version): not an unsent upload anyone could attach or delete.
    response = await database_sync_to_async(alice_browser.client.delete)(f"/uploads/{shared['id']}/")
    assert response.status_code == 409

    await delete_message(second["id"])
    assert not await Attachment.objects.aexists()
    assert stored_files(media_root) == []
    await communicator.disconnect()


async def test_a_retried_send_with_attachments_is_answered_not_refused(alice_browser, upstream, worker):
    """The retry finds its first send by client id before the uploads are looked at: they are sent
    by then, and the retry must not be told they are unknown."""
    notes = await alice_browser.upload("notes.txt", b"once")
    communicator = await alice_browser.socket()
    frame = {
        "type": "chat.send",
        "conversation": None,
        "text": "once",
        "attachments": [notes["id"]],
        "client_id": "retry-1",
    }
    (question, _), _ = await exchange(communicator, frame, upstream)
    stored = await counts()
    await communicator.send_json_to(frame)
    frames = await receive_until(communicator, "message.created")
    assert frames[-1]["message"]["id"] == question["id"]
    assert frames[-1]["message"]["attachments"] == question["attachments"]
    assert await counts() == stored and len(upstream.requests) == 1
    await communicator.disconnect()
