"""Feedback on answers through real HTTP: the owner rates, staff filter, read and count it."""

import json

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import AuditEvent, Conversation, Message, UsageEntry
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def answer_of(conversation):
    return conversation.messages.get(role=Message.Role.ASSISTANT)


def rate(client, message, body, **extra):
    return client.post(
        reverse("chat:feedback", args=[message.id]),
        json.dumps(body) if not isinstance(body, bytes) else body,
        content_type="application/json",
        **extra,
    )


def test_the_owner_rates_an_answer_and_changes_the_rating(alice_client, alice):
    answer = answer_of(conversation_with_answer(alice))
    response = rate(alice_client, answer, {"rating": "good", "comment": "  Clear and short. "})
    assert response.status_code == 200
    stored = response.json()["feedback"]
    assert (stored["rating"], stored["comment"]) == ("good", "Clear and short.")
    answer.refresh_from_db()
    assert (answer.feedback, answer.feedback_comment) == ("good", "Clear and short.")
    assert answer.feedback_at is not None
    assert UsageEntry.objects.get(message_id=answer.id).feedback == "good"

    response = rate(alice_client, answer, {"rating": "bad", "comment": "Wrong after all."})
    assert response.json()["feedback"]["rating"] == "bad"
    answer.refresh_from_db()
    assert (answer.feedback, answer.feedback_comment) == ("bad", "Wrong after all.")
    assert UsageEntry.objects.get(message_id=answer.id).feedback == "bad"

    response = rate(alice_client, answer, {"rating": None})
    assert response.json() == {"feedback": None}
    answer.refresh_from_db()
    assert (answer.feedback, answer.feedback_comment, answer.feedback_at) == ("", "", None)
    assert UsageEntry.objects.get(message_id=answer.id).feedback == ""


def test_the_page_carries_the_stored_feedback(alice_client, alice):
    conversation = conversation_with_answer(alice)
    rate(alice_client, answer_of(conversation), {"rating": "bad", "comment": "Too vague"})
    page = alice_client.get(reverse("chat:conversation", args=[conversation.id]))
    data = page.context["page_data"]["messages"]
    assert data[0]["feedback"] is None
    assert (data[1]["feedback"]["rating"], data[1]["feedback"]["comment"]) == ("bad", "Too vague")


@pytest.mark.parametrize(
    "body",
    [
        {"rating": "great"},
        {"rating": 1},
        {"rating": ["good"]},
        {"rating": "good", "comment": "x" * 2001},
        {"rating": "good", "comment": ["a list"]},
        ["good"],
        "good",
        b"{not json",
        b"\xff\xfe",
    ],
    ids=str,
)
def test_malformed_feedback_is_refused_and_changes_nothing(alice_client, alice, body):
    answer = answer_of(conversation_with_answer(alice))
    rate(alice_client, answer, {"rating": "good", "comment": "kept"})
    response = rate(alice_client, answer, body)
    assert response.status_code == 400
    assert "error" in response.json()
    answer.refresh_from_db()
    assert (answer.feedback, answer.feedback_comment) == ("good", "kept")


def test_only_finished_answers_are_rated(alice_client, alice):
    streaming = conversation_with_answer(alice, status=Message.Status.STREAMING)
    assert rate(alice_client, answer_of(streaming), {"rating": "good"}).status_code == 400
    question = streaming.messages.get(role=Message.Role.USER)
    assert rate(alice_client, question, {"rating": "good"}).status_code == 400
    failed = conversation_with_answer(alice, status=Message.Status.FAILED)
    assert rate(alice_client, answer_of(failed), {"rating": "bad"}).status_code == 200
    assert list(Message.objects.exclude(feedback="").values_list("status", flat=True)) == ["failed"]


def test_another_users_or_an_unknown_message_is_a_404(client, alice, bob):
    answer = answer_of(conversation_with_answer(alice))
    client.force_login(bob)
    foreign = client.post(reverse("chat:feedback", args=[answer.id]), "{}", content_type="application/json")
    missing = client.post(reverse("chat:feedback", args=[UNKNOWN]), "{}", content_type="application/json")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content.replace(UNKNOWN.encode(), str(answer.id).encode())
    answer.refresh_from_db()
    assert answer.feedback == ""


def test_feedback_needs_a_login_the_csrf_token_and_a_post(client, alice):
    answer = answer_of(conversation_with_answer(alice))
    assert rate(client, answer, {"rating": "good"}).status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert rate(strict, answer, {"rating": "good"}).status_code == 403
    strict.get(reverse("chat:home"))
    assert strict.get(reverse("chat:feedback", args=[answer.id])).status_code == 405
    answer.refresh_from_db()
    assert answer.feedback == ""
    token = strict.cookies["csrftoken"].value
    assert rate(strict, answer, {"rating": "good"}, headers={"X-CSRFToken": token}).status_code == 200


# --- The admin ----------------------------------------------------------------------------------


@pytest.fixture
def rated(alice, bob):
    """Three conversations: one answer rated bad, one rated good, one not rated."""
    bad = conversation_with_answer(alice, "Bad one", "A wrong answer.")
    answer_of(bad).give_feedback("bad", "It made up a function.")
    good = conversation_with_answer(bob, "Good one", "A right answer.", model="other-model")
    answer_of(good).give_feedback("good")
    plain = conversation_with_answer(alice, "Plain one", "Unrated.")
    return bad, good, plain


def test_the_admin_filters_conversations_by_feedback_audited(client, reviewer, rated):
    bad, good, plain = rated
    client.force_login(reviewer)
    url = reverse("admin:chat_conversation_changelist")
    for value, expected in (("bad", [bad]), ("good", [good]), ("any", [bad, good]), (None, [bad, good, plain])):
        response = client.get(url, {"feedback": value} if value else {})
        assert response.status_code == 200
        assert {item.pk for item in response.context["cl"].result_list} == {item.pk for item in expected}
    events = AuditEvent.objects.order_by("at")
    assert [event.query for event in events] == ["feedback=bad", "feedback=good", "feedback=any", ""]
    assert events[0].shown == [str(bad.pk)]


def test_the_admin_filters_messages_by_feedback(client, reviewer, rated):
    bad, good, _ = rated
    client.force_login(reviewer)
    url = reverse("admin:chat_message_changelist")
    response = client.get(url, {"feedback__exact": "bad"})
    assert [message.pk for message in response.context["cl"].result_list] == [answer_of(bad).pk]
    assert AuditEvent.objects.get().shown == [str(bad.pk)]
    response = client.get(url, {"feedback__exact": "good"})
    assert [message.pk for message in response.context["cl"].result_list] == [answer_of(good).pk]
    # The comment is the owner's words: not a lookup to probe them through.
    assert client.get(url, {"feedback_comment__startswith": "I"}).status_code == 400
    assert client.get(url, {"feedback_comment__icontains": "made"}).status_code == 400


def test_the_transcript_shows_the_feedback(client, reviewer, rated):
    bad = rated[0]
    client.force_login(reviewer)
    page = client.get(reverse("admin:chat_conversation_change", args=[bad.pk])).content.decode()
    assert "Rated bad by its owner" in page
    assert "Feedback: It made up a function." in page
    assert AuditEvent.objects.get().action == "viewed"


def test_the_usage_report_counts_ratings_per_model_and_day_and_keeps_them(client, reviewer, rated):
    bad, good, _ = rated
    client.force_login(reviewer)

    def report():
        response = client.get(reverse("admin:chat_usage_report"))
        assert response.status_code == 200
        rows = {(row["username"], row["model"]): row for row in response.context["rows"]}
        return rows, response.context["rated_totals"], response.content.decode()

    rows, totals, page = report()
    assert (rows[("alice", "test-model")]["rated_good"], rows[("alice", "test-model")]["rated_bad"]) == (0, 1)
    assert (rows[("bob", "other-model")]["rated_good"], rows[("bob", "other-model")]["rated_bad"]) == (1, 0)
    assert totals == {"rated_good": 1, "rated_bad": 1}
    assert "Rated good" in page and "Rated bad" in page
    Conversation.objects.filter(pk__in=[bad.pk, good.pk]).delete()
    assert report()[1] == {"rated_good": 1, "rated_bad": 1}, "deleting conversations changes no count"
