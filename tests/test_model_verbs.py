"""The model layer's verbs, one per client action (send, regenerate, edit, select): idempotency,
lock, tree and write, returning frames and never model instances. Database, no server."""

import dataclasses
import json

import pytest

from chat.models import Conversation, ConversationBusy, Message, WrongMessage
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def models_offered(settings):
    settings.OPENRESPONSES_API_KEY = "sk-test"
    settings.OPENRESPONSES_MODELS = ["test-model", "other-model"]


def created_messages(stored):
    return [json.loads(event["frame"])["message"] for event in stored.created]


def assert_only_values(stored):
    """What crosses to the event loop is plain data: it survives a trip through JSON."""
    data = {**dataclasses.asdict(stored), "created": list(stored.created)}
    assert json.loads(json.dumps(data)) == data


def test_a_send_starts_a_conversation_and_answers_with_its_frames(alice):
    stored = Conversation.objects.send(alice, None, "What is a river?", client_id="c1")
    assert_only_values(stored)
    conversation = Conversation.objects.get()
    assert stored.conversation_id == str(conversation.id) and stored.group == conversation.group_name
    assert stored.created_conversation == conversation.as_frame()
    question, answer = created_messages(stored)
    assert (question["role"], question["text"], answer["role"], answer["status"]) == (
        "user",
        "What is a river?",
        "assistant",
        "queued",
    )
    assert answer["parent"] == question["id"] and stored.answer == answer["id"]
    assert question["versions"] == {"index": 0, "count": 1, "ids": [question["id"]]}
    assert answer["versions"] == {"index": 0, "count": 1, "ids": [answer["id"]]}


def test_a_retried_frame_is_answered_with_what_the_first_stored_and_stores_nothing(alice):
    first = Conversation.objects.send(alice, None, "Hello", client_id="same")
    Message.objects.filter(role="assistant").update(status=Message.Status.COMPLETED)
    again = Conversation.objects.send(alice, None, "Hello", client_id="same")
    assert again.answer is None and again.created_conversation is None
    assert [message["id"] for message in created_messages(again)] == [m["id"] for m in created_messages(first)]
    assert Message.objects.count() == 2
    # The client id is the user's: any verb retried with it finds the same messages.
    answer_id = created_messages(first)[1]["id"]
    assert Conversation.objects.regenerate(alice, answer_id, client_id="same").answer is None
    assert Message.objects.count() == 2


def test_a_send_to_an_unknown_or_foreign_conversation_or_parent_is_refused(alice, bob):
    theirs = conversation_with_answer(bob)
    with pytest.raises(Conversation.DoesNotExist):
        Conversation.objects.send(alice, theirs.id, "mine now?")
    mine = conversation_with_answer(alice)
    question = mine.messages.get(role="user")
    with pytest.raises(Message.DoesNotExist):
        Conversation.objects.send(alice, mine.id, "after a question?", parent_id=question.id)
    assert Message.objects.count() == 4


def test_regenerate_adds_a_version_beside_the_answer(alice):
    conversation = conversation_with_answer(alice)
    earlier = conversation.messages.get(role="assistant")
    stored = Conversation.objects.regenerate(alice, earlier.id, model="other-model", client_id="r")
    assert_only_values(stored)
    [later] = created_messages(stored)
    assert later["versions"] == {"index": 1, "count": 2, "ids": [str(earlier.id), later["id"]]}
    assert later["model"] == "other-model" and later["parent"] == str(earlier.parent_id)
    with pytest.raises(ConversationBusy):  # the new version is still queued
        Conversation.objects.regenerate(alice, earlier.id)
    with pytest.raises(WrongMessage, match="Only answers"):
        Conversation.objects.regenerate(alice, earlier.parent_id)


def test_edit_adds_a_version_of_the_question_and_its_answer(alice, bob):
    conversation = conversation_with_answer(alice)
    question = conversation.messages.get(role="user")
    stored = Conversation.objects.edit(alice, question.id, "What is a lake?")
    edited, answer = created_messages(stored)
    assert edited["versions"]["ids"] == [str(question.id), edited["id"]] and edited["text"] == "What is a lake?"
    assert answer["parent"] == edited["id"] and stored.answer == answer["id"]
    with pytest.raises(WrongMessage, match="Only your own messages"):
        Conversation.objects.edit(alice, conversation.messages.filter(role="assistant").first().id, "x")
    with pytest.raises(Message.DoesNotExist):
        Conversation.objects.edit(bob, question.id, "not yours")


def test_select_moves_the_path_and_answers_its_frame(alice):
    conversation = conversation_with_answer(alice, "one", "ONE")
    earlier = conversation.current
    [later] = conversation.regenerate(earlier)
    Message.objects.filter(pk=later.pk).update(status=Message.Status.COMPLETED)
    frame = Conversation.objects.select(alice, earlier.id)
    assert frame["type"] == "conversation.path" and frame["conversation"] == str(conversation.id)
    assert [message["id"] for message in frame["messages"]] == [str(earlier.parent_id), str(earlier.id)]
    assert frame["messages"][1]["versions"] == {"index": 0, "count": 2, "ids": [str(earlier.id), str(later.id)]}
    conversation.refresh_from_db()
    assert conversation.current_id == earlier.id


def test_locate_says_where_a_frame_acts_and_refuses_another_users(alice, bob):
    conversation = conversation_with_answer(alice)
    answer = conversation.messages.get(role="assistant")
    located = Message.objects.locate(alice, answer.id, Message.Role.ASSISTANT)
    assert located == Conversation.objects.locate(alice, conversation.id)
    assert (located.conversation, located.group, located.model) == (
        str(conversation.id),
        conversation.group_name,
        "test-model",
    )
    with pytest.raises(Message.DoesNotExist):
        Message.objects.locate(bob, answer.id)
    with pytest.raises(Conversation.DoesNotExist):
        Conversation.objects.locate(bob, conversation.id)


def test_frames_never_query_and_a_path_reads_in_one_query_however_long(alice, django_assert_num_queries):
    conversation = conversation_with_answer(alice)
    for number in range(5):
        conversation.start_exchange(f"more {number}")
    conversation.refresh_from_db()
    tree = conversation.tree()
    with django_assert_num_queries(1):
        tree = conversation.tree()
        list(tree.messages)
    with django_assert_num_queries(0):
        frames = tree.frames(conversation.current_path(tree))
    assert len(frames) == 12
    with django_assert_num_queries(1):
        assert conversation.path_frames() == frames


# Statements of one verb, every kind counted (the send path runs them for every chat.send, on the
# runtime's database pool): a change that adds one fails here, and says which it added.
# The transaction's own two (here a savepoint and its release, as the test runs in a transaction)
# included. Before the savepoints of the nested atomics and the deferred conversation_id of the
# versions' rows were cut: 22, 21, 22 and 23; then 16, 15, 16 and 16, before the output cap,
# Continue and attachments joined the send path (one more each; an edit also reads the
# attachments it keeps): 17, 16, 17 and 18; then the reservation's estimate stopped reading the
# path again (AnswerInput, built from the rows the verb read): 16, 15, 16, 17 (and 19 for a
# continue). Then each verb read the owner's limits in one statement after the owner's lock
# (UsageEntryQuerySet.admit: the replay check, the send rate, the budget and spending, a new
# conversation's instructions) and the conversation's tree once, under the conversation's lock,
# for the busy check, the message acted on, the path and the versions' rows (locked_with_tree):
# BEGIN, the owner's lock, its read, [the conversation's lock, its tree], the INSERTs of the
# messages, the conversation's UPDATE, the ledger's INSERT, COMMIT.
SEND_STATEMENTS = {"new": 9, "existing": 10, "regenerate": 9, "edit": 10, "continue": 9}


def statements_of(action):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        action()
    return [query["sql"] for query in captured.captured_queries]


@pytest.mark.parametrize("history", [0, 10])
def test_a_send_costs_a_fixed_number_of_statements_however_long_the_conversation(alice, settings, history):
    settings.CHAT_SENDS_PER_MINUTE = 1000  # the send rate and the budget are checked, as in production
    settings.CHAT_DAILY_TOKEN_BUDGET = 10**9
    settings.CHAT_MAX_OUTPUT_TOKENS = 1000  # answers share the budget rather than each holding all of its rest
    conversation = conversation_with_answer(alice)
    for number in range(history):
        _, answer = conversation.start_exchange(f"more {number}")
        Message.objects.filter(pk=answer.pk).update(status=Message.Status.COMPLETED, text="fine")
        conversation.refresh_from_db()

    def counted_verb(name, action):
        stored = None

        def run():
            nonlocal stored
            stored = action()

        counted[name] = statements_of(run)
        Message.objects.filter(pk=stored.answer).update(status=Message.Status.COMPLETED, text="done")

    counted = {}
    counted_verb("new", lambda: Conversation.objects.send(alice, None, "hi", client_id="n"))
    counted_verb("existing", lambda: Conversation.objects.send(alice, conversation.id, "again", client_id="e"))
    answer = Message.objects.filter(conversation=conversation, role=Message.Role.ASSISTANT).last()
    counted_verb("regenerate", lambda: Conversation.objects.regenerate(alice, answer.id, client_id="r"))
    question = Message.objects.filter(conversation=conversation, role=Message.Role.USER).last()
    counted_verb("edit", lambda: Conversation.objects.edit(alice, question.id, "edited", client_id="d"))
    stopped = Message.objects.filter(conversation=conversation, role=Message.Role.ASSISTANT).last()
    Message.objects.filter(pk=stopped.pk).update(status=Message.Status.INCOMPLETE, text="Cut sh")
    counted_verb("continue", lambda: Conversation.objects.continue_answer(alice, stopped.id, client_id="c"))
    assert {verb: len(statements) for verb, statements in counted.items()} == SEND_STATEMENTS, counted
