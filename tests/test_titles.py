"""Titles the model writes after the first answer (chat/answering/titles.py), through the real path:
websockets through the ASGI app, the worker's threads, the loopback upstream, the views and the
admin with Django's test client.

Each test turns titles on (tests/conftest.py turns them off for every other test). The upstream
tells a title request from an answer by its instructions (`routed`), so each test scripts both.
"""

import asyncio
import datetime
import threading

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.backends.signals import connection_created
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import limits
from chat.answering.titles import TITLE_INSTRUCTIONS, TITLE_THREAD
from chat.models import (
    TITLE_ABANDONED_AFTER,
    TITLE_LENGTH,
    AccountLimits,
    Conversation,
    Message,
    SharedConversation,
    UsageEntry,
)
from chat.runtime import current
from tests.conftest import make_user
from tests.factories import conversation_with_answer
from tests.upstream import Gate, Hangup, Routed, Status, answer, finished, started, stream, usage_object
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "¿Por qué el cielo es azul al mediodía y rojo al atardecer?"
FIRST_WORDS = Conversation.title_from(QUESTION)
ANSWER = ["La luz ", "se dispersa."]


@pytest.fixture(autouse=True)
def titles_on(settings):
    settings.CHAT_GENERATED_TITLES = True


def is_title_request(body):
    return body.get("instructions") == TITLE_INSTRUCTIONS


def titles(title, *answers):
    """Title requests get `title`, answers `answers` in order (tests/upstream.py Routed)."""
    return Routed(is_title_request, title, *answers)


def route(upstream, routed, requests=8):
    upstream.queue(*[routed] * requests)
    return routed


async def idle_titles():
    """Once every title queued so far is written (the title thread takes them in order)."""
    await asyncio.wrap_future(current().worker.titles.pool.submit(lambda: None))


async def first_exchange(socket, text=QUESTION):
    await socket.send_json_to({"type": "chat.send", "conversation": None, "text": text})
    frames = await receive_until(socket, "message.done", timeout=15)
    return frames[0]["conversation"]["id"], frames


@database_sync_to_async
def conversation_of(conversation_id):
    return Conversation.objects.get(pk=conversation_id)


@database_sync_to_async
def title_entries(user):
    return list(UsageEntry.objects.filter(user=user, purpose=UsageEntry.Purpose.TITLE))


@pytest.mark.asyncio
async def test_the_first_answer_is_followed_by_a_short_title_that_every_tab_of_the_owner_hears(
    alice, bob, upstream, worker, settings
):
    gate = Gate()
    routed = route(upstream, titles([gate, *answer(["“Por qué el cielo ", "es azul”."])], answer(ANSWER)))
    sending, _, _ = await connect(alice)
    other_tab, _, _ = await connect(alice)
    bobs, _, _ = await connect(bob)

    conversation_id, frames = await first_exchange(sending)
    # The answer ended while the title request was still held by the upstream: it waited for nothing.
    assert frames[-1]["status"] == "completed"
    assert await asyncio.to_thread(routed.asked.wait, 10)
    assert (await conversation_of(conversation_id)).title == FIRST_WORDS
    gate.event.set()

    for socket in (sending, other_tab):
        updated = (await receive_until(socket, "conversation.updated", timeout=15))[-1]["conversation"]
        assert updated["id"] == conversation_id
        assert updated["title"] == "Por qué el cielo es azul"
        assert updated["url"] == f"/c/{conversation_id}/"
    assert await bobs.receive_nothing(timeout=0.5)

    stored = await conversation_of(conversation_id)
    assert (stored.title, stored.title_source) == ("Por qué el cielo es azul", Conversation.TitleSource.MODEL)
    [body] = routed.picked_bodies
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["max_output_tokens"] == settings.CHAT_TITLE_MAX_OUTPUT_TOKENS == 200
    [item] = body["input"]
    assert item["role"] == "user"
    assert QUESTION in item["content"] and "La luz se dispersa." in item["content"]
    # The sidebar and the page say so on the next load too.
    web = Client()
    await database_sync_to_async(web.force_login)(alice)
    page = (await database_sync_to_async(web.get)(reverse("chat:conversation", args=[conversation_id]))).content
    assert "Por qué el cielo es azul" in page.decode()
    for socket in (sending, other_tab, bobs):
        await socket.disconnect()
    assert_no_groups_left()


@pytest.mark.asyncio
async def test_later_answers_ask_for_no_title_and_a_first_answer_that_failed_waits_for_one_that_speaks(
    alice, upstream, worker
):
    failed = [*stream(*started(), finished("failed", error={"code": "server_error", "message": "Down."}))]
    routed = route(upstream, titles(answer(["Sky colours"]), failed, answer(ANSWER), answer(["Again."])))
    socket, _, _ = await connect(alice)
    conversation_id, frames = await first_exchange(socket)
    assert frames[-1]["status"] == "failed"
    await idle_titles()
    assert routed.picked_bodies == []

    await socket.send_json_to({"type": "chat.regenerate", "message": frames[-1]["message"]})
    await receive_until(socket, "message.done", timeout=15)
    assert (await receive_until(socket, "conversation.updated", timeout=15))[-1]["conversation"]["title"] == (
        "Sky colours"
    )
    await socket.send_json_to({"type": "chat.send", "conversation": conversation_id, "text": "¿Y de noche?"})
    await receive_until(socket, "message.done", timeout=15)
    await idle_titles()
    assert len(routed.picked_bodies) == 1
    assert len(upstream.requests) == 4
    await socket.disconnect()


class TitleThreadStatements:
    """Every statement the titles' thread runs, but its transactions' own (BEGIN, savepoints)."""

    def __init__(self):
        self.statements = []
        self.lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        if not sql.startswith(("BEGIN", "SAVEPOINT", "RELEASE")):
            with self.lock:
                self.statements.append(sql)
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        if threading.current_thread().name.startswith(TITLE_THREAD) and self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def taken(self):
        with self.lock:
            taken, self.statements = self.statements, []
        return taken


@pytest.fixture
def title_statements():
    """Requested before `worker`, so that the titles' thread's connection carries the recorder."""
    recorder = TitleThreadStatements()
    connection_created.connect(recorder.install)
    yield recorder
    connection_created.disconnect(recorder.install)


@pytest.mark.asyncio
async def test_a_title_costs_a_fixed_number_of_statements_and_a_later_answer_costs_its_thread_none(
    alice, upstream, title_statements, worker
):
    """The titles' thread reads the answer and whether an earlier one spoke, reserves (the
    owner's lock, the day's figures, the entry), records the entry it holds and stores the
    title; a later answer, whose conversation the end read already, is not handed to it."""
    route(upstream, titles(answer(["Sky colours"]), answer(ANSWER), answer(["Again."])))
    socket, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    await receive_until(socket, "conversation.updated", timeout=15)
    await idle_titles()
    first = title_statements.taken()
    assert [sql.split(None, 1)[0] for sql in first] == ["SELECT"] * 4 + ["INSERT", "UPDATE", "UPDATE"], first

    await socket.send_json_to({"type": "chat.send", "conversation": conversation_id, "text": "¿Y de noche?"})
    await receive_until(socket, "message.done", timeout=15)
    await idle_titles()
    assert title_statements.taken() == []
    assert (await conversation_of(conversation_id)).title == "Sky colours"
    await socket.disconnect()


@pytest.mark.asyncio
async def test_a_rename_while_the_title_is_written_wins_in_every_tab(alice, upstream, worker):
    gate = Gate()
    routed = route(upstream, titles([gate, *answer(["Sky colours"])], answer(ANSWER)))
    socket, _, _ = await connect(alice)
    other_tab, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    assert await asyncio.to_thread(routed.asked.wait, 10)

    web = Client()
    await database_sync_to_async(web.force_login)(alice)
    renamed = await database_sync_to_async(web.post)(reverse("chat:rename", args=[conversation_id]), {"title": "Mine"})
    assert renamed.status_code == 200
    for tab in (socket, other_tab):
        assert (await receive_until(tab, "conversation.updated"))[-1]["conversation"]["title"] == "Mine"
    gate.event.set()
    await idle_titles()

    stored = await conversation_of(conversation_id)
    assert (stored.title, stored.title_source) == ("Mine", Conversation.TitleSource.OWNER)
    # The model's title reached no tab, and its tokens count all the same.
    assert await socket.receive_nothing(timeout=0.5)
    [entry] = await title_entries(alice)
    assert entry.recorded_at is not None and entry.total_tokens == 7 + 1
    for tab in (socket, other_tab):
        await tab.disconnect()
    assert_no_groups_left()


@pytest.mark.asyncio
async def test_a_title_the_owner_gave_before_the_first_answer_ended_is_kept(alice, upstream, worker):
    gate = Gate()
    route(upstream, titles(answer(["Sky colours"]), [*answer(["La luz"])[:3], gate, *answer(["La luz"])[3:]]))
    socket, _, _ = await connect(alice)
    await socket.send_json_to({"type": "chat.send", "conversation": None, "text": QUESTION})
    conversation_id = (await receive(socket))["conversation"]["id"]
    web = Client()
    await database_sync_to_async(web.force_login)(alice)
    await database_sync_to_async(web.post)(reverse("chat:rename", args=[conversation_id]), {"title": "Mine"})
    gate.event.set()
    await receive_until(socket, "message.done", timeout=15)
    await idle_titles()
    assert (await conversation_of(conversation_id)).title == "Mine"
    assert not [request for request in upstream.requests if is_title_request(request["body"])]
    await socket.disconnect()


@pytest.mark.asyncio
async def test_a_shutdown_gives_up_the_title_being_written_at_once(alice, upstream, worker):
    gate = Gate()
    held = answer(["Sky ", "colours"])
    routed = route(upstream, titles([*held[:5], gate, *held[5:]], answer(ANSWER)))
    socket, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    assert await asyncio.to_thread(routed.asked.wait, 10)
    await socket.disconnect()

    await asyncio.wait_for(asyncio.to_thread(worker.interrupt_all), 15)
    await asyncio.wait_for(idle_titles(), 5)  # not held until the upstream lets go
    assert not gate.passed.is_set()
    assert (await conversation_of(conversation_id)).title == FIRST_WORDS
    [entry] = await title_entries(alice)
    assert entry.recorded_at is not None and entry.estimated


FAILURES = {
    "an HTTP error": ([Status(400, b'{"error": {"message": "No."}}', {"Content-Type": "application/json"})], 0),
    "a failed response": (stream(*started(), finished("failed", usage=usage_object(30, 0))), 30),
    "an empty answer": (answer([], usage=usage_object(30, 0)), 30),
    "only quotes and a full stop": (answer(["“ . ”"], usage=usage_object(30, 2)), 32),
    "a broken stream": ([*answer(["Sky colours"])[:6], Hangup()], None),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", FAILURES, ids=list(FAILURES))
async def test_a_title_request_that_fails_keeps_the_first_words_and_tells_nobody(alice, upstream, worker, failure):
    scenario, tokens = FAILURES[failure]
    routed = route(upstream, titles(scenario, answer(ANSWER)))
    socket, _, _ = await connect(alice)
    conversation_id, frames = await first_exchange(socket)
    await idle_titles()
    assert len(routed.picked_bodies) == 1
    stored = await conversation_of(conversation_id)
    assert (stored.title, stored.title_source) == (FIRST_WORDS, Conversation.TitleSource.FIRST_WORDS)
    assert await socket.receive_nothing(timeout=0.5), "no error and no update reaches the owner"
    [entry] = await title_entries(alice)
    assert entry.recorded_at is not None
    if tokens is None:  # broken off after its input was read: counted by estimate
        assert entry.estimated and entry.total_tokens >= entry.estimated_input_tokens > 0
    else:
        assert entry.total_tokens == tokens
    await socket.disconnect()


@pytest.mark.asyncio
async def test_the_title_counts_in_the_budget_and_none_is_asked_for_once_it_is_spent(alice, upstream, worker, settings):
    settings.CHAT_SENDS_PER_MINUTE = 2  # a title is not a send: both sends below go
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=40)
    routed = route(
        upstream,
        titles(answer(["Sky colours"], usage=usage_object(8, 2)), answer(ANSWER, usage=usage_object(10, 5))),
    )
    socket, _, _ = await connect(alice)
    await first_exchange(socket)
    await receive_until(socket, "conversation.updated", timeout=15)
    # The rest of the budget (40 - 15) bounds the title request like an answer's.
    assert routed.picked_bodies[0]["max_output_tokens"] == 25 < settings.CHAT_TITLE_MAX_OUTPUT_TOKENS
    budget = await database_sync_to_async(limits.budget_status)(alice)
    assert (budget["used"], budget["reserved"]) == (15 + 10, 0)

    # The next conversation's first answer spends the rest: no title is asked for.
    routed.answers.append(answer(ANSWER, usage=usage_object(10, 5)))
    conversation_id, frames = await first_exchange(socket, "Otra pregunta")
    assert frames[-1]["budget"]["exhausted"]
    await idle_titles()
    assert len(routed.picked_bodies) == 1
    assert (await conversation_of(conversation_id)).title == "Otra pregunta"
    # The usage report counts the title's tokens, and answers only as answers.
    staff = Client()
    await database_sync_to_async(staff.force_login)(
        await database_sync_to_async(make_user)("root", is_staff=True, is_superuser=True)
    )
    report = await database_sync_to_async(staff.get)(reverse("admin:chat_usage_report"))
    assert (report.context["totals"]["answers"], report.context["totals"]["total_tokens"]) == (2, 40)
    # So does the settings page's usage of today.
    usage = await database_sync_to_async(limits.usage_today)(alice)
    assert usage == [{"model": "test-model", "answers": 2, "tokens": 40}]
    await socket.disconnect()


@pytest.mark.asyncio
async def test_imported_and_shared_copies_keep_the_titles_they_came_with(alice, bob, upstream, worker):
    """Both copies end with an answer that said nothing, so their next answer is the first to speak."""
    routed = route(upstream, titles(answer(["Sky colours"]), answer(ANSWER), answer(ANSWER)))
    original = await database_sync_to_async(conversation_with_answer)(
        bob, QUESTION, "", title="Bob's own title", status=Message.Status.FAILED, tokens=(0, 0)
    )
    bobs = Client()
    await database_sync_to_async(bobs.force_login)(bob)
    exported = (await database_sync_to_async(bobs.get)(reverse("chat:export"))).content
    link = await database_sync_to_async(SharedConversation.objects.share)(original)

    web = Client()
    await database_sync_to_async(web.force_login)(alice)
    imported = await database_sync_to_async(web.post)(
        reverse("chat:import"), {"file": SimpleUploadedFile("export.json", exported)}
    )
    assert imported.status_code == 200, imported.content
    continued = await database_sync_to_async(web.post)(reverse("chat:shared_continue", args=[link.token]))
    assert continued.status_code == 302
    copies = [conversation async for conversation in Conversation.objects.filter(owner=alice)]
    assert {copy.title_source for copy in copies} == {Conversation.TitleSource.COPIED}

    socket, _, _ = await connect(alice)
    for copy in copies:
        await socket.send_json_to({"type": "chat.send", "conversation": str(copy.id), "text": "¿Y de noche?"})
        assert (await receive_until(socket, "message.done", timeout=15))[-1]["status"] == "completed"
    await idle_titles()
    assert routed.picked_bodies == []
    assert {(await conversation_of(copy.id)).title for copy in copies} == {"Bob's own title"}
    await socket.disconnect()


@pytest.mark.asyncio
async def test_with_titles_off_nothing_is_asked(alice, upstream, worker, settings):
    settings.CHAT_GENERATED_TITLES = False
    routed = route(upstream, titles(answer(["Sky colours"]), answer(ANSWER)))
    socket, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    await idle_titles()
    assert routed.picked_bodies == [] and len(upstream.requests) == 1
    assert (await conversation_of(conversation_id)).title == FIRST_WORDS
    await socket.disconnect()


@pytest.mark.asyncio
async def test_the_admin_says_who_gave_the_title(alice, upstream, worker):
    route(upstream, titles(answer(["Sky colours"]), answer(ANSWER)))
    socket, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    await receive_until(socket, "conversation.updated", timeout=15)
    await socket.disconnect()
    staff = Client()
    await database_sync_to_async(staff.force_login)(
        await database_sync_to_async(make_user)("root", is_staff=True, is_superuser=True)
    )
    page = await database_sync_to_async(staff.get)(reverse("admin:chat_conversation_change", args=[conversation_id]))
    text = page.content.decode()
    assert "Sky colours" in text and "the model, after the first answer" in text
    listing = await database_sync_to_async(staff.get)(
        reverse("admin:chat_conversation_changelist"), {"title_source__exact": "model"}
    )
    assert "Sky colours" in listing.content.decode()
    entries = await database_sync_to_async(staff.get)(
        reverse("admin:chat_usageentry_changelist"), {"purpose__exact": "title"}
    )
    assert entries.status_code == 200 and "title of a conversation" in entries.content.decode()


def test_the_reaper_leaves_a_title_being_written_alone_and_records_one_lost_with_its_process(alice):
    conversation = conversation_with_answer(alice)
    entry = UsageEntry.objects.reserve_title(conversation, 400, 60)
    assert (entry.estimated_input_tokens, entry.reserved_tokens) == (100, 100 + 60)
    assert UsageEntry.objects.record_ended() == 0
    entry.refresh_from_db()
    assert entry.recorded_at is None, "a title still being written is not taken for a lost one"
    assert limits.budget_status(alice)["reserved"] == 160
    with time_machine.travel(timezone.now() + TITLE_ABANDONED_AFTER + datetime.timedelta(seconds=1)):
        assert UsageEntry.objects.record_ended() == 1
    entry.refresh_from_db()
    assert (entry.total_tokens, entry.estimated) == (160, True)
    assert limits.budget_status(alice)["used"] == 15 + 160


@pytest.mark.asyncio
async def test_a_title_of_control_characters_markup_and_great_length_is_stored_as_plain_short_text(
    alice, upstream, worker
):
    """NUL (which PostgreSQL cannot store), an escape and a right-to-left override are read as
    spaces (lone surrogates too: tests/unit/test_title_cleaning.py); markup stays text, escaped
    wherever it is shown; a reply of thousands of characters is cut to a title's length."""
    reply = "\u202eSky\x00 is\x1b[31m <img src=x onerror=alert(1)> blue " + "and wide " * 500
    route(upstream, titles(answer([reply]), answer(ANSWER)))
    socket, _, _ = await connect(alice)
    conversation_id, _ = await first_exchange(socket)
    updated = (await receive_until(socket, "conversation.updated", timeout=15))[-1]["conversation"]
    stored = await conversation_of(conversation_id)
    assert updated["title"] == stored.title
    assert stored.title.startswith("Sky is [31m <img src=x onerror=alert(1)> blue and wide")
    assert len(stored.title) <= TITLE_LENGTH and stored.title.endswith("…")
    assert not any(character in stored.title for character in "\x00\x1b\u202e")
    web = Client()
    await database_sync_to_async(web.force_login)(alice)
    page = (await database_sync_to_async(web.get)(reverse("chat:conversation", args=[conversation_id]))).content
    assert b"<img src=x" not in page and b"&lt;img src=x onerror=alert(1)&gt;" in page
    await socket.disconnect()
    assert_no_groups_left()
