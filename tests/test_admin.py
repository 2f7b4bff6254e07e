import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chat.models import AccountLimits, AuditEvent, Message
from tests.conftest import make_user
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db


@pytest.fixture
def clerk(db):
    """Staff without any permission on chats."""
    return make_user("clerk", is_staff=True)


def test_the_conversation_list_shows_counts_tokens_and_last_status_in_constant_queries(client, superuser, alice, bob):
    for number in range(3):
        conversation_with_answer(alice, f"alice question {number}")
    conversation_with_answer(bob, "bob question", status=Message.Status.FAILED, tokens=(4, 0))
    client.force_login(superuser)
    url = reverse("admin:chat_conversation_changelist")
    with CaptureQueriesContext(connection) as few:
        response = client.get(url)
    assert response.status_code == 200
    for number in range(10):
        conversation_with_answer(alice, f"more {number}")
    with CaptureQueriesContext(connection) as many:
        response = client.get(url)
    assert len(many) == len(few), "no query per row"
    page = response.content.decode()
    assert "alice question 0" in page and "bob question" in page
    row = next(line for line in response.context["cl"].result_list if line.title == "bob question")
    assert (row.message_count, row.total_tokens, row.last_status) == (2, 4, "failed")


def test_the_list_filters_by_last_status_and_searches_message_text(client, superuser, alice):
    conversation_with_answer(alice, "about rivers", answer="Water flows downhill.")
    conversation_with_answer(alice, "about stones", status=Message.Status.FAILED)
    client.force_login(superuser)
    url = reverse("admin:chat_conversation_changelist")
    titles = lambda response: sorted(c.title for c in response.context["cl"].result_list)  # noqa: E731
    assert titles(client.get(url, {"last_status": "failed"})) == ["about stones"]
    found = client.get(url, {"q": "downhill"})
    assert titles(found) == ["about rivers"]
    # Searching message text must not inflate the per-conversation figures.
    assert found.context["cl"].result_list[0].message_count == 2


def test_reading_a_transcript_shows_every_message_and_is_audited(client, reviewer, alice):
    conversation = conversation_with_answer(
        alice, "question <b>bold</b>", answer="answer <script>alert(1)</script>", reasoning="thinking hard"
    )
    client.force_login(reviewer)
    response = client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "question &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "thinking hard" in page
    assert 'name="_save"' not in page, "transcripts are read-only"
    event = AuditEvent.objects.get()
    assert (event.staff, event.action, event.conversation, event.conversation_owner) == (
        reviewer,
        "viewed",
        conversation,
        "alice",
    )


def test_transcripts_cannot_be_changed_added_or_deleted_without_permission(client, reviewer, alice):
    conversation = conversation_with_answer(alice)
    client.force_login(reviewer)
    change = reverse("admin:chat_conversation_change", args=[conversation.pk])
    response = client.post(change, {"title": "rewritten"})
    assert response.status_code == 403
    assert client.get(reverse("admin:chat_conversation_add")).status_code == 403
    assert (
        client.post(reverse("admin:chat_conversation_delete", args=[conversation.pk]), {"post": "yes"}).status_code
        == 403
    )
    conversation.refresh_from_db()
    assert conversation.title != "rewritten"


def test_staff_without_permission_see_no_transcripts(client, clerk, alice):
    conversation = conversation_with_answer(alice)
    client.force_login(clerk)
    assert client.get(reverse("admin:chat_conversation_changelist")).status_code == 403
    assert client.get(reverse("admin:chat_conversation_change", args=[conversation.pk])).status_code == 403
    assert client.get(reverse("admin:chat_message_changelist")).status_code == 403
    assert client.get(reverse("admin:chat_usage_report")).status_code == 403
    assert not AuditEvent.objects.exists()


def test_a_setting_turns_off_transcript_access_even_for_superusers(client, superuser, alice, settings):
    settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS = False
    conversation = conversation_with_answer(alice)
    client.force_login(superuser)
    assert client.get(reverse("admin:chat_conversation_change", args=[conversation.pk])).status_code == 403
    assert client.get(reverse("admin:chat_message_changelist")).status_code == 403
    assert client.get(reverse("admin:chat_usage_report")).status_code == 200


def test_exports_are_json_and_markdown_and_audited(client, reviewer, alice, bob):
    first = conversation_with_answer(alice, "first question", answer="**bold** answer")
    second = conversation_with_answer(
        bob,
        "second question",
        status=Message.Status.FAILED,
        error_code="http_500",
        error_message="The API had an internal error.",
    )
    client.force_login(reviewer)
    url = reverse("admin:chat_conversation_changelist")
    selected = [str(first.pk), str(second.pk)]
    response = client.post(url, {"action": "export_json", "_selected_action": selected})
    assert response["Content-Disposition"].startswith("attachment;")
    data = json.loads(response.content)
    by_title = {conversation["title"]: conversation for conversation in data["conversations"]}
    assert by_title["first question"]["owner"] == "alice"
    assert [m["role"] for m in by_title["first question"]["messages"]] == ["user", "assistant"]
    assert by_title["first question"]["messages"][1]["total_tokens"] == 15
    assert by_title["second question"]["messages"][1]["error_message"] == "The API had an internal error."

    response = client.post(url, {"action": "export_markdown", "_selected_action": selected})
    markdown = response.content.decode()
    assert "# first question" in markdown and "## User" in markdown and "**bold** answer" in markdown
    assert "**Error (http_500):** The API had an internal error." in markdown
    exports = AuditEvent.objects.filter(action="exported")
    assert sorted(exports.values_list("conversation_title", "detail")) == [
        ("first question", "json, admin action"),
        ("first question", "markdown, admin action"),
        ("second question", "json, admin action"),
        ("second question", "markdown, admin action"),
    ]


def test_the_audit_trail_is_for_superusers_only_and_read_only(client, superuser, reviewer, alice):
    conversation = conversation_with_answer(alice)
    client.force_login(reviewer)
    client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    assert client.get(reverse("admin:chat_auditevent_changelist")).status_code == 403
    client.force_login(superuser)
    response = client.get(reverse("admin:chat_auditevent_changelist"), {"action__exact": "viewed"})
    assert response.status_code == 200
    assert "reviewer" in response.content.decode()
    event = AuditEvent.objects.get(staff=reviewer)
    assert client.post(reverse("admin:chat_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    page = client.get(reverse("admin:chat_conversation_change", args=[conversation.pk])).content.decode()
    assert "Read by" in page and "reviewer viewed" in page


def test_the_message_list_finds_failures_by_owner(client, superuser, alice, bob):
    conversation_with_answer(alice, status=Message.Status.FAILED)
    conversation_with_answer(bob)
    client.force_login(superuser)
    response = client.get(
        reverse("admin:chat_message_changelist"),
        {"status__exact": "failed", "conversation__owner__id__exact": alice.pk},
    )
    assert response.status_code == 200
    assert [message.status for message in response.context["cl"].result_list] == ["failed"]


def test_the_usage_report_sums_per_day_user_and_model_with_totals(client, reviewer, alice, bob):
    conversation_with_answer(alice, tokens=(10, 5))
    conversation_with_answer(alice, tokens=(1, 2))
    conversation_with_answer(bob, model="other-model", tokens=(3, 0), status=Message.Status.FAILED)
    client.force_login(reviewer)
    response = client.get(reverse("admin:chat_usage_report"))
    assert response.status_code == 200
    rows = {(row["username"], row["model"]): row for row in response.context["rows"]}
    assert rows[("alice", "test-model")]["input_tokens"] == 11
    assert rows[("alice", "test-model")]["output_tokens"] == 7
    assert rows[("alice", "test-model")]["answers"] == 2
    assert rows[("bob", "other-model")]["failures"] == 1
    assert response.context["totals"] == {
        "input_tokens": 14,
        "output_tokens": 7,
        "total_tokens": 21,
        "answers": 3,
        "failures": 1,
    }
    bad = client.get(reverse("admin:chat_usage_report"), {"start": "2026-05-02", "end": "2026-05-01"})
    assert "The start of the range is after its end." in bad.content.decode()


def test_a_daily_budget_override_is_set_on_the_user_page(client, superuser, alice):
    client.force_login(superuser)
    page = client.get(reverse("admin:auth_user_change", args=[alice.pk])).content.decode()
    assert "daily_token_budget" in page
    AccountLimits.objects.create(user=alice, daily_token_budget=500)
    assert alice.chat_limits.daily_token_budget == 500
