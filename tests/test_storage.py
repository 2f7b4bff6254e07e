"""Where uploads are kept: a real S3-compatible store (moto's server on loopback), reached through
the storage API alone, and the sweep of uploads never sent, by command and by the server itself.

The S3 tests run in every run: in the PostgreSQL and Redis one against the store
scripts/with-services.sh started for it, otherwise against one of their own (tests/services.py
`s3_server`); never skipped. Two server processes sharing one bucket are in tests/test_scale_out.py.
"""

import datetime
import io
import threading
import time
import uuid

import botocore.exceptions
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from chat import upload_sweep
from chat.models import Attachment, AttachmentQuerySet
from tests.factories import conversation_with_answer
from tests.files import image_bytes
from tests.services import s3_server  # noqa: F401  (the fixture is used by name)
from tests.storage import fresh_store, s3_store
from tests.test_uploads import attach

pytestmark = pytest.mark.timeout(120)

PUBLIC_GRANTEES = (
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
)


@pytest.fixture
def bucket(settings, s3_server, tmp_path):  # noqa: F811
    settings.MEDIA_ROOT = tmp_path / "media"  # must stay empty: nothing is kept on this machine
    return s3_store(settings, s3_server)


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


def upload(client, name, data, content_type="application/octet-stream"):
    response = client.post("/uploads/", {"file": SimpleUploadedFile(name, data, content_type=content_type)})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def streamed(response):
    return b"".join(response.streaming_content)


def object_exists(bucket, name):
    try:
        bucket.client.head_object(Bucket=bucket.server.bucket, Key=bucket.key(name))
    except botocore.exceptions.ClientError as error:
        if error.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def age(attachment_ids, hours):
    Attachment.objects.filter(pk__in=attachment_ids).update(created_at=timezone.now() - datetime.timedelta(hours=hours))


# --- S3 ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_upload_is_a_private_object_in_the_bucket_and_nothing_on_disk(alice_client, bucket, settings):
    """The browser claims HTML; the object is opaque bytes to download, readable only with the
    store's credentials, and the machine's MEDIA_ROOT stays empty."""
    attachment_id = upload(alice_client, "notes.txt", b"plain words", content_type="text/html")
    attachment = Attachment.objects.get(pk=attachment_id)
    assert bucket.keys() == [bucket.key(attachment.file.name)]
    assert attachment.file.name == f"uploads/{uuid.UUID(attachment_id).hex}"
    stored = bucket.client.get_object(Bucket=bucket.server.bucket, Key=bucket.key(attachment.file.name))
    assert stored["Body"].read() == b"plain words"
    assert stored["ContentType"] == "application/octet-stream"
    assert stored["ContentDisposition"] == "attachment"
    grants = bucket.client.get_object_acl(Bucket=bucket.server.bucket, Key=bucket.key(attachment.file.name))["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]
    assert not [grant for grant in grants if grant["Grantee"].get("URI") in PUBLIC_GRANTEES]
    assert not settings.MEDIA_ROOT.exists()


@pytest.mark.django_db
def test_a_file_in_the_bucket_is_served_by_the_site_to_its_owner_alone(alice_client, bob, bucket):
    """Bytes come through /uploads/<id>/ with the site's headers; no response sends a browser to
    the store (no redirect, no signed URL) and another user gets the 404 of an unknown id."""
    image = image_bytes((40, 30), "PNG")
    attachment_id = upload(alice_client, "picture.png", image)
    text_id = upload(alice_client, "page.html", b"<script>alert(1)</script>")
    endpoint_host = bucket.server.endpoint_url.split("//", 1)[1]

    response = alice_client.get(f"/uploads/{attachment_id}/")
    assert response.status_code == 200
    assert streamed(response) == Attachment.objects.get(pk=attachment_id).read()
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    document = alice_client.get(f"/uploads/{text_id}/")
    assert streamed(document) == b"<script>alert(1)</script>"
    assert document["Content-Disposition"].startswith("attachment;")
    for answer in (response, document):
        headers = " ".join(f"{name}: {value}" for name, value in answer.items())
        assert endpoint_host not in headers and "X-Amz" not in headers and "Signature" not in headers

    bob_client = Client()
    bob_client.force_login(bob)
    assert bob_client.get(f"/uploads/{attachment_id}/").status_code == 404
    assert bob_client.get(f"/uploads/{uuid.uuid4()}/").status_code == 404


@pytest.mark.django_db
def test_deleting_an_upload_or_its_conversation_removes_the_objects(
    alice_client, alice, bucket, django_capture_on_commit_callbacks
):
    kept, deleted = upload(alice_client, "a.txt", b"a"), upload(alice_client, "b.txt", b"b")
    with django_capture_on_commit_callbacks(execute=True):
        assert alice_client.delete(f"/uploads/{deleted}/").status_code == 200
    assert bucket.keys() == [bucket.key(f"uploads/{uuid.UUID(kept).hex}")]

    conversation = conversation_with_answer(alice)
    attach(kept, conversation.messages.get(role="user"))
    with django_capture_on_commit_callbacks(execute=True):
        conversation.delete()
    assert bucket.keys() == []


@pytest.mark.django_db
def test_the_sweep_command_removes_stale_unsent_objects_from_the_bucket(
    alice_client, alice, bucket, django_capture_on_commit_callbacks
):
    conversation = conversation_with_answer(alice)
    stale, sent, fresh = (upload(alice_client, f"{name}.txt", name.encode()) for name in ("stale", "sent", "fresh"))
    age([stale, sent], hours=25)
    attach(sent, conversation.messages.get(role="user"))
    with django_capture_on_commit_callbacks(execute=True):
        call_command("sweep_uploads", stdout=io.StringIO())
    assert not object_exists(bucket, f"uploads/{uuid.UUID(stale).hex}")
    assert bucket.keys() == sorted(bucket.key(f"uploads/{uuid.UUID(kept).hex}") for kept in (sent, fresh))
    assert set(Attachment.objects.values_list("pk", flat=True)) == {uuid.UUID(sent), uuid.UUID(fresh)}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_a_stored_file_has_no_url_of_its_own_in_either_store(alice_client, settings, tmp_path, request, kind):
    """Neither a MEDIA_URL address nor a bucket's (signed or not) can be made for an upload: the
    one way to its bytes is /uploads/<id>/, which checks the owner."""
    if kind == "s3":
        settings.MEDIA_ROOT = tmp_path / "media"
        s3_store(settings, request.getfixturevalue("s3_server"))
    else:
        settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "chat.storage.PrivateFileSystemStorage"}}
        settings.MEDIA_ROOT = tmp_path / "media"
    attachment = Attachment.objects.get(pk=upload(alice_client, "a.txt", b"words"))
    assert attachment.read() == b"words"
    with pytest.raises(NotImplementedError, match="/uploads/<id>/"):
        attachment.file.url  # noqa: B018
    with pytest.raises(NotImplementedError):
        attachment.file.storage.url(attachment.file.name, expire=60)


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["the run's store", "s3"])
def test_stored_files_that_no_upload_names_are_swept_once_old(
    alice_client, alice, settings, tmp_path, request, kind, django_capture_on_commit_callbacks
):
    """A file left without its row (a process that died between the two, a store that failed to
    delete) goes once it is older than an unsent upload may be; a young one may be an upload
    whose row is being written, and stays, as do the files of uploads."""
    if kind == "s3":
        settings.MEDIA_ROOT = tmp_path / "media"
        store = s3_store(settings, request.getfixturevalue("s3_server"))
    else:
        store = fresh_store(settings, tmp_path)
    conversation = conversation_with_answer(alice)
    sent = upload(alice_client, "sent.txt", b"sent")
    attach(sent, conversation.messages.get(role="user"))
    orphan = store.storage.save(f"uploads/{uuid.uuid4().hex}", ContentFile(b"left behind"))
    sent_name = Attachment.objects.get(pk=sent).file.name
    assert store.names() == sorted([orphan, sent_name])

    assert upload_sweep.sweep() == upload_sweep.Swept(uploads=0, orphans=0)
    assert store.names() == sorted([orphan, sent_name]), "a young file without a row stays"
    later = timezone.now() + datetime.timedelta(hours=settings.CHAT_UPLOAD_UNSENT_HOURS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert upload_sweep.sweep(now=later) == upload_sweep.Swept(uploads=0, orphans=1)
    assert store.names() == [sent_name]
    assert Attachment.objects.get(pk=sent).read() == b"sent"


# --- The sweep by the server, in the run's own store --------------------------------------------


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_the_server_runtime_sweeps_unsent_uploads_periodically(alice_client, alice, runtime, settings, tmp_path):
    """The process's runtime sweeps in a thread of its own, in whatever store the run uses: the
    stale upload's row goes, then its file; a sent and a fresh one stay."""
    store = fresh_store(settings, tmp_path)
    conversation = conversation_with_answer(alice)
    stale, sent, fresh = (upload(alice_client, f"{name}.txt", name.encode()) for name in ("stale", "sent", "fresh"))
    age([stale, sent], hours=settings.CHAT_UPLOAD_UNSENT_HOURS + 1)
    attach(sent, conversation.messages.get(role="user"))
    stale_name = Attachment.objects.get(pk=stale).file.name
    settings.CHAT_UPLOAD_SWEEP_SECONDS = 0.2

    assert runtime.start_sweeper() is runtime.sweeper is not None
    wait_for(lambda: not Attachment.objects.filter(pk=stale).exists(), "the stale upload's row did not go")
    wait_for(lambda: stale_name not in store.names(), "the stale upload's file did not go")
    assert set(Attachment.objects.values_list("pk", flat=True)) == {uuid.UUID(sent), uuid.UUID(fresh)}
    assert len(store.names()) == 2

    # A later upload that goes stale is swept too: the sweep runs again and again.
    later = upload(alice_client, "later.txt", b"later")
    age([later], hours=settings.CHAT_UPLOAD_UNSENT_HOURS + 1)
    wait_for(lambda: not Attachment.objects.filter(pk=later).exists(), "the later stale upload did not go")
    runtime.close()
    assert runtime.sweeper is None


def test_no_sweeper_runs_when_the_interval_is_zero(runtime, settings):
    settings.CHAT_UPLOAD_SWEEP_SECONDS = 0
    assert runtime.start_sweeper() is None


@pytest.mark.django_db(transaction=True)
def test_two_processes_sweeping_at_once_delete_each_upload_once(alice_client, settings, tmp_path):
    """More stale uploads than one batch, two sweeps at the same moment (as two server processes
    would): every row goes once, every file goes, and neither sweep fails."""
    store = fresh_store(settings, tmp_path)
    settings.CHAT_UPLOAD_QUOTA_BYTES = 0
    ids = [upload(alice_client, f"{number}.txt", b"x") for number in range(AttachmentQuerySet.SWEEP_BATCH + 30)]
    age(ids, hours=settings.CHAT_UPLOAD_UNSENT_HOURS + 1)
    start = threading.Barrier(2)
    results, errors = [], []

    def sweep():
        from django.db import connection

        try:
            start.wait(10)
            results.append(Attachment.objects.sweep())
        except Exception as error:  # shown by the assertion below
            errors.append(error)
        finally:
            connection.close()

    sweepers = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in sweepers:
        thread.start()
    for thread in sweepers:
        thread.join(60)
    assert errors == []
    assert sum(results) == len(ids)
    assert not Attachment.objects.exists()
    assert store.names() == []
