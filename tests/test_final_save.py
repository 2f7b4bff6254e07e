"""An answer's end (the final save and its message.done frame): what it writes, and that it costs
a fixed number of statements, as the answer thread runs it once for every answer."""

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import protocol
from chat.models import Conversation, Message, UsageEntry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def models_offered(settings):
    settings.OPENRESPONSES_API_KEY = "sk-test"
    settings.OPENRESPONSES_MODELS = ["test-model"]
    settings.CHAT_DAILY_TOKEN_BUDGET = 10**6
    settings.CHAT_SENDS_PER_MINUTE = 1000


def streaming_answer(owner, text="hi"):
    stored = Conversation.objects.send(owner, None, text, client_id=f"c-{text}")
    assert Message.objects.claim(stored.answer, uuid.uuid4(), stored.answer_input.fitted())
    return Message.objects.select_related("conversation").get(pk=stored.answer)


def end(answer_id, **outcome):
    message = Message.objects.finish_answer(
        answer_id,
        status=Message.Status.COMPLETED,
        text="Flowing water.",
        finished_at=timezone.now(),
        **outcome,
    )
    return message, json.loads(protocol.done_event(message)["frame"])


def statements_of(action):
    with CaptureQueriesContext(connection) as captured:
        result = action()
    return result, [query["sql"] for query in captured.captured_queries]


# Every statement of an answer's end, the transaction's own two included (here a savepoint and
# its release, as the test runs in a transaction): the final UPDATE, the row read back, the
# ledger's UPDATE, then the owner's budget for message.done (their limit and today's spending,
# one statement: UsageEntryQuerySet.day_figures).
# Before: 11 and 12 (the ledger's savepoint, its entry read first, the owner read again), then 7
# and 9 (the limit and the spending apart).
END_STATEMENTS = {"reported": 6, "estimated": 8}
USAGE = {"reported": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}, "estimated": {}}


@pytest.mark.parametrize("usage", ["reported", "estimated"])
def test_an_answers_end_costs_a_fixed_number_of_statements_and_records_its_spending(alice, usage):
    earlier = streaming_answer(alice, "earlier")
    end(earlier.id, **USAGE["reported"])
    answer = streaming_answer(alice)
    (message, frame), statements = statements_of(lambda: end(answer.id, **USAGE[usage]))
    assert len(statements) == END_STATEMENTS[usage], statements
    entry = UsageEntry.objects.get(message_id=answer.id)
    assert entry.recorded_at is not None and entry.status == Message.Status.COMPLETED
    assert entry.model == "test-model"
    if usage == "reported":
        assert (entry.input_tokens, entry.output_tokens, entry.total_tokens, entry.estimated) == (5, 3, 8, False)
    else:
        assert entry.estimated and entry.total_tokens == message.estimated_tokens > 0
        assert Message.objects.get(pk=answer.id).estimated_tokens == entry.total_tokens
    # The frame's budget is the owner's, the two answers spent, as read apart from the end.
    assert frame["budget"] == UsageEntry.objects.budget_status(alice.pk)
    assert frame["budget"]["used"] == 8 + entry.total_tokens and frame["budget"]["reserved"] == 0
    # Read without its conversation, the message says the same (one statement more).
    alone = Message.objects.get(pk=answer.id)
    assert json.loads(protocol.done_event(alone)["frame"])["budget"] == frame["budget"]


def test_an_end_is_recorded_once_whatever_path_records_it_again(alice):
    answer = streaming_answer(alice)
    message, _ = end(answer.id, **USAGE["reported"])
    recorded = UsageEntry.objects.get(message_id=answer.id)
    ended_again = Message.objects.finish_answer(answer.id, status=Message.Status.FAILED, total_tokens=99)
    assert ended_again is None  # ended already: nothing written
    message.total_tokens, message.status = 50, Message.Status.FAILED
    UsageEntry.objects.record(message)  # the reaper's path, again
    again = UsageEntry.objects.get(message_id=answer.id)
    assert (again.total_tokens, again.status, again.recorded_at) == (8, recorded.status, recorded.recorded_at)


def test_a_reported_end_without_an_entry_opens_one_and_keeps_the_entrys_model(alice):
    answer = streaming_answer(alice)
    UsageEntry.objects.filter(message_id=answer.id).delete()  # stored before the ledger existed
    end(answer.id, **USAGE["reported"])
    entry = UsageEntry.objects.get(message_id=answer.id)
    assert (entry.total_tokens, entry.user_id, entry.recorded_at is not None) == (8, alice.pk, True)
    # An upstream that names no model leaves the one the entry was reserved for.
    other = streaming_answer(alice, "other")
    Message.objects.filter(pk=other.id).update(model="")
    UsageEntry.objects.filter(message_id=other.id).update(model="reserved-model")
    end(other.id, **USAGE["reported"])
    assert UsageEntry.objects.get(message_id=other.id).model == "reserved-model"
