"""Checkpoints: the text so far of the answers being written, saved by the checkpointer's thread
once per CHAT_CHECKPOINT_INTERVAL, every answer due in one round, one transaction and one
statement (MessageQuerySet.checkpoint_round); an answer the database refuses is written on its own
so that it holds back no other's. The crash-time guarantees are in tests/test_restarts.py and
tests/test_stranded.py."""

import asyncio
import threading
import time
import uuid

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.answering.job import AnswerJob
from chat.models import Conversation, Message
from tests.upstream import Pause, started, stream, text_events

TRANSACTION_STATEMENTS = ("BEGIN", "SAVEPOINT", "RELEASE")


@pytest.fixture(autouse=True)
def models_offered(settings):
    settings.OPENRESPONSES_API_KEY = "sk-test"
    settings.OPENRESPONSES_MODELS = ["test-model"]


def streaming_answer(owner, text):
    stored = Conversation.objects.send(owner, None, text, client_id=f"c-{text}")
    assert Message.objects.claim(stored.answer, uuid.uuid4(), stored.answer_input.fitted())
    return stored.answer


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.django_db
def test_a_round_saves_every_answer_streaming_with_one_statement_and_leaves_an_ended_one(alice):
    answers = [streaming_answer(alice, f"question {number}") for number in range(3)]
    ended = streaming_answer(alice, "ended")
    Message.objects.finish_answer(ended, status=Message.Status.COMPLETED, text="The end.", finished_at=timezone.now())
    first_token_at = timezone.now()
    texts = [{"text": f"Text {number} ", "reasoning": f"Why {number}", "refusal": ""} for number in range(3)]
    round_of = [(answer, first_token_at, text) for answer, text in zip(answers, texts, strict=True)]
    round_of.append((ended, first_token_at, {"text": "A late checkpoint", "reasoning": "", "refusal": ""}))
    with CaptureQueriesContext(connection) as captured:
        Message.objects.checkpoint_round(round_of)
    statements = [query["sql"] for query in captured.captured_queries]
    [written] = [sql for sql in statements if not sql.startswith(TRANSACTION_STATEMENTS)]
    assert written.startswith('4 times: UPDATE "chat_message" SET "checkpointed_at" = '), statements
    for answer, text in zip(answers, texts, strict=True):
        row = Message.objects.get(pk=answer)
        assert (row.text, row.reasoning, row.refusal, row.status) == (*text.values(), Message.Status.STREAMING)
        assert row.first_token_at == first_token_at and row.checkpointed_at is not None
    late = Message.objects.get(pk=ended)
    assert (late.text, late.status, late.checkpointed_at) == ("The end.", Message.Status.COMPLETED, None)
    # A round of one, as most are but under load, is its one UPDATE.
    with CaptureQueriesContext(connection) as captured:
        Message.objects.checkpoint_round(
            [(answers[0], first_token_at, {"text": "More", "reasoning": "", "refusal": ""})]
        )
    [written] = [query["sql"] for query in captured.captured_queries]
    assert written.startswith('UPDATE "chat_message" SET "checkpointed_at" = '), written  # not "N times: ..."
    assert Message.objects.get(pk=answers[0]).text == "More"


class CheckpointerStatements:
    """Every statement of the checkpointer's thread, but its transactions' own."""

    def __init__(self):
        self.statements = []
        self.lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        if not sql.startswith(TRANSACTION_STATEMENTS):
            with self.lock:
                self.statements.append((sql, len(params) if many else 1))
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        if threading.current_thread().name == "answer-checkpoints" and self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)


@pytest.fixture
def checkpointer_statements():
    """Requested before `worker`, so that the checkpointer's connection carries the recorder."""
    recorder = CheckpointerStatements()
    connection_created.connect(recorder.install)
    yield recorder
    connection_created.disconnect(recorder.install)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_answers_streaming_at_once_are_checkpointed_in_rounds_of_one_statement(
    alice, upstream, checkpointer_statements, worker, settings
):
    """Through the worker and the loopback upstream: four answers stream two words and wait; the
    checkpointer saves each of them (a checkpoint falls due at an event, the second word), and
    all it runs is the round's statement."""
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    settings.OPENRESPONSES_TIMEOUT = 60  # the answers wait for the stop, not for a read timeout
    words = [[f"Answer {number} ", "so far."] for number in range(4)]
    upstream.queue(
        *[stream(*started(), *text_events(pair)[:3], Pause(0.2), *text_events(pair)[3:4], Pause(60)) for pair in words]
    )
    stored = [Conversation.objects.send(alice, None, f"Ask {number}", client_id=f"a{number}") for number in range(4)]
    answers = [sent.answer for sent in stored]
    loop = asyncio.new_event_loop()
    try:
        for sent in stored:
            worker.submit(sent.answer, sent.group, loop, sent.answer_input)

        def checkpointed():
            rows = Message.objects.filter(pk__in=answers, checkpointed_at__isnull=False)
            return set(rows.values_list("text", flat=True))

        wait_for(lambda: checkpointed() == {"".join(pair) for pair in words}, "the answers were not checkpointed")
        worker.notice_stops(answers)
        wait_for(lambda: not worker.job_ids(), "the stopped answers did not end")
    finally:
        loop.close()
    with checkpointer_statements.lock:
        statements = list(checkpointer_statements.statements)
    assert statements and all(sql.startswith('UPDATE "chat_message" SET "checkpointed_at"') for sql, _ in statements)
    assert sum(rows for _, rows in statements) >= 4, statements
    assert all(row.status == Message.Status.CANCELLED for row in Message.objects.filter(role="assistant"))


@pytest.mark.django_db(transaction=True)
def test_a_refused_round_is_written_one_answer_at_a_time(alice, worker, caplog):
    """One answer's checkpoint that cannot be written (here an id the database cannot hold)
    fails the round; the others are saved all the same, and the refused one is logged."""
    answers = [streaming_answer(alice, f"question {number}") for number in range(2)]
    loop = asyncio.new_event_loop()
    try:
        jobs = [AnswerJob(worker, answer, "group", loop) for answer in answers]
        refused = AnswerJob(worker, "not an id", "group", loop)
        for job, text in zip([*jobs, refused], ["First words", "Second words", "Never"], strict=True):
            job.add("text", text)
        for job in (jobs[0], refused, jobs[1]):
            worker.checkpointer.request(job)
        wait_for(
            lambda: (
                list(Message.objects.filter(pk__in=answers).order_by("text").values_list("text", flat=True))
                == ["First words", "Second words"]
            ),
            "the answers beside the refused one were not checkpointed",
        )
        wait_for(lambda: "The checkpoint of answer not an id failed" in caplog.text, "the refusal was not logged")
    finally:
        loop.close()
