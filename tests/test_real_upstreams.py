"""What real servers and proxies do that our own test upstream does not by default: compression,
long ids, `[DONE]` after the terminal event, `event:` lines that differ from the type, keep-alive
comments, a 200 answer whose body is a JSON error, numeric and unusual error codes."""

import json
import threading

import pytest

from chat.upstream import HTTP_SENTENCES, ResponseFinished, TextDelta, UpstreamClient, UpstreamError
from tests.upstream import (
    LONG_RESPONSE_ID,
    Body,
    Gate,
    Status,
    answer,
    error_event,
    finished,
    message_item,
    real_world_answer,
    reasoning_events,
    refusal_events,
    started,
    stream,
    text_events,
    usage_object,
)

QUESTION = [{"type": "message", "role": "user", "content": "Hi"}]


@pytest.fixture
def client(upstream):
    return UpstreamClient(base_url=upstream.base_url, api_key="sk-test", timeout=10, connect_timeout=2, backoff=0.01)


def failure(upstream, client, *scenarios):
    upstream.queue(*scenarios)
    with pytest.raises(UpstreamError) as caught:
        list(client.stream_response("test-model", QUESTION))
    return caught.value


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_stream_is_decoded_and_each_delta_arrives_before_the_next_is_sent(upstream, client, encoding):
    upstream.content_encoding = encoding
    gates = [Gate() for _ in range(3)]
    steps = answer(["one ", "two ", "three"])
    deltas = [index for index, step in enumerate(steps) if b"output_text.delta" in step]
    for gate, index in reversed(list(zip(gates, deltas[1:] + [deltas[-1] + 1], strict=True))):
        steps.insert(index, gate)
    upstream.queue(steps)
    received = []
    for event in client.stream_response("test-model", QUESTION):
        if isinstance(event, TextDelta):
            gate = gates[len(received)]
            # Had compression held this delta back, the server would be past its gate already.
            assert not gate.passed.is_set()
            received.append(event.delta)
            gate.event.set()
        last = event
    assert received == ["one ", "two ", "three"]
    assert isinstance(last, ResponseFinished) and last.output_text == "one two three"
    assert upstream.requests[-1]["headers"]["Accept-Encoding"] == "identity"


def test_an_encoding_the_site_cannot_read_is_explained(upstream, client):
    steps = answer(["hi"])
    upstream.queue([Status(200, b"".join(steps), {"Content-Type": "text/event-stream", "Content-Encoding": "zstd"})])
    with pytest.raises(UpstreamError) as caught:
        list(client.stream_response("test-model", QUESTION))
    assert caught.value.code == "unsupported_encoding"
    assert "'zstd'" in caught.value.message


def test_a_real_world_stream_reads_whole(upstream, client):
    upstream.queue(real_world_answer(["Hello", ", ", "world"], usage=usage_object(3, 3)))
    events = list(client.stream_response("test-model", QUESTION))
    assert "".join(event.delta for event in events if isinstance(event, TextDelta)) == "Hello, world"
    final = events[-1]
    assert isinstance(final, ResponseFinished)
    assert final.status == "completed" and len(final.response_id) > 400
    assert final.usage.total_tokens == 6


def test_a_200_answer_whose_body_is_a_json_error_is_an_error_with_its_detail(upstream, client):
    body = json.dumps({"error": {"message": "Model is loading.", "type": "server_error", "code": None}}).encode()
    error = failure(upstream, client, [Body(body)])
    assert error.message == HTTP_SENTENCES[500] + "."
    assert error.code == "server_error"
    plain = json.dumps({"error": {"message": "Something odd.", "code": "weird"}}).encode()
    error = failure(upstream, client, [Body(plain)])
    assert error.message == "The API answered with an error instead of the answer. It said: Something odd."


@pytest.mark.parametrize(
    "error_body, status",
    [
        ({"code": "500", "message": "boom"}, 500),
        ({"type": "internal_server_error", "message": "boom"}, 500),
        ({"type": "overloaded_error", "message": "busy"}, 503),
        ({"code": 429, "message": "slow down"}, 429),
        ({"code": "rate_limit_exceeded"}, 429),
        ({"type": "authentication_error"}, 401),
    ],
)
def test_unusual_codes_on_an_unlisted_status_get_the_standard_sentence(upstream, client, error_body, status):
    client.retries = 0
    body = json.dumps({"error": error_body}).encode()
    error = failure(upstream, client, [Status(520, body, {"Content-Type": "application/json"})])
    assert error.message.startswith(HTTP_SENTENCES[status])
    assert error.status == 520


def test_unusual_codes_with_their_own_status_keep_its_sentence(upstream, client):
    client.retries = 0
    body = json.dumps({"error": {"code": "500", "type": "internal_server_error", "message": "x"}}).encode()
    error = failure(upstream, client, [Status(500, body, {"Content-Type": "application/json"})])
    assert error.message == HTTP_SENTENCES[500] + "."
    assert error.code == "500"


def test_gate_steps_wait_for_the_test(upstream, client):
    """The Gate step itself: the server does not go on before it is opened."""
    gate = Gate(timeout=30)
    steps = answer(["a", "b"])
    steps.insert(3, gate)
    upstream.queue(steps)
    stream = iter(client.stream_response("test-model", QUESTION))
    next(stream)
    assert not gate.passed.is_set()
    threading.Timer(0, gate.event.set).start()
    assert any(isinstance(event, ResponseFinished) for event in stream)
    assert gate.passed.is_set()


# --- Through the site: what is stored and shown -------------------------------------------------


async def send_and_wait(alice, text="Hi"):
    from tests.websocket import connect, receive_until

    communicator, connected, _ = await connect(alice)
    assert connected
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": text})
    frames = await receive_until(communicator, "message.done", timeout=30)
    await communicator.disconnect()
    return frames


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
async def test_a_real_world_stream_through_a_compressing_proxy_is_saved_whole(alice, upstream, worker, encoding):
    from chat.models import Message

    upstream.content_encoding = encoding
    upstream.queue(real_world_answer(["Hello", ", ", "world"], usage=usage_object(3, 3)))
    frames = await send_and_wait(alice)
    done = frames[-1]
    assert done["status"] == "completed" and done["text"] == "Hello, world"
    deltas = [frame["delta"] for frame in frames if frame["type"] == "message.delta"]
    assert "".join(deltas) == "Hello, world"
    row = await Message.objects.aget(pk=done["message"])
    assert row.response_id == LONG_RESPONSE_ID and len(row.response_id) > 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_id_and_code_beyond_the_columns_are_not_stored_cut_and_say_so(alice, upstream, worker, caplog):
    from chat.models import Message

    huge = "resp_" + "x" * 5000
    steps = answer(["fine"], response_id=huge)
    upstream.queue(steps)
    frames = await send_and_wait(alice)
    assert frames[-1]["status"] == "completed" and frames[-1]["text"] == "fine"
    row = await Message.objects.aget(pk=frames[-1]["message"])
    assert row.response_id == ""
    assert "The API's response id is 5005 characters long, over the 2048 kept" in caplog.text
    long_code = "e" * 3000
    upstream.queue(
        stream(
            *started(),
            error_event(long_code, "Broke."),
            finished("failed", error={"code": long_code, "message": "Broke."}),
        )
    )
    frames = await send_and_wait(alice, "again")
    assert frames[-1]["status"] == "failed"
    assert frames[-1]["error"]["message"] == "Broke."
    assert "The API's error code is 3000 characters long" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_completed_answer_with_nothing_in_it_says_the_model_returned_nothing(alice, upstream, worker):
    from chat.answering.reading import EMPTY_OUTPUT_SENTENCE
    from chat.models import Message

    upstream.queue(stream(*started(), finished("completed", [], usage=usage_object(0, 0))))
    frames = await send_and_wait(alice, "a prompt longer than the model reads")
    done = frames[-1]
    assert done["status"] == "failed"
    assert done["error"] == {"code": "empty_output", "message": EMPTY_OUTPUT_SENTENCE}
    assert "model returned nothing" in done["error"]["message"]
    row = await Message.objects.aget(pk=done["message"])
    assert (row.status, row.error_code, row.text) == ("failed", "empty_output", "")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "events",
    [
        lambda: [*reasoning_events([["Thinking."]]), finished("completed", [])],
        lambda: [*refusal_events(["No."]), finished("completed", [message_item(refusal="No.")])],
        lambda: [*text_events(["Hi"]), finished("completed", [])],
    ],
    ids=["reasoning only", "refusal only", "text streamed, bare terminal output"],
)
async def test_an_answer_with_only_reasoning_or_a_refusal_is_not_called_empty(alice, upstream, worker, events):
    upstream.queue(stream(*started(), *events()))
    frames = await send_and_wait(alice)
    assert frames[-1]["status"] == "completed"
    assert frames[-1]["error"] is None


def test_staff_find_the_empty_answers_with_the_error_code_filter(alice, db):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import AuditEvent, Message
    from tests.factories import conversation_with_answer

    empty = conversation_with_answer(alice, answer="", status=Message.Status.FAILED, error_code="empty_output")
    conversation_with_answer(alice, question="Other")
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    response = client.get("/admin/chat/message/", {"error_code": "empty_output"})
    assert response.status_code == 200
    shown = response.context["cl"].result_list
    assert [message.conversation_id for message in shown] == [empty.id]
    assert AuditEvent.objects.filter(query__contains="error_code=empty_output").exists()
