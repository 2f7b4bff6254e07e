"""The worker's claim of an answer: one conditional UPDATE with what the send verb read
(models.AnswerInput), and the same answer when the job has to read it back (an answer
submitted again after a restart, a claim retried after a lost connection: tests/test_stranded.py)."""

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from chat.answering.worker import POOL_THREADS
from chat.models import Conversation, Message
from tests.test_outcomes import partial
from tests.upstream import Pause, answer, stream
from tests.websocket import connect, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]


def is_claim(sql):
    # The UPDATE that moves the row to streaming for a worker (its SQL with or without its values).
    return sql.startswith('UPDATE "chat_message" SET "status" = ') and '"worker" = ' in sql and '"started_at"' in sql


def up_to_the_claim(statements):
    """The statements of an answer's thread up to its claim, the claim included."""
    claims = [index for index, sql in enumerate(statements) if is_claim(sql)]
    assert len(claims) == 1, statements
    return statements[: claims[0] + 1]


async def run_counted(worker, loop, answer_id, group, answer_input=None):
    """StreamWorker.run_one on a thread of its own, every statement of that thread captured."""
    captured = []

    def run():
        with CaptureQueriesContext(connection) as queries:
            worker.run_one(answer_id, group, loop, answer_input)
        captured.extend(query["sql"] for query in queries.captured_queries)

    caller = threading.Thread(target=run, name="counted-answer")
    caller.start()
    await loop.run_in_executor(None, caller.join, 60)
    return captured


def sent_upstream(request):
    return {key: request["body"].get(key) for key in ("input", "instructions", "max_output_tokens", "model")}


async def test_a_sent_answer_is_claimed_with_one_update_and_a_resubmitted_one_reads_its_row_first(
    alice, upstream, worker, settings
):
    settings.CHAT_MAX_OUTPUT_TOKENS = 300  # sent with each request: the claim must know it
    loop = asyncio.get_running_loop()
    send = database_sync_to_async(Conversation.objects.send)
    handed = await send(alice, None, "Same question", client_id="handed", worker_id=worker.id)
    statements = await run_counted(worker, loop, handed.answer, handed.group, handed.answer_input)
    claim = up_to_the_claim(statements)
    assert len(claim) == 1, claim
    assert "queued" in claim[0], "conditional: only a queued answer is claimed"

    again = await send(alice, None, "Same question", client_id="read back", worker_id=worker.id)
    statements = await run_counted(worker, loop, again.answer, again.group)
    reads = up_to_the_claim(statements)[:-1]
    assert len(reads) >= 3 and all(sql.startswith("SELECT") for sql in reads), reads

    saved = [await Message.objects.aget(pk=stored.answer) for stored in (handed, again)]
    assert [(row.status, row.text) for row in saved] == [(Message.Status.COMPLETED, "You said: Same question")] * 2
    assert saved[0].input_characters == saved[1].input_characters > 0
    assert saved[0].context_start is saved[1].context_start is None
    first, second = (sent_upstream(request) for request in upstream.requests)
    assert first == second and first["max_output_tokens"] == 300


class AnswerThreadStatements:
    """Every statement of the answer threads' connections, in order."""

    def __init__(self):
        self.statements = []
        self.lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        with self.lock:
            self.statements.append(sql)
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        # Only the answer threads' connections, which go with the worker at the test's end.
        if threading.current_thread().name.startswith(POOL_THREADS) and self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def since(self, mark):
        with self.lock:
            return self.statements[mark:]

    def mark(self):
        with self.lock:
            return len(self.statements)


@pytest.fixture
def answer_statements():
    """Requested before `worker`, so that its threads' connections carry the recorder."""
    recorder = AnswerThreadStatements()
    connection_created.connect(recorder.install)
    yield recorder
    connection_created.disconnect(recorder.install)


async def test_every_client_action_hands_its_answer_to_the_worker_ready_to_claim(
    alice, upstream, answer_statements, worker
):
    """chat.send, chat.regenerate, chat.edit and chat.continue through the real socket: the
    answer's first statement is its claim. One answer at a time, each followed to its
    message.done, which is told once its thread wrote all it writes."""
    upstream.queue(answer(["One"]), answer(["Two"]), answer(["Three"]))
    upstream.queue(stream(*partial(["Cut "]), Pause(30)), answer(["short"]))
    communicator, connected, _ = await connect(alice)
    assert connected
    firsts = []

    async def act(frame, until="message.done"):
        mark = answer_statements.mark()
        await communicator.send_json_to(frame)
        frames = await receive_until(communicator, until)
        firsts.append(answer_statements.since(mark)[:1])
        return frames

    done = (await act({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "s"}))[-1]
    frames = await act({"type": "chat.regenerate", "message": done["message"], "client_id": "r"})
    question = [frame for frame in frames if frame["type"] == "message.created"][0]["message"]["parent"]
    await act({"type": "chat.edit", "message": question, "text": "Hey", "client_id": "e"})
    more = {"type": "chat.send", "conversation": done["conversation"], "text": "More", "client_id": "m"}
    cut = (await act(more, until="message.delta"))[-1]["message"]
    await communicator.send_json_to({"type": "chat.stop", "message": cut})
    await receive_until(communicator, "message.done")
    done = (await act({"type": "chat.continue", "message": cut, "client_id": "c"}))[-1]
    assert (done["status"], done["text"]) == ("completed", "Cut short")
    await communicator.disconnect()
    assert len(firsts) == 5
    assert all(len(first) == 1 and is_claim(first[0]) for first in firsts), firsts
