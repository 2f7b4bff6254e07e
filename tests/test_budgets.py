"""Budgets and the send rate: spending is a ledger that deleting does not change, answers without
usage from the upstream count by estimate, sends reserve before they go upstream so that racing
ones stay within the budget, and the send rate is a sliding window.

The sends go through real websockets (the ASGI app), the worker's threads and the loopback
upstream; deletions and reports through the real views and admin with Django's test client.
"""

import asyncio
import datetime
import re
import threading
import uuid

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat import limits
from chat.admin import usage_rows
from chat.answering.maintenance import reap_orphans
from chat.models import AccountLimits, BudgetSpent, Conversation, Message, SendRateExceeded, UsageEntry, tokens_for
from tests.conftest import make_user
from tests.factories import conversation_with_answer
from tests.upstream import (
    Hangup,
    Pause,
    Status,
    answer,
    error_event,
    finished,
    started,
    stream,
    text_events,
    usage_object,
)
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "How do rivers begin?"


def partial(deltas):
    """An answer's events cut off after its text deltas: no terminal event, no usage."""
    return [*started(), *text_events(deltas)[: 2 + len(deltas)]]


@database_sync_to_async
def budget_of(user):
    return limits.budget_status(user)


@database_sync_to_async
def entry_of(message_id):
    return UsageEntry.objects.get(message_id=message_id)


async def send_and_finish(communicator, text=QUESTION, conversation=None):
    await communicator.send_json_to({"type": "chat.send", "conversation": conversation, "text": text})
    return await receive_until(communicator, "message.done", timeout=15)


async def admin_client():
    web = AsyncClient()
    root = await database_sync_to_async(make_user)("root", is_staff=True, is_superuser=True)
    await database_sync_to_async(web.force_login)(root)
    return web


# --- The ledger survives deletion --------------------------------------------------------------


@pytest.mark.asyncio
async def test_deleting_the_conversations_gives_no_tokens_back(alice, upstream, worker):
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=30)
    upstream.queue(
        answer(["Fifteen ", "tokens"], usage=usage_object(10, 5)),
        answer(["Fifteen ", "more"], usage=usage_object(10, 5)),
    )
    communicator, _, _ = await connect(alice)
    first = await send_and_finish(communicator, "one")
    assert first[-1]["budget"]["used"] == 15 and not first[-1]["budget"]["exhausted"]
    second = await send_and_finish(communicator, "two")
    # The message.done that spends the rest says so: the composer is disabled at once.
    assert second[-1]["budget"] | {"resets_at": None} == {
        "used": 30,
        "reserved": 0,
        "budget": 30,
        "exhausted": True,
        "resets_at": None,
        "zone": "UTC",
    }

    web = AsyncClient()
    await database_sync_to_async(web.force_login)(alice)
    for frames in (first, second):
        response = await web.post(reverse("chat:delete", args=[frames[0]["conversation"]["id"]]))
        assert response.status_code == 200
    assert await Conversation.objects.filter(owner=alice).acount() == 0
    assert (await budget_of(alice))["used"] == 30

    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "free again?"})
    refusal = await receive(communicator)
    assert refusal["code"] == "quota_exceeded"
    assert refusal["message"] == "You have used today's budget of 30 tokens; it resets at midnight."
    page = (await web.get(reverse("chat:home"))).content.decode()
    assert "Today: 30 of 30 tokens used." in page
    assert "You have used today's budget of 30 tokens; it resets at midnight (UTC)." in page
    assert len(upstream.requests) == 2
    await communicator.disconnect()
    assert_no_groups_left()


def report(client):
    response = client.get(reverse("admin:chat_usage_report"))
    assert response.status_code == 200
    return response.context["rows"], response.context["totals"], response.context["estimated_total"]


def test_the_usage_report_is_unchanged_when_messages_conversations_and_users_are_deleted(client, alice, bob):
    kept = conversation_with_answer(alice, "kept", tokens=(10, 5))
    trimmed = conversation_with_answer(alice, "trimmed", tokens=(1, 2))
    conversation_with_answer(bob, "bob's", model="other-model", tokens=(3, 4), status=Message.Status.FAILED)
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    before = report(client)
    rows = {(row["username"], row["model"]): row for row in before[0]}
    assert rows[("alice", "test-model")]["total_tokens"] == 18
    assert rows[("bob", "other-model")]["failures"] == 1

    # One answer, through the message admin's delete page.
    trimmed_answer = Message.objects.get(conversation=trimmed, role=Message.Role.ASSISTANT)
    response = client.post(reverse("admin:chat_message_delete", args=[trimmed_answer.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Message.objects.filter(pk=trimmed_answer.pk).exists()
    assert report(client) == before
    # Every conversation of Alice's, through the change list's delete action.
    response = client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "delete_selected", "_selected_action": [kept.pk, trimmed.pk], "post": "yes"},
    )
    assert response.status_code == 302 and not Conversation.objects.filter(owner=alice).exists()
    assert report(client) == before
    # Bob's account, with everything it owned.
    response = client.post(reverse("admin:auth_user_delete", args=[bob.pk]), {"post": "yes"})
    assert response.status_code == 302 and not get_user_model().objects.filter(username="bob").exists()
    assert report(client) == before
    assert UsageEntry.objects.get(username="bob").user is None
    assert limits.budget_status(alice)["used"] == 18
    # The ledger is a record in the admin too: nobody edits or deletes an entry.
    entry = UsageEntry.objects.filter(username="alice").first()
    assert client.get(reverse("admin:chat_usageentry_changelist")).status_code == 200
    assert client.get(reverse("admin:chat_usageentry_delete", args=[entry.pk])).status_code == 403
    assert client.post(reverse("admin:chat_usageentry_change", args=[entry.pk]), {"total_tokens": 0}).status_code == 403
    assert UsageEntry.objects.get(pk=entry.pk).total_tokens == entry.total_tokens


def test_the_page_disables_the_composer_once_the_budget_is_spent_whatever_was_deleted(client, alice, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 15
    conversation_with_answer(alice, tokens=(10, 4))
    client.force_login(alice)

    def composer():
        page = client.get(reverse("chat:home")).content.decode()
        textarea = re.search(r'<textarea id="message-input"[^>]*>', page).group(0)
        return page, " disabled" in textarea

    page, disabled = composer()
    assert "Today: 14 of 15 tokens used." in page and not disabled
    assert "You have used today's budget" not in page
    conversation_with_answer(alice, tokens=(1, 0))
    page, disabled = composer()
    assert disabled
    assert "You have used today's budget of 15 tokens; it resets at midnight (UTC)." in page
    assert '"exhausted": true' in page  # for the page's script, which keeps it up to date
    Conversation.objects.filter(owner=alice).delete()
    assert composer()[1], "deleting the conversations does not bring the budget back"
    with time_machine.travel(limits.start_of_today() + datetime.timedelta(days=1, seconds=1)):
        page, disabled = composer()
        assert "Today: 0 of 15 tokens used." in page and not disabled


# --- Answers without usage count by estimate ---------------------------------------------------


def ledger_entry(user, day, total, reserved, recorded=True):
    return UsageEntry.objects.create(
        user=user,
        username=user.username,
        message_id=uuid.uuid4(),
        day=day,
        total_tokens=total,
        reserved_tokens=reserved,
        recorded_at=timezone.now() if recorded else None,
    )


def test_the_days_figures_read_in_one_statement_are_the_ledgers_and_the_owners_limit(alice, bob, settings):
    """UsageEntryQuerySet.day_figures, written out in SQL for the answers' ends, says what the
    ORM's definitions say (AccountLimits.budget_of and the sums of the day's entries) for every mix: no entry, the
    site's budget, an override, unlimited, recorded and open entries, other days and other users."""
    settings.CHAT_DAILY_TOKEN_BUDGET = 5000
    today = timezone.localdate()

    def figures(user, day):
        totals = UsageEntry.objects.filter(user=user, day=day).aggregate(
            spent=Coalesce(Sum("total_tokens"), 0),
            reserved=Coalesce(Sum("reserved_tokens", filter=Q(recorded_at=None)), 0),
        )
        expected = (AccountLimits.budget_of(user.pk), totals["spent"], totals["reserved"])
        with CaptureQueriesContext(connection) as captured:
            found = UsageEntry.objects.filter(user=bob).day_figures(user.pk, day)
        assert len(captured.captured_queries) == 1
        assert found == expected
        return found

    assert figures(alice, today) == (5000, 0, 0)
    ledger_entry(alice, today, 30, 100)
    ledger_entry(alice, today, 0, 250, recorded=False)
    ledger_entry(alice, today - datetime.timedelta(days=1), 70, 90)
    ledger_entry(bob, today, 11, 400, recorded=False)
    assert figures(alice, today) == (5000, 30, 250)
    assert figures(alice, today - datetime.timedelta(days=1)) == (5000, 70, 0)
    assert figures(bob, today) == (5000, 11, 400)
    AccountLimits.objects.create(user=alice, daily_token_budget=0)  # unlimited
    assert figures(alice, today) == (0, 30, 250)
    AccountLimits.objects.filter(user=alice).update(daily_token_budget=120)
    assert figures(alice, today) == (120, 30, 250)
    assert figures(bob, today)[0] == 5000
    AccountLimits.objects.filter(user=alice).update(daily_token_budget=None)  # the site's again
    assert figures(alice, today + datetime.timedelta(days=1)) == (5000, 0, 0)
    assert limits.budget_status(alice) | {"resets_at": None, "zone": None} == {
        "used": 30,
        "reserved": 250,
        "budget": 5000,
        "exhausted": False,
        "resets_at": None,
        "zone": None,
    }


@pytest.mark.asyncio
async def test_a_stopped_answer_counts_its_input_and_streamed_text_as_an_estimate(alice, upstream, worker):
    upstream.queue(stream(*partial(["Some ", "words"]), Pause(30)))
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": QUESTION})
    frames = await receive_until(communicator, "message.delta")
    answer_id = next(
        f["message"]["id"] for f in frames if f["type"] == "message.created" and f["message"]["role"] == "assistant"
    )
    while "".join(f["delta"] for f in frames if f["type"] == "message.delta") != "Some words":
        frames.append(await receive(communicator))
    await communicator.send_json_to({"type": "chat.stop", "message": answer_id})
    done = (await receive_until(communicator, "message.done"))[-1]
    estimate = tokens_for(len(QUESTION)) + tokens_for(len("Some words"))
    assert (done["status"], done["usage"], done["estimated_tokens"]) == ("cancelled", None, estimate)
    assert done["budget"]["used"] == estimate

    entry = await entry_of(answer_id)
    assert (entry.status, entry.estimated, entry.recorded_at is not None) == ("cancelled", True, True)
    assert (entry.input_tokens, entry.output_tokens, entry.total_tokens) == (
        tokens_for(len(QUESTION)),
        tokens_for(len("Some words")),
        estimate,
    )
    row = await Message.objects.aget(pk=answer_id)
    assert (row.usage, row.estimated_tokens) == (None, estimate), "the upstream's figures stay its own"

    # Marked as an estimate in the admin: the message list and the usage report.
    web = await admin_client()
    messages = await web.get(reverse("admin:chat_message_changelist"), {"role__exact": "assistant"})
    assert messages.status_code == 200
    assert "estimated tokens" in messages.content.decode().lower()
    [listed] = messages.context["cl"].result_list
    assert listed.estimated_tokens == estimate
    usage = await web.get(reverse("admin:chat_usage_report"))
    [day] = usage.context["rows"]
    assert (day["total_tokens"], day["estimated_tokens"], usage.context["estimated_total"]) == (estimate,) * 3
    assert "Of which estimated" in usage.content.decode()
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ending", "status"),
    [
        ([Hangup()], "failed"),
        ([error_event("server_error", "Overloaded.", flat=True), finished("failed")], "failed"),
        ([finished("incomplete", incomplete_reason="max_output_tokens")], "incomplete"),
    ],
    ids=["hangup", "error-then-failed", "incomplete-without-usage"],
)
async def test_an_answer_that_ended_with_partial_text_and_no_usage_counts_it(alice, upstream, worker, ending, status):
    upstream.queue(stream(*partial(["Half ", "an answer"]), *ending))
    communicator, _, _ = await connect(alice)
    done = (await send_and_finish(communicator))[-1]
    assert (done["status"], done["text"], done["usage"]) == (status, "Half an answer", None)
    entry = await entry_of(done["message"])
    assert entry.estimated and entry.status == status
    assert (
        entry.total_tokens == tokens_for(len(QUESTION)) + tokens_for(len("Half an answer")) == done["estimated_tokens"]
    )
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_a_failed_answer_the_upstream_reported_usage_for_counts_that_exactly(alice, upstream, worker):
    upstream.queue(stream(*partial(["Half"]), finished("failed", usage=usage_object(40, 2))))
    communicator, _, _ = await connect(alice)
    done = (await send_and_finish(communicator))[-1]
    assert done["status"] == "failed" and done["usage"]["total_tokens"] == 42 and done["estimated_tokens"] is None
    entry = await entry_of(done["message"])
    assert (entry.total_tokens, entry.estimated) == (42, False)
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_an_answer_the_upstream_never_began_costs_nothing(alice, upstream, worker):
    upstream.queue([Status(401, b'{"error": {"message": "bad key"}}', {"Content-Type": "application/json"})])
    communicator, _, _ = await connect(alice)
    done = (await send_and_finish(communicator))[-1]
    assert done["status"] == "failed"
    entry = await entry_of(done["message"])
    assert (entry.total_tokens, entry.estimated, entry.status) == (0, False, "failed")
    assert entry.reserved_tokens > 0, "it was reserved while it might still have gone upstream"
    assert (await budget_of(alice))["used"] == 0
    await communicator.disconnect()


def test_the_reaper_records_what_interrupted_and_deleted_answers_spent(alice, settings):
    settings.CHAT_SENDS_PER_MINUTE = 0
    gone_process = uuid.uuid4()
    orphaned = Conversation.objects.create(owner=alice, title="orphaned", model="test-model")
    _, orphan = orphaned.start_exchange(QUESTION, worker_id=gone_process)
    Message.objects.filter(pk=orphan.pk).update(status="streaming", text="so far", first_token_at=timezone.now())
    deleted = Conversation.objects.create(owner=alice, title="deleted", model="test-model")
    _, lost = deleted.start_exchange("Never mind", worker_id=gone_process)
    deleted.delete()  # as deleting the user would, mid-answer: the answer's row is gone with it

    assert reap_orphans() == 1
    entry = UsageEntry.objects.get(message_id=orphan.pk)
    assert (entry.status, entry.estimated) == ("interrupted", True)
    assert entry.total_tokens == tokens_for(len(QUESTION)) + tokens_for(len("so far"))
    assert Message.objects.get(pk=orphan.pk).estimated_tokens == entry.total_tokens
    # The answer that vanished mid-way went upstream: its reservation stands as its cost.
    lost_entry = UsageEntry.objects.get(message_id=lost.pk)
    assert lost_entry.recorded_at is not None and lost_entry.estimated
    assert lost_entry.total_tokens == lost_entry.reserved_tokens == tokens_for(len("Never mind")) + 1000
    assert limits.budget_status(alice)["used"] == entry.total_tokens + lost_entry.total_tokens
    # Recording twice changes nothing.
    UsageEntry.objects.record(Message.objects.get(pk=orphan.pk))
    assert reap_orphans() == 0
    assert UsageEntry.objects.get(message_id=orphan.pk).total_tokens == entry.total_tokens


def long_question(number):
    head = f"Question {number}: "
    return head + "lorem ipsum dolor sit amet " * ((1200 - len(head)) // 27)


@pytest.mark.asyncio
async def test_a_long_chat_reserves_and_counts_the_input_it_sends_not_its_whole_path(alice, upstream, worker, settings):
    """Once a chat is longer than its model's context, its oldest turns are not sent: the
    reservation, and the cost of an answer without usage, hold the input sent, and a budget that
    the whole path would exceed still admits the next message."""
    settings.CHAT_SENDS_PER_MINUTE = 0
    settings.CHAT_MODEL_CONTEXT = {"test-model": 2048}
    settings.CHAT_ANSWER_ROOM_TOKENS = 4096  # a quarter of the context: 1,536 tokens of input
    communicator, _, _ = await connect(alice)
    conversation = None
    for number in range(1, 7):
        # One token each, counted exactly; no input count, so the fitting's rate stays the default.
        upstream.queue(answer(["Noted."], usage=usage_object(0, 1)))
        done = (await send_and_finish(communicator, long_question(number), conversation))[-1]
        assert done["status"] == "completed", done
        conversation = done["conversation"]
    whole_path = tokens_for(sum(len(long_question(number)) + len("Noted.") for number in range(1, 7)) + 1200)
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=whole_path - 200)

    upstream.queue(stream(*partial(["Half"]), Hangup()))
    done = (await send_and_finish(communicator, long_question(7), conversation))[-1]
    assert (done["status"], done["usage"]) == ("failed", None)
    assert done["context_start"] is not None, "the oldest turns were left out"
    entry = await entry_of(done["message"])
    row = await Message.objects.aget(pk=done["message"])
    assert entry.estimated_input_tokens == tokens_for(row.input_characters) < whole_path // 2
    assert entry.total_tokens == entry.estimated_input_tokens + tokens_for(len("Half")) and entry.estimated

    upstream.queue(answer(["Still here."]))
    done = (await send_and_finish(communicator, "And now?", conversation))[-1]
    assert (done["status"], done["text"]) == ("completed", "Still here."), "admitted: what was sent fits the budget"
    await communicator.disconnect()
    assert_no_groups_left()


# --- Racing sends ----------------------------------------------------------------------------


async def first_outcome(communicator):
    """The error refusing this socket's send, or the message.done of the answer it started."""
    while True:
        frame = await receive(communicator, timeout=20)
        if frame["type"] in ("error", "message.done"):
            return frame


@pytest.mark.asyncio
@pytest.mark.worker_threads(10)
@pytest.mark.parametrize("senders", [10, 24])
async def test_racing_sends_overspend_the_budget_by_at_most_one_answer(alice, upstream, worker, settings, senders):
    """Sends, edits and regenerations from many tabs at once: each reserves before it goes upstream."""
    settings.CHAT_SENDS_PER_MINUTE = 0
    # Each answer holds what it may write: without a limit of the model's the first would hold
    # the whole budget (tests/test_output_cap.py), with this one two answers share it.
    settings.CHAT_MAX_OUTPUT_TOKENS = 1000
    settings.CHAT_MAX_SOCKETS_PER_USER = senders
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=1500)
    earlier = []
    for number in range(senders):
        conversation = await database_sync_to_async(conversation_with_answer)(alice, f"earlier {number}", tokens=(0, 0))
        earlier.append([message async for message in Message.objects.filter(conversation=conversation)])
    frames = []
    for number, (question, earlier_answer) in enumerate(earlier):
        frames.append(
            [
                {"type": "chat.send", "conversation": None, "text": f"race {number}"},
                {"type": "chat.send", "conversation": str(question.conversation_id), "text": f"race {number}"},
                {"type": "chat.regenerate", "message": str(earlier_answer.id)},
                {"type": "chat.edit", "message": str(question.id), "text": f"race {number}"},
            ][number % 4]
        )
    upstream.queue(*[answer(["A thousand tokens"], usage=usage_object(500, 500), pause=0.2)] * senders)
    sockets = [(await connect(alice))[0] for _ in range(senders)]

    await asyncio.gather(*(socket.send_json_to(frame) for socket, frame in zip(sockets, frames, strict=True)))
    outcomes = await asyncio.gather(*(first_outcome(socket) for socket in sockets))

    answered = [outcome for outcome in outcomes if outcome["type"] == "message.done"]
    refused = [outcome for outcome in outcomes if outcome["type"] == "error"]
    assert {outcome["code"] for outcome in refused} == {"quota_exceeded"}
    # 0 + 0 is below 1500 and so is one reservation (~1000): two start, the third finds 2000 held.
    assert len(answered) == len(upstream.requests) == 2
    assert {outcome["status"] for outcome in answered} == {"completed"}
    spent = (await budget_of(alice))["used"]
    assert spent == 2000 <= 1500 + 1000
    for socket in sockets:
        await socket.disconnect()
    assert_no_groups_left()


def test_sends_on_many_database_connections_at_once_are_admitted_one_at_a_time(alice, settings):
    """Each thread has its own connection, as each server process has: the lock on the user's row
    (PostgreSQL) or the IMMEDIATE transaction (SQLite) lets one decide at a time."""
    settings.CHAT_SENDS_PER_MINUTE = 0
    settings.CHAT_MAX_OUTPUT_TOKENS = 1000  # two answers share the budget (see the test above)
    AccountLimits.objects.create(user=alice, daily_token_budget=1500)
    threads, start, outcomes = 12, threading.Barrier(12), []

    def send(number):
        try:
            start.wait()
            Conversation.objects.send(alice, None, f"race {number}")
            outcomes.append("admitted")
        except BudgetSpent:
            outcomes.append("refused")
        finally:
            close_old_connections()
            connection.close()

    workers = [threading.Thread(target=send, args=(number,)) for number in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert sorted(outcomes) == ["admitted"] * 2 + ["refused"] * (threads - 2)
    assert Message.objects.filter(role="assistant").count() == UsageEntry.objects.count() == 2
    assert limits.budget_status(alice)["reserved"] == sum(UsageEntry.objects.values_list("reserved_tokens", flat=True))


# --- The send rate is a sliding window ---------------------------------------------------------


@pytest.mark.asyncio
async def test_the_send_rate_slides_across_the_minute_boundary(alice, upstream, worker, settings):
    settings.CHAT_SENDS_PER_MINUTE = 3
    # Half a second before a minute starts; the clock stands still unless the test moves it.
    start = (timezone.now() + datetime.timedelta(minutes=1)).replace(second=59, microsecond=500_000)
    with time_machine.travel(start, tick=False) as clock:
        communicator, _, _ = await connect(alice)
        conversation = None
        for number in range(3):
            frames = await send_and_finish(communicator, f"q{number}", conversation)
            assert frames[-1]["status"] == "completed"
            conversation = frames[-1]["conversation"]

        async def attempt():
            await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "one more"})
            frame = await receive(communicator)
            if frame["type"] == "error":
                return frame
            await receive_until(communicator, "message.done")
            return frame

        clock.move_to(start + datetime.timedelta(seconds=1))  # a new minute: a fixed window would reset
        refused = await attempt()
        assert (refused["code"], refused["message"]) == (
            "rate_limited",
            "You are sending messages too fast: wait 59 seconds.",
        )
        clock.move_to(start + datetime.timedelta(seconds=59.9))
        assert (await attempt())["message"] == "You are sending messages too fast: wait 1 second."
        # An edit and a regeneration are sends too.
        answer_id = frames[-1]["message"]
        await communicator.send_json_to({"type": "chat.regenerate", "message": answer_id})
        assert (await receive(communicator))["code"] == "rate_limited"

        clock.move_to(start + datetime.timedelta(seconds=60))  # the three leave the window together
        for _ in range(3):
            assert (await attempt())["type"] == "conversation.created"
        assert (await attempt())["code"] == "rate_limited", "the refused attempts did not count"
        await communicator.disconnect()
    assert len(upstream.requests) == 6


def test_the_send_rate_window_holds_across_connections(alice, settings):
    """The window is the ledger's own entries, read under the same lock: any process sees them."""
    settings.CHAT_SENDS_PER_MINUTE = 2
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for number in range(2):
            Conversation.objects.send(alice, None, f"q{number}")
        outcome = []

        def another():
            try:
                Conversation.objects.send(alice, None, "from elsewhere")
                outcome.append("admitted")
            except SendRateExceeded as refusal:
                outcome.append(refusal)
            finally:
                connection.close()

        thread = threading.Thread(target=another)
        thread.start()
        thread.join(30)
        assert [type(error).__name__ for error in outcome] == ["SendRateExceeded"]
        assert outcome[0].wait == 60
        clock.shift(30)
        with pytest.raises(SendRateExceeded, match="wait 30 seconds"):
            Conversation.objects.send(alice, None, "still too soon")
        clock.shift(30)
        Conversation.objects.send(alice, None, "a minute later")


# --- The migration fills the ledger from the answers stored before it ---------------------------


def test_the_migration_fills_the_ledger_so_that_the_report_reads_the_same():
    executor = MigrationExecutor(connection)
    # After: the latest schema, which the report's own queries expect.
    before, after = [("chat", "0003_versions")], executor.loader.graph.leaf_nodes("chat")
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        User_ = old.get_model("auth", "User")
        Conversation_ = old.get_model("chat", "Conversation")
        Message_ = old.get_model("chat", "Message")
        yesterday = timezone.now() - datetime.timedelta(days=1)
        for name, tokens, status, created_at in [
            ("ann", (10, 5), "completed", yesterday),
            ("ann", (None, None), "cancelled", yesterday),
            ("ann", (3, 0), "failed", timezone.now()),
            ("ben", (7, 7), "completed", timezone.now()),
            ("ben", (None, None), "streaming", timezone.now()),
        ]:
            owner, _ = User_.objects.get_or_create(username=name)
            conversation = Conversation_.objects.create(owner=owner, title="old", model="test-model")
            Message_.objects.create(conversation=conversation, role="user", text="hi", created_at=created_at)
            input_tokens, output_tokens = tokens
            Message_.objects.create(
                conversation=conversation,
                role="assistant",
                text="hello",
                status=status,
                model="test-model",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                total_tokens=None if input_tokens is None else input_tokens + output_tokens,
                created_at=created_at,
                finished_at=None if status == "streaming" else created_at,
            )

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        today = timezone.localdate()
        rows, totals, estimated = usage_rows(today - datetime.timedelta(days=6), today)
        figures = {(row["day"], row["username"]): row for row in rows}
        assert figures[(today - datetime.timedelta(days=1), "ann")] | {"day": None} == {
            "day": None,
            "username": "ann",
            "model": "test-model",
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "answers": 2,
            "failures": 0,
            "estimated_tokens": 0,
        }
        assert figures[(today, "ann")]["failures"] == 1
        assert (figures[(today, "ben")]["answers"], figures[(today, "ben")]["total_tokens"]) == (2, 14)
        assert totals == {"input_tokens": 20, "output_tokens": 12, "total_tokens": 32, "answers": 5, "failures": 1}
        assert estimated == 0, "history is not estimated afresh"
        # The answer still being written has an open entry, recorded when it ends.
        streaming = Message.objects.get(status="streaming")
        assert UsageEntry.objects.get(message_id=streaming.pk).recorded_at is None
        Message.objects.filter(pk=streaming.pk).update(status="interrupted", finished_at=timezone.now())
        UsageEntry.objects.record_ended()
        assert UsageEntry.objects.get(message_id=streaming.pk).recorded_at is not None

        executor = MigrationExecutor(connection)
        executor.migrate(before)  # reversible: the ledger goes, the answers stay
        assert old.get_model("chat", "Message").objects.filter(role="assistant").count() == 5
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("chat"))
