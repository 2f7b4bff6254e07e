"""Deleting an upload while a send takes it: one happens after the other, never across it.

Real HTTP through Django's test client on one thread, the send's transaction held open on
another (a real database lock, on SQLite and PostgreSQL alike).
"""

import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections, transaction
from django.test import Client

from chat.models import Attachment, Conversation, MessageAttachment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# Long enough for a request that is not held by a lock to have answered many times over.
UNBLOCKED_ANSWERS_WITHIN = 3


def upload(client):
    response = client.post("/uploads/", {"file": SimpleUploadedFile("notes.txt", b"salt water")})
    assert response.status_code == 201, response.content
    return response.json()["id"]


class HeldSend(threading.Thread):
    """A chat.send's verb taking `attachment_id`, whose transaction stays open until `release`."""

    def __init__(self, user, attachment_id):
        super().__init__()
        self.user, self.attachment_id = user, attachment_id
        self.linked, self.release = threading.Event(), threading.Event()
        self.stored = None

    def run(self):
        try:
            with transaction.atomic():
                self.stored = Conversation.objects.send(self.user, None, "Here", attachments=[self.attachment_id])
                self.linked.set()
                assert self.release.wait(60)
        finally:
            self.linked.set()
            connections.close_all()


class Request(threading.Thread):
    def __init__(self, call, *args):
        super().__init__()
        self.call, self.args, self.response = call, args, None

    def run(self):
        try:
            self.response = self.call(*self.args)
        finally:
            connections.close_all()


@pytest.mark.parametrize("method", ["delete", "post"])
def test_an_upload_deleted_while_a_send_takes_it_stays_with_the_sent_message(alice, method):
    """DELETE /uploads/<id>/ and its POST …/delete/ twin: the discard waits for the send that
    holds the upload, then finds it sent (409), and the message keeps its file."""
    client = Client()
    client.force_login(alice)
    attachment_id = upload(client)
    send = HeldSend(alice, attachment_id)
    send.start()
    assert send.linked.wait(30) and send.stored is not None
    path = f"/uploads/{attachment_id}/" if method == "delete" else f"/uploads/{attachment_id}/delete/"
    discard = Request(getattr(client, method), path)
    discard.start()
    discard.join(UNBLOCKED_ANSWERS_WITHIN)
    assert discard.is_alive(), "the discard went ahead while the send held the upload"
    send.release.set()
    send.join(30)
    discard.join(30)
    assert discard.response.status_code == 409, discard.response.content
    # The message has its file, in the database and in the store.
    [link] = MessageAttachment.objects.filter(attachment_id=attachment_id)
    assert link.message.conversation_id == Conversation.objects.get(owner=alice).id
    assert Attachment.objects.get(pk=attachment_id).read() == b"salt water"


def test_a_send_that_waits_for_a_discard_finds_the_upload_gone_and_stores_nothing(alice):
    """The other order: the discard holds the upload first; the send then answers not_found like
    an unknown id, and nothing of it is stored."""
    client = Client()
    client.force_login(alice)
    attachment_id = upload(client)
    holding, release = threading.Event(), threading.Event()

    def discard_held():
        try:
            with transaction.atomic():
                Attachment.objects.discard(alice, attachment_id)
                holding.set()
                assert release.wait(60)
        finally:
            holding.set()
            connections.close_all()

    def send():
        try:
            Conversation.objects.send(alice, None, "Here", attachments=[attachment_id])
        except Attachment.DoesNotExist:
            return "not found"

    discard = threading.Thread(target=discard_held)
    discard.start()
    assert holding.wait(30)
    sending = Request(send)
    sending.start()
    sending.join(UNBLOCKED_ANSWERS_WITHIN)
    assert sending.is_alive(), "the send went ahead while the discard held the upload"
    release.set()
    discard.join(30)
    sending.join(30)
    assert sending.response == "not found"
    assert not Conversation.objects.filter(owner=alice).exists()
    assert not Attachment.objects.filter(pk=attachment_id).exists()
