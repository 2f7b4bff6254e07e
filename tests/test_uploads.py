"""Attachments over HTTP: POST /uploads/, GET and DELETE /uploads/<id>/, the stored bytes, the
limits, deletion with conversations and the sweep, through Django's test client with real
multipart bodies and the real storage (a MEDIA_ROOT of the test's own)."""

import base64
import datetime
import io
import uuid

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import StopUpload
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from chat import content
from chat.models import Attachment, Message, MessageAttachment
from chat.uploads import SizeLimitHandler
from tests.factories import conversation_with_answer
from tests.files import GPS_IFD, image_bytes, jpeg_with_gps, pdf_with_text

pytestmark = pytest.mark.django_db

UPLOAD_URL = "/uploads/"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def stored_files(media_root):
    return sorted(path for path in media_root.rglob("*") if path.is_file()) if media_root.exists() else []


def upload(client, name, data, content_type="application/octet-stream", **extra):
    return client.post(UPLOAD_URL, {"file": SimpleUploadedFile(name, data, content_type=content_type)}, **extra)


def attach(attachment_id, message):
    """Link an upload to a message as a send does (tests/test_attachments.py sends for real)."""
    MessageAttachment.objects.create(
        message=message, attachment_id=attachment_id, position=message.attachment_links.count()
    )


def stored_bytes(answer):
    return Attachment.objects.get(pk=answer["id"]).read()


def test_it_stores_a_jpeg_without_its_exif_and_gps_position(alice_client, alice, media_root):
    original = jpeg_with_gps()
    response = upload(alice_client, "holiday.jpg", original, "image/jpeg")
    assert response.status_code == 201, response.content
    answer = response.json()
    assert set(answer) == {"id", "name", "type", "size", "kind"}
    assert (answer["name"], answer["type"], answer["kind"]) == ("holiday.jpg", "image/jpeg", "image")
    kept = stored_bytes(answer)
    assert answer["size"] == len(kept)
    assert b"SpyCam" not in kept and b"Exif" not in kept
    with Image.open(io.BytesIO(kept)) as image:
        assert image.format == "JPEG" and image.size == (64, 48)
        assert not image.getexif().get_ifd(GPS_IFD) and not dict(image.getexif())
    row = Attachment.objects.get(pk=answer["id"])
    assert (row.owner, row.messages.first(), row.width, row.height) == (alice, None, 64, 48)
    assert len(stored_files(media_root)) == 1
    assert "holiday" not in str(stored_files(media_root)[0]), "the storage name is the id, not the user's name"


def test_bytes_hidden_after_the_image_data_are_not_stored(alice_client):
    hidden = b"<script>alert(document.cookie)</script>"
    response = upload(alice_client, "pixel.png", image_bytes() + hidden, "image/png")
    assert response.status_code == 201
    kept = stored_bytes(response.json())
    assert hidden not in kept and b"script" not in kept
    with Image.open(io.BytesIO(kept)) as image:
        assert image.format == "PNG" and image.size == (40, 30)


def test_a_large_image_is_scaled_down_to_the_longest_side(alice_client, settings):
    settings.CHAT_IMAGE_MAX_SIDE = 100
    for image_format, name in (("PNG", "wide.png"), ("JPEG", "wide.jpg"), ("WEBP", "wide.webp")):
        response = upload(alice_client, name, image_bytes((400, 200), image_format))
        assert response.status_code == 201, (image_format, response.content)
        with Image.open(io.BytesIO(stored_bytes(response.json()))) as image:
            assert (image.format, image.size) == (image_format, (100, 50))
    tall = upload(alice_client, "tall.png", image_bytes((30, 90)))
    with Image.open(io.BytesIO(stored_bytes(tall.json()))) as image:
        assert image.size == (30, 90), "an image within the limit keeps its size"


def test_a_gif_keeps_its_first_frame_as_png(alice_client):
    response = upload(alice_client, "anim.gif", image_bytes((20, 10), "GIF"), "image/gif")
    assert response.status_code == 201
    answer = response.json()
    assert (answer["type"], answer["name"], answer["kind"]) == ("image/png", "anim.png", "image")


def test_it_stores_pdfs_and_text_files_as_files_unchanged(alice_client):
    pdf = pdf_with_text()
    response = upload(alice_client, "report.pdf", pdf, "application/pdf")
    assert response.status_code == 201
    assert (response.json()["type"], response.json()["kind"]) == ("application/pdf", "file")
    assert stored_bytes(response.json()) == pdf
    for name in ("notes.md", "data.csv", "main.py", "config.json"):
        text = "# Über rivers\nflow,sea\n".encode()
        response = upload(alice_client, name, text, "application/x-whatever")
        assert response.status_code == 201, name
        assert (response.json()["type"], response.json()["kind"], response.json()["name"]) == (
            "text/plain",
            "file",
            name,
        )
        assert stored_bytes(response.json()) == text


def test_the_type_comes_from_the_content_not_the_name_or_the_claim(alice_client, media_root):
    html = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
    for name, claim in (("cat.png", "image/png"), ("cat.jpg", "image/jpeg"), ("cat", "text/plain")):
        response = upload(alice_client, name, html, claim)
        assert response.status_code == 415, name
        assert response.json()["error"]["code"] == "unsupported_type"
    # Text by name but not by content, and a type not on the list.
    assert upload(alice_client, "notes.txt", b"\xff\xfe\x00binary\x00").status_code == 415
    assert upload(alice_client, "a.zip", b"PK\x03\x04" + b"\x00" * 100).status_code == 415
    assert upload(alice_client, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).status_code == 400
    assert not Attachment.objects.exists() and stored_files(media_root) == []
    # An image under a text name is an image all the same.
    response = upload(alice_client, "really-an-image.txt", image_bytes(), "text/plain")
    assert (response.json()["type"], response.json()["kind"]) == ("image/png", "image")


def test_an_html_or_svg_file_is_never_served_inline(alice_client):
    for name, body in (
        ("page.html", b"<html><script>alert(document.domain)</script></html>"),
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
        ("feed.xml", b"<?xml version='1.0'?><x:script xmlns:x='http://www.w3.org/1999/xhtml'/>"),
    ):
        answer = upload(alice_client, name, body, "text/html").json()
        assert (answer["type"], answer["kind"]) == ("text/plain", "file"), name
        response = alice_client.get(f"/uploads/{answer['id']}/")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        assert response["Content-Disposition"].startswith("attachment;") and name in response["Content-Disposition"]
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert b"".join(response.streaming_content) == body


def test_images_are_served_inline_to_their_owner(alice_client):
    answer = upload(alice_client, "pixel.png", image_bytes(), "image/png").json()
    response = alice_client.get(f"/uploads/{answer['id']}/")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("inline;")
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "private" in response["Cache-Control"]
    assert b"".join(response.streaming_content) == stored_bytes(answer)


@pytest.mark.parametrize("size_over", [1, 200 * 1024], ids=["found-while-streaming", "declared-in-the-header"])
def test_a_file_over_the_limit_is_refused_and_nothing_stored(alice_client, settings, media_root, size_over):
    settings.CHAT_MAX_UPLOAD_BYTES = 10_000
    response = upload(alice_client, "big.txt", b"a" * (10_000 + size_over), "text/plain")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "10000 bytes" in response.json()["error"]["message"]
    assert not Attachment.objects.exists() and stored_files(media_root) == []
    assert upload(alice_client, "fits.txt", b"a" * 10_000).status_code == 201, "the limit itself is allowed"


def test_the_size_limit_handler_stops_reading_past_the_limit(rf, settings, alice):
    """The parser gives up on the file at the limit: no handler after it ever sees more bytes."""
    settings.CHAT_MAX_UPLOAD_BYTES = 1000
    request = rf.post(UPLOAD_URL)
    handler = SizeLimitHandler(request)
    handler.new_file("file", "a.txt", "text/plain", None)
    assert handler.receive_data_chunk(b"a" * 1000, 0) == b"a" * 1000
    with pytest.raises(StopUpload):
        handler.receive_data_chunk(b"a", 1000)
    assert request.upload_too_large


def test_the_storage_quota_is_per_user_and_refusals_store_nothing(alice_client, bob, settings, media_root):
    first = upload(alice_client, "one.txt", b"a" * 600).json()
    settings.CHAT_UPLOAD_QUOTA_BYTES = 1000
    response = upload(alice_client, "two.txt", b"b" * 600)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert "1000 bytes" in response.json()["error"]["message"]
    assert Attachment.objects.count() == 1 and len(stored_files(media_root)) == 1
    other = Client()
    other.force_login(bob)
    assert upload(other, "bobs.txt", b"c" * 600).status_code == 201, "another user's uploads do not count"
    assert alice_client.delete(f"/uploads/{first['id']}/").status_code == 200
    assert upload(alice_client, "two.txt", b"b" * 600).status_code == 201


def test_another_users_upload_answers_like_an_unknown_one(alice_client, bob):
    answer = upload(alice_client, "mine.txt", b"private notes").json()
    thief = Client()
    thief.force_login(bob)
    for target in (answer["id"], str(uuid.uuid4())):
        assert thief.get(f"/uploads/{target}/").status_code == 404
        assert thief.head(f"/uploads/{target}/").status_code == 404
        assert thief.delete(f"/uploads/{target}/").status_code == 404
        assert thief.post(f"/uploads/{target}/delete/").status_code == 404
    assert Attachment.objects.filter(pk=answer["id"]).exists()
    assert alice_client.get(f"/uploads/{answer['id']}/").status_code == 200


def test_uploads_and_deletions_need_the_csrf_token(alice, media_root):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert upload(client, "a.txt", b"hello").status_code == 403
    assert not Attachment.objects.exists() and stored_files(media_root) == []
    client.get(reverse("chat:home"))  # the page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    answer = upload(client, "a.txt", b"hello", headers={"X-CSRFToken": token}).json()
    form = client.post(UPLOAD_URL, {"file": SimpleUploadedFile("b.txt", b"form token"), "csrfmiddlewaretoken": token})
    assert form.status_code == 201, "the token as a form field works too"
    assert client.delete(f"/uploads/{answer['id']}/").status_code == 403
    assert client.post(f"/uploads/{answer['id']}/delete/").status_code == 403
    assert Attachment.objects.filter(pk=answer["id"]).exists()
    assert client.delete(f"/uploads/{answer['id']}/", headers={"X-CSRFToken": token}).status_code == 200


def test_logged_out_visitors_can_neither_upload_nor_fetch(client, alice, media_root):
    response = upload(client, "a.txt", b"hello")
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not Attachment.objects.exists() and stored_files(media_root) == []
    owner = Client()
    owner.force_login(alice)
    answer = upload(owner, "a.txt", b"hello").json()
    assert client.get(f"/uploads/{answer['id']}/").status_code == 302
    assert client.delete(f"/uploads/{answer['id']}/").status_code == 302
    assert Attachment.objects.filter(pk=answer["id"]).exists()


def test_malformed_uploads_are_refused(alice_client):
    assert alice_client.post(UPLOAD_URL, {}).status_code == 400
    response = alice_client.post(
        UPLOAD_URL, {"file": [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    assert upload(alice_client, "empty.txt", b"").status_code == 400
    assert alice_client.get(UPLOAD_URL).status_code == 405
    assert not Attachment.objects.exists()


def test_an_unsent_upload_can_be_deleted_and_a_sent_one_cannot(
    alice_client, alice, media_root, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = upload(alice_client, "a.txt", b"one").json()
        second = upload(alice_client, "b.txt", b"two").json()
        assert alice_client.delete(f"/uploads/{first['id']}/").json() == {"deleted": first["id"]}
        assert alice_client.post(f"/uploads/{second['id']}/delete/").status_code == 200
    assert not Attachment.objects.exists() and stored_files(media_root) == []
    conversation = conversation_with_answer(alice)
    sent = upload(alice_client, "c.txt", b"three").json()
    attach(sent["id"], conversation.messages.filter(role="user").get())
    response = alice_client.delete(f"/uploads/{sent['id']}/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "sent"
    assert len(stored_files(media_root)) == 1


def test_deleting_a_conversation_deletes_its_files(alice_client, alice, media_root, django_capture_on_commit_callbacks):
    conversation = conversation_with_answer(alice)
    kept_conversation = conversation_with_answer(alice)
    question = conversation.messages.get(role=Message.Role.USER)
    for name, data in (("a.png", image_bytes()), ("b.pdf", pdf_with_text()), ("c.txt", b"notes")):
        answer = upload(alice_client, name, data).json()
        attach(answer["id"], question)
    other = upload(alice_client, "d.txt", b"elsewhere").json()
    attach(other["id"], kept_conversation.messages.get(role="user"))
    assert len(stored_files(media_root)) == 4
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = alice_client.post(reverse("chat:delete", args=[conversation.id]))
        assert response.status_code == 200
        assert len(stored_files(media_root)) == 4, "no file goes before the deletion commits"
    assert len(callbacks) >= 3
    assert list(Attachment.objects.values_list("id", flat=True)) == [uuid.UUID(other["id"])]
    assert stored_files(media_root) == [media_root / Attachment.objects.get().file.name]


def test_deleting_the_user_deletes_their_files(alice_client, alice, media_root, django_capture_on_commit_callbacks):
    upload(alice_client, "a.txt", b"one")
    with django_capture_on_commit_callbacks(execute=True):
        alice.delete()
    assert stored_files(media_root) == []


def test_the_sweep_removes_uploads_never_sent_after_a_day(
    alice_client, alice, media_root, settings, django_capture_on_commit_callbacks
):
    conversation = conversation_with_answer(alice)
    old_unsent, old_sent, fresh = (upload(alice_client, f"{n}.txt", b"x").json()["id"] for n in "abc")
    day_ago = timezone.now() - datetime.timedelta(hours=settings.CHAT_UPLOAD_UNSENT_HOURS, minutes=1)
    Attachment.objects.filter(pk__in=[old_unsent, old_sent]).update(created_at=day_ago)
    attach(old_sent, conversation.messages.get(role="user"))
    output = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("sweep_uploads", stdout=output)
    assert output.getvalue().strip() == "Deleted 1 unsent upload."
    assert set(Attachment.objects.values_list("id", flat=True)) == {uuid.UUID(old_sent), uuid.UUID(fresh)}
    assert len(stored_files(media_root)) == 2


def test_stored_uploads_become_the_items_sent_upstream(alice_client, settings):
    """The real path to the upstream's content items: upload, store, read back (tests/unit has the rest)."""
    settings.CHAT_IMAGE_MAX_SIDE = 50
    ids = [
        upload(alice_client, "photo.jpg", jpeg_with_gps((200, 100))).json()["id"],
        upload(alice_client, "report.pdf", pdf_with_text("Rivers flow to the sea.")).json()["id"],
        upload(alice_client, "notes.md", b"# Notes\nsalt water").json()["id"],
    ]
    stored = [Attachment.objects.get(pk=attachment_id) for attachment_id in ids]
    content.check_model_takes("vision-model", stored)
    items = content.input_content(stored, "vision-model")
    assert [item["type"] for item in items] == ["input_image", "input_file", "input_text", "input_text"]
    prefix = "data:image/jpeg;base64,"
    assert items[0]["image_url"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(items[0]["image_url"][len(prefix) :]))) as image:
        assert image.size == (50, 25)
    assert items[1]["filename"] == "report.pdf"
    assert base64.b64decode(items[1]["file_data"].split(",", 1)[1]) == stored[1].read()
    assert "Rivers flow to the sea." in items[2]["text"]
    assert items[3]["text"] == "Attached file notes.md:\n\n# Notes\nsalt water"
    with pytest.raises(content.ModelCannotRead, match=settings.LOCAL_MODEL_NAME):
        content.check_model_takes(settings.LOCAL_MODEL_NAME, stored)


def test_a_rolled_back_deletion_keeps_the_file(alice_client, media_root, django_capture_on_commit_callbacks):
    upload(alice_client, "a.txt", b"kept")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            Attachment.objects.get().delete()
            raise RuntimeError("the deletion fails after the row went")
    assert callbacks == []
    assert Attachment.objects.get().read() == b"kept"
    assert len(stored_files(media_root)) == 1


def test_a_store_that_cannot_delete_does_not_undo_the_deletion(
    alice_client, media_root, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    upload(alice_client, "a.txt", b"x")

    def broken_delete(self, name):
        raise OSError("store unreachable")

    monkeypatch.setattr(FileSystemStorage, "delete", broken_delete)
    with django_capture_on_commit_callbacks(execute=True):
        assert alice_client.delete(f"/uploads/{Attachment.objects.get().id}/").status_code == 200
    assert not Attachment.objects.exists()
    assert "Could not delete the stored file" in caplog.text


def test_a_body_declared_too_large_is_refused_before_it_is_parsed(alice_client, settings, media_root):
    """The declared length alone refuses: the small body behind it is never parsed into a file."""
    settings.CHAT_MAX_UPLOAD_BYTES = 10_000
    response = upload(alice_client, "small.txt", b"a", CONTENT_LENGTH=str(10**9))
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert not Attachment.objects.exists() and stored_files(media_root) == []
