"""A stop is a request: recorded on the answer's row, ended by the answer's own thread.

Deactivating a user ends their answers as cancelled with their text, wherever it is done: the real
admin form (another thread of this process), a thread or management command of a process where no
worker runs, a shell in another process, an UPDATE that sends no signal. The admin of another
server process is in tests/test_scale_out.py, beside the other cross-process stops. Whoever asks,
the answer's final save runs on a thread of the worker generating it, never on the asker's.
"""

import asyncio
import contextlib
import json
import threading
import time
import uuid

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message, MessageQuerySet, ServerProcess
from chat.relay import publish_stops, stop_channel
from chat.runtime import current
from tests.conftest import make_user
from tests.forms import form_fields
from tests.services import manage, redis_server, site_env  # noqa: F401  (a fixture, used by name)
from tests.test_outcomes import assert_outcome, close, partial, send, until_done
from tests.test_stranded import gated_answer, read_until_streamed, wait_for_row
from tests.upstream import Pause, stream
from tests.websocket import connect

User = get_user_model()


@pytest.fixture(autouse=True)
def no_send_rate_limit(settings):
    settings.CHAT_SENDS_PER_MINUTE = 0


@pytest.fixture
def upstream(upstream, settings):
    """The loopback upstream, patient: a stop is what must end these answers, and on a loaded
    machine the tests' 5 s silence timeout ended one first (a shell took 9 s to start)."""
    settings.OPENRESPONSES_TIMEOUT = 120.0
    return upstream


@pytest.fixture
def root(db):
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def final_saves(monkeypatch):
    """Every final save of an answer: (thread name, status), whoever makes it."""
    saves = []
    original = MessageQuerySet.finish_answer

    def recorded(queryset, message_id, **outcome):
        saves.append((threading.current_thread().name, outcome.get("status")))
        return original(queryset, message_id, **outcome)

    monkeypatch.setattr(MessageQuerySet, "finish_answer", recorded)
    return saves


def assert_saved_by_the_worker(final_saves, status):
    threads = [thread for thread, saved in final_saves if saved == status]
    assert threads, f"no final save as {status}: {final_saves}"
    assert all(thread.startswith("answer-") for thread in threads), threads


def deactivate_in_the_admin(staff, user):
    """Untick "Active" on the user's admin page and save the form as it stands."""
    client = Client()
    client.force_login(staff)
    url = reverse("admin:auth_user_change", args=[user.pk])
    page = client.get(url)
    assert page.status_code == 200
    data = form_fields(page.content.decode(), "user_form")
    assert data.pop("is_active") == ["on"]
    return client.post(url, data)


def a_streaming_answer(owner, worker_id, text="so far"):
    conversation = Conversation.objects.create(owner=owner, title="elsewhere", model="test-model")
    return Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", text=text, worker=worker_id
    )


# --- Stop through the consumer ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_stop_is_recorded_on_the_row_and_saved_by_the_answers_own_thread(alice, upstream, worker, final_saves):
    upstream.queue(stream(*partial(["Stop ", "me"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Go on")
    await read_until_streamed(exchange, "Stop me")
    await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
    await until_done(exchange)
    row = await assert_outcome(exchange, "cancelled", "Stop me")
    assert row.stop_requested_at is not None
    assert_saved_by_the_worker(final_saves, "cancelled")
    await close(communicator)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.worker_threads(1)
async def test_a_queued_answer_stopped_is_saved_by_the_workers_stop_thread_unsent(
    alice, bob, upstream, worker, final_saves
):
    gate = threading.Event()
    upstream.queue(gated_answer(["only ", "thread"], gate))
    bobs_socket, _, _ = await connect(bob)
    bobs = await send(bobs_socket, "Take the thread")
    await read_until_streamed(bobs, "only thread")
    communicator, _, _ = await connect(alice)
    queued = await send(communicator, "Wait")
    await communicator.send_json_to({"type": "chat.stop", "message": queued.answer})
    await until_done(queued, timeout=5)
    await assert_outcome(queued, "cancelled", "")
    assert [(thread.partition("_")[0], status) for thread, status in final_saves] == [("answer-stops", "cancelled")]
    gate.set()
    await until_done(bobs)
    assert len(upstream.requests) == 1
    await close(communicator, bobs_socket)


# --- Stop between processes, on the relay's Redis ---------------------------------------------


@pytest.fixture
def redis_url(request, settings):
    """A real Redis (tests/services.py) as the site's REDIS_URL for the test."""
    settings.REDIS_URL = request.getfixturevalue("redis_server").url
    return settings.REDIS_URL


async def until_listening(client, channel, timeout=10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not dict(client.pubsub_numsub(channel)).get(channel.encode()):
        assert loop.time() < deadline, f"nobody subscribed to {channel}"
        await asyncio.sleep(0.02)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stop_published_on_this_processs_channel_ends_its_answer_without_the_heartbeat(
    alice, upstream, worker, redis_url, settings
):
    """As another process does: no row written, and no heartbeat within the test to find one."""
    settings.CHAT_HEARTBEAT_INTERVAL = 600
    upstream.queue(stream(*partial(["heard ", "at once"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Go")
    await read_until_streamed(exchange, "heard at once")
    client = redis.Redis.from_url(redis_url)
    await until_listening(client, stop_channel(worker.id))
    publish_stops(client, {worker.id: [exchange.answer]})
    await until_done(exchange)
    row = await assert_outcome(exchange, "cancelled", "heard at once")
    assert row.stop_requested_at is not None, "the end records the request"
    client.close()
    await close(communicator)


def next_published(pubsub, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return json.loads(message["data"])
    return None


@pytest.mark.django_db(transaction=True)
def test_a_stop_asked_here_for_another_processs_answer_is_recorded_and_published_on_its_channel_at_commit(
    alice, redis_url, runtime
):
    generating = ServerProcess.objects.create(id=uuid.uuid4(), hostname="elsewhere", pid=1)
    first, second = a_streaming_answer(alice, generating.id), a_streaming_answer(alice, generating.id)
    pubsub = redis.Redis.from_url(redis_url).pubsub()
    pubsub.subscribe(stop_channel(generating.id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    assert runtime.request_stop(Message.objects.filter(pk=first.pk)) == [str(first.pk)]
    assert next_published(pubsub) == {"stop": [str(first.pk)]}
    with transaction.atomic():
        runtime.request_stop(Message.objects.filter(pk=second.pk))
        assert next_published(pubsub, timeout=0.3) is None, "published before the commit"
    assert next_published(pubsub) == {"stop": [str(second.pk)]}
    for answer in (first, second):
        answer.refresh_from_db()
        assert answer.status == Message.Status.STREAMING and answer.stop_requested_at is not None
    assert runtime.worker is None, "asking started nothing"
    pubsub.close()


# --- Deactivation -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.worker_threads(1)
async def test_deactivating_a_user_in_the_admin_ends_their_answers_cancelled_with_their_text(
    alice, root, upstream, worker, final_saves
):
    """The admin answers with its redirect, the account is off, the streaming answer keeps its text
    and the queued one never goes upstream."""
    upstream.queue(stream(*partial(["Half ", "an answer"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    streaming = await send(communicator, "Talk")
    await read_until_streamed(streaming, "Half an answer")
    queued = await send(communicator, "And in another conversation")  # the only thread is taken
    assert queued.frames[-1]["message"]["status"] == "queued"
    request = upstream.requests[-1]

    response = await sync_to_async(deactivate_in_the_admin)(root, alice)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:auth_user_changelist")
    assert not (await User.objects.aget(pk=alice.pk)).is_active

    first = await wait_for_row(streaming.answer, lambda row: row.is_finished, "the streaming answer did not end")
    assert (first.status, first.text) == (Message.Status.CANCELLED, "Half an answer")
    second = await wait_for_row(queued.answer, lambda row: row.is_finished, "the queued answer did not end")
    assert (second.status, second.text, second.started_at) == (Message.Status.CANCELLED, "", None)
    assert_saved_by_the_worker(final_saves, "cancelled")
    assert len(upstream.requests) == 1
    for _ in range(100):
        if request.get("disconnected"):
            break
        await asyncio.sleep(0.02)
    assert request.get("disconnected"), "the upstream request was closed"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_deactivation_rolled_back_stops_nothing(alice, upstream, worker):
    gate = threading.Event()
    upstream.queue(gated_answer(["carry ", "on"], gate))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Go")
    await read_until_streamed(exchange, "carry on")

    def deactivate_then_fail():
        with contextlib.suppress(RuntimeError), transaction.atomic():
            alice.is_active = False
            alice.save()
            raise RuntimeError("the rest of the admin's save failed")

    await sync_to_async(deactivate_then_fail)()
    gate.set()
    row = await wait_for_row(exchange.answer, lambda row: row.is_finished, "the answer did not end")
    assert (row.status, row.text, row.stop_requested_at) == (Message.Status.COMPLETED, "carry on", None)
    assert (await User.objects.aget(pk=alice.pk)).is_active
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_deactivation_that_sends_no_signal_still_ends_the_answers(alice, upstream, worker):
    """A bulk UPDATE (an admin action, a shell) saves no model: the worker checks the owners too."""
    upstream.queue(stream(*partial(["quietly ", "ended"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Go")
    await read_until_streamed(exchange, "quietly ended")
    await User.objects.filter(pk=alice.pk).aupdate(is_active=False)
    await until_done(exchange)
    await assert_outcome(exchange, "cancelled", "quietly ended")
    await close(communicator)


@pytest.mark.django_db(transaction=True)
def test_deactivating_where_no_worker_runs_records_the_stop_and_starts_no_worker(alice, bob):
    """A shell, a management command, a thread of a process that serves no answers: the stop is
    recorded for the process generating the answer, and no worker starts here."""
    generating = ServerProcess.objects.create(id=uuid.uuid4(), hostname="elsewhere", pid=1)
    alices = a_streaming_answer(alice, generating.id)
    bobs = a_streaming_answer(bob, generating.id)
    assert current().worker is None

    failures = []

    def deactivate():
        try:
            alice.is_active = False
            alice.save()
        except Exception as error:  # shown by the assertion below
            failures.append(error)

    thread = threading.Thread(target=deactivate)
    thread.start()
    thread.join(30)
    assert failures == []
    call_command("shell", command=deactivate_command(bob))

    assert current().worker is None
    assert list(ServerProcess.objects.values_list("id", flat=True)) == [generating.id]
    for answer in (alices, bobs):
        answer.refresh_from_db()
        assert answer.status == Message.Status.STREAMING, "the generating process ends it, not this one"
        assert answer.stop_requested_at is not None
    assert not User.objects.filter(pk__in=[alice.pk, bob.pk], is_active=True).exists()


def deactivate_command(user):
    return (
        "from django.contrib.auth import get_user_model; "
        f"user = get_user_model().objects.get(pk={user.pk}); user.is_active = False; user.save()"
    )


def database_url():
    """The test database, for a process of its own."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings_dict['NAME']}"
    return (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD']}@{settings_dict['HOST'] or 'localhost'}"
        f":{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_deactivating_from_a_shell_in_another_process_ends_the_answer_here(alice, upstream, worker):
    """The shell has no worker and starts none; this process's worker notices the request."""
    upstream.queue(stream(*partial(["from ", "afar"]), Pause(60)))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Go")
    await read_until_streamed(exchange, "from afar")
    env = site_env(DATABASE_URL=database_url(), REDIS_URL=django_settings.REDIS_URL or None, DJANGO_DEBUG="1")
    await asyncio.get_running_loop().run_in_executor(None, manage, env, "shell", "-c", deactivate_command(alice))
    row = await wait_for_row(exchange.answer, lambda row: row.is_finished, "the answer did not end")
    assert (row.status, row.text) == (Message.Status.CANCELLED, "from afar")
    assert row.stop_requested_at is not None
    assert [process.id async for process in ServerProcess.objects.all()] == [worker.id], "the shell started a worker"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_shell_that_deactivates_a_user_with_an_answer_in_flight_starts_no_thread(alice):
    """The runtime's accessor never starts anything: the shell records the stop and is done."""
    generating = ServerProcess.objects.create(id=uuid.uuid4(), hostname="elsewhere", pid=1)
    answer = a_streaming_answer(alice, generating.id)
    env = site_env(DATABASE_URL=database_url(), REDIS_URL=django_settings.REDIS_URL or None, DJANGO_DEBUG="1")
    threads = "import threading; print('THREADS', sorted(thread.name for thread in threading.enumerate()))"
    output = manage(env, "shell", "-c", f"{deactivate_command(alice)}; {threads}")
    assert "THREADS ['MainThread']" in output
    answer.refresh_from_db()
    assert (answer.status, answer.stop_requested_at is not None) == (Message.Status.STREAMING, True)
    assert list(ServerProcess.objects.values_list("id", flat=True)) == [generating.id]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_deactivating_a_user_with_no_answer_in_flight_just_saves(alice, root, worker):
    response = await sync_to_async(deactivate_in_the_admin)(root, alice)
    assert response.status_code == 302
    assert not (await User.objects.aget(pk=alice.pk)).is_active
    assert await Message.objects.acount() == 0
