"""How each way an answer can end is stored and told to the browser, end to end.

Every test goes through the websocket consumer, the worker's threads and the loopback upstream, and
checks both the stored Message row and the frames sent. After each outcome the socket must still
take a new message, and nothing may be left queued or streaming.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field

import pytest

from chat.models import Message
from tests.upstream import (
    Hangup,
    Pause,
    Status,
    answer,
    closed_port_url,
    error_event,
    finished,
    message_item,
    reasoning_events,
    reasoning_item,
    refusal_events,
    started,
    stream,
    text_events,
    usage_object,
)
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def no_send_rate_limit(settings):
    """These tests send several messages a second; the send rate limit has tests of its own."""
    settings.CHAT_SENDS_PER_MINUTE = 0


@dataclass
class Exchange:
    """One chat.send and what came back for it."""

    communicator: object
    conversation: str = ""
    question: str = ""  # the user message's id
    answer: str = ""  # the assistant message's id
    frames: list = field(default_factory=list)

    @property
    def done(self):
        return self.frames[-1]

    def of_type(self, frame_type):
        return [frame for frame in self.frames if frame["type"] == frame_type and frame.get("message") == self.answer]

    def streamed(self, frame_type="message.delta"):
        return "".join(frame["delta"] for frame in self.of_type(frame_type))


async def send(communicator, text, conversation=None):
    """Send a message and read frames until both its messages are announced."""
    await communicator.send_json_to({"type": "chat.send", "conversation": conversation, "text": text})
    exchange = Exchange(communicator)
    while not exchange.answer:
        frame = await receive(communicator)
        exchange.frames.append(frame)
        assert frame["type"] != "error", frame
        if frame["type"] == "message.created":
            exchange.conversation = frame["conversation"]
            if frame["message"]["role"] == "user":
                exchange.question = frame["message"]["id"]
            else:
                exchange.answer = frame["message"]["id"]
    return exchange


async def until_done(exchange, timeout=15):
    exchange.frames += await receive_until(exchange.communicator, "message.done", timeout, message=exchange.answer)
    return exchange


async def ask(communicator, text, conversation=None, timeout=15):
    return await until_done(await send(communicator, text, conversation), timeout)


async def assert_outcome(
    exchange, status, text, *, error=None, incomplete_reason="", usage=None, reasoning="", refusal=""
):
    """The stored answer and its message.done frame agree with the expected outcome."""
    row = await Message.objects.aget(pk=exchange.answer)
    assert row.status == status
    assert row.text == text
    assert row.reasoning == reasoning
    assert row.refusal == refusal
    assert (row.error_code, row.error_message) == (error or ("", ""))
    assert row.incomplete_reason == incomplete_reason
    assert row.usage == usage
    assert row.finished_at is not None
    done = exchange.done
    assert done["type"] == "message.done"
    assert done["message"] == exchange.answer
    assert (done["status"], done["text"], done["reasoning"], done["refusal"]) == (status, text, reasoning, refusal)
    assert done["error"] == ({"code": error[0], "message": error[1]} if error else None)
    assert done["usage"] == usage
    assert done["incomplete_reason"] == incomplete_reason
    question = await Message.objects.aget(pk=exchange.question)
    assert question.role == Message.Role.USER
    assert question.status == Message.Status.COMPLETED
    return row


async def assert_still_usable(exchange):
    """The socket takes the next message in the same conversation, and nothing is left running."""
    follow_up = await ask(exchange.communicator, "and now?", exchange.conversation)
    await assert_outcome(follow_up, "completed", "You said: and now?", usage=usage(7, 5))
    assert not await Message.objects.unfinished().aexists()


def usage(input_tokens, output_tokens, cached=0, reasoning=0):
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
    }


async def close(*communicators):
    for communicator in communicators:
        await communicator.disconnect()
    assert_no_groups_left()


BYSTANDER_WORDS = [f"steady-{number} " for number in range(25)]


class Bystander:
    """Bob, whose answer streams in his own conversation while Alice's goes wrong."""

    @classmethod
    async def start(cls, bob, upstream):
        bystander = cls()
        upstream.queue(answer(BYSTANDER_WORDS, pause=0.03))
        bystander.communicator, connected, _ = await connect(bob)
        assert connected
        bystander.exchange = await send(bystander.communicator, "tell me something steady")
        # Once a delta arrives his request has taken its scenario; Alice's can be queued next.
        bystander.exchange.frames += await receive_until(bystander.communicator, "message.delta")
        return bystander

    async def assert_unaffected(self):
        await until_done(self.exchange)
        expected = "".join(BYSTANDER_WORDS)
        assert self.exchange.streamed() == expected
        await assert_outcome(self.exchange, "completed", expected, usage=usage(7, len(BYSTANDER_WORDS)))
        await self.communicator.disconnect()


def partial(deltas):
    """The events of an answer cut off after its text deltas: no output_text.done, no terminal."""
    return [*started(), *text_events(deltas)[: 2 + len(deltas)]]


# --- 1. completed ---------------------------------------------------------------------------


async def test_a_completed_answer_is_saved_with_its_text_usage_and_response_id(alice, upstream, worker):
    upstream.queue(answer(["Hel", "lo ", "there"], usage=usage_object(11, 3, cached=2, reasoning=0), pause=0.02))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    assert exchange.streamed() == "Hello there"
    row = await assert_outcome(exchange, "completed", "Hello there", usage=usage(11, 3, cached=2))
    assert row.response_id == "resp_test"
    assert row.model == "test-model"
    assert row.started_at <= row.first_token_at <= row.finished_at
    assert upstream.requests[0]["body"]["input"] == [{"type": "message", "role": "user", "content": "Hi"}]
    await assert_still_usable(exchange)
    await close(communicator)


async def test_the_upstreams_final_text_wins_over_malformed_or_missing_deltas(alice, upstream, worker):
    deltas = ["The ", "whole ", "answer"]
    events = text_events(deltas)
    events[3] = b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": \n\n'
    del events[4]  # "answer" never arrives as a delta
    upstream.queue(stream(*started(), *events, finished("completed", [message_item("The whole answer")])))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    assert exchange.streamed() == "The "
    await assert_outcome(exchange, "completed", "The whole answer")
    await assert_still_usable(exchange)
    await close(communicator)


async def test_without_a_final_output_the_text_done_event_gives_the_text(alice, upstream, worker):
    events = text_events(["Hello ", "world"])
    del events[3]  # the "world" delta is lost; output_text.done still has it
    upstream.queue(stream(*started(), *events, finished("completed", [], usage=usage_object(3, 2))))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    await assert_outcome(exchange, "completed", "Hello world", usage=usage(3, 2))
    await close(communicator)


# --- 2. incomplete --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
async def test_an_incomplete_answer_keeps_its_text_and_reason(alice, upstream, worker, reason):
    upstream.queue(
        answer(["Rivers are ", "vital"], terminal="incomplete", incomplete_reason=reason, usage=usage_object(16, 16))
    )
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Tell me about rivers")
    await assert_outcome(exchange, "incomplete", "Rivers are vital", incomplete_reason=reason, usage=usage(16, 16))
    await assert_still_usable(exchange)
    await close(communicator)


# --- 3. errors in the stream ----------------------------------------------------------------

QUOTA = "You exceeded your current quota, please check your plan and billing details."
FAILED_ERROR = {"code": "server_error", "message": "The model crashed while answering."}


@pytest.mark.parametrize(
    ("ending", "error"),
    [
        pytest.param(
            [error_event("insufficient_quota", QUOTA), finished("failed", error=FAILED_ERROR)],
            ("server_error", FAILED_ERROR["message"]),
            id="nested-error-then-failed",
        ),
        pytest.param(
            [error_event("rate_limit_exceeded", "Slow down, please.", flat=True), finished("failed")],
            ("rate_limit_exceeded", "Slow down, please."),
            id="flat-error-then-failed-without-details",
        ),
        pytest.param(
            [finished("failed", error=FAILED_ERROR)],
            ("server_error", FAILED_ERROR["message"]),
            id="failed-alone",
        ),
        pytest.param(
            [finished("failed")],
            ("response_failed", "The API reported that the answer failed."),
            id="failed-without-any-details",
        ),
        pytest.param(
            [error_event("insufficient_quota", QUOTA)],
            ("insufficient_quota", QUOTA),
            id="error-then-eof",
        ),
        pytest.param(
            [error_event("server_error", "Overloaded.", flat=True)],
            ("server_error", "Overloaded."),
            id="flat-error-then-eof",
        ),
    ],
)
async def test_errors_in_the_stream_fail_the_answer_with_their_code_and_sentence(
    alice, bob, upstream, worker, ending, error
):
    bystander = await Bystander.start(bob, upstream)
    upstream.queue(stream(*partial(["So ", "far"]), *ending))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    await assert_outcome(exchange, "failed", "So far", error=error)
    await bystander.assert_unaffected()
    await assert_still_usable(exchange)
    await close(communicator)


# --- 4. refusals ----------------------------------------------------------------------------


async def test_a_refusal_is_stored_and_streamed_apart_from_the_text(alice, upstream, worker):
    refusal = "I'm sorry, but I can't help with that."
    deltas = ["I'm sorry, ", "but I can't ", "help with that."]
    upstream.queue(stream(*started(), *refusal_events(deltas), finished("completed", [message_item(refusal=refusal)])))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Something bad")
    assert exchange.streamed("message.refusal.delta") == refusal
    assert exchange.of_type("message.delta") == []
    await assert_outcome(exchange, "completed", "", refusal=refusal)
    await assert_still_usable(exchange)
    await close(communicator)


# --- 5. reasoning ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["summary", "reasoning_text", "reasoning"])
async def test_reasoning_is_stored_and_streamed_apart_from_the_text(alice, upstream, worker, kind):
    """A reasoning item at output_index 0 with two parts, then the message at output_index 1."""
    parts = [["First I ", "consider."], ["Then I ", "answer."]]
    reasoning = "First I consider.\n\nThen I answer."
    upstream.queue(
        stream(
            *started(),
            *reasoning_events(parts, kind=kind, output_index=0),
            *text_events(["Forty", "-two"], output_index=1),
            finished(
                "completed",
                [reasoning_item(parts, kind), message_item("Forty-two")],
                usage=usage_object(20, 30, reasoning=24),
            ),
        )
    )
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "The answer?")
    assert exchange.streamed("message.reasoning.delta") == reasoning
    assert exchange.streamed() == "Forty-two"
    await assert_outcome(exchange, "completed", "Forty-two", reasoning=reasoning, usage=usage(20, 30, reasoning=24))
    await assert_still_usable(exchange)
    await close(communicator)


# --- 6. unknown events ----------------------------------------------------------------------


async def test_unknown_events_are_ignored(alice, upstream, worker):
    upstream.queue(
        stream(
            *started(),
            {"type": "acme:trace_event", "span": "abc"},
            {"type": "response.web_search_call.searching", "item_id": "ws_1", "output_index": 0},
            *text_events(["known ", "text"], output_index=1),
            {"type": "response.output_text.annotation.added", "annotation": {"type": "url_citation"}},
            {"type": "response.something_new", "delta": "not text"},
            finished("completed", [message_item("known text")]),
        )
    )
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    assert exchange.streamed() == "known text"
    await assert_outcome(exchange, "completed", "known text")
    await close(communicator)


# --- 7. HTTP errors before the stream -------------------------------------------------------

BAD_MODEL = json.dumps(
    {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
    }
).encode()


@pytest.mark.parametrize(
    ("scenarios", "error"),
    [
        (
            [[Status(404, BAD_MODEL)]],
            (
                "model_not_found",
                "The API has no such model or endpoint: check the model name and OPENRESPONSES_BASE_URL. "
                "It said: The model `nope` does not exist.",
            ),
        ),
        ([[Status(401, b"Unauthorized")]], ("http_401", "The API key was rejected: check OPENRESPONSES_API_KEY.")),
        ([[Status(500, b"<html>oops</html>")]], ("http_500", "The API had an internal error.")),
        (
            [[Status(503, b"", {"Retry-After": "0"})]] * 3,
            ("http_503", "The API is unavailable right now (tried 3 times)."),
        ),
    ],
    ids=["404-json", "401", "500-html", "503-retried"],
)
async def test_http_errors_before_the_stream_fail_the_answer_with_a_sentence(
    alice, bob, upstream, worker, scenarios, error
):
    bystander = await Bystander.start(bob, upstream)
    upstream.queue(*scenarios)
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    row = await assert_outcome(exchange, "failed", "", error=error)
    assert row.first_token_at is None
    await bystander.assert_unaffected()
    await assert_still_usable(exchange)
    await close(communicator)


# --- 8. the network -------------------------------------------------------------------------


async def test_a_refused_connection_fails_the_answer(alice, upstream, worker, settings):
    settings.OPENRESPONSES_BASE_URL = closed_port_url()
    host = settings.OPENRESPONSES_BASE_URL.removeprefix("http://").removesuffix("/v1")
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    await assert_outcome(
        exchange,
        "failed",
        "",
        error=("connection_refused", f"The API at {host} refused the connection (tried 3 times)."),
    )
    settings.OPENRESPONSES_BASE_URL = upstream.base_url
    await assert_still_usable(exchange)
    await close(communicator)


@pytest.mark.parametrize(
    ("ending", "error"),
    [
        ([Pause(10)], ("read_timeout", "The API sent nothing for 0.5 seconds.")),
        ([Hangup()], ("connection_lost", "The connection to the API broke off in the middle of the answer.")),
        ([], ("stream_truncated", "The API ended the stream before finishing the answer.")),
    ],
    ids=["stall", "hangup", "eof"],
)
async def test_a_broken_stream_fails_the_answer_keeping_the_text_so_far(
    alice, bob, upstream, worker, settings, ending, error
):
    settings.OPENRESPONSES_TIMEOUT = 0.5
    bystander = await Bystander.start(bob, upstream)
    upstream.queue(stream(*partial(["Half ", "an answer"]), *ending))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    assert exchange.streamed() == "Half an answer"
    await assert_outcome(exchange, "failed", "Half an answer", error=error)
    await bystander.assert_unaffected()
    await assert_still_usable(exchange)
    await close(communicator)


# --- 9. malformed data ----------------------------------------------------------------------


async def test_malformed_events_are_skipped(alice, upstream, worker):
    events = text_events(["one ", "two"])
    events[3:3] = [b"data: {this is not json\n\n", b'data: {"delta": "no type"}\n\n', b"data: 42\n\n"]
    upstream.queue(stream(*started(), *events, finished("completed", [message_item("one two")])))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    assert exchange.streamed() == "one two"
    await assert_outcome(exchange, "completed", "one two")
    await assert_still_usable(exchange)
    await close(communicator)


async def test_a_megabyte_delta_is_streamed_and_saved_whole(alice, upstream, worker):
    big = "ünïcödé text 😀 " * 70_000  # about 1.2 MB of UTF-8
    upstream.queue(answer(["<", big, ">"], usage=usage_object(5, 300_000)))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Write a lot")
    assert exchange.streamed() == "<" + big + ">"
    await assert_outcome(exchange, "completed", "<" + big + ">", usage=usage(5, 300_000))
    await assert_still_usable(exchange)
    await close(communicator)


async def test_invalid_utf8_fails_the_answer_keeping_the_text_so_far(alice, upstream, worker):
    bad = b'data: {"type": "response.output_text.delta", "delta": "\xc3\x28 broken"}\n\n'
    upstream.queue(stream(*partial(["Good "]), bad, finished("completed", [message_item("unreachable")])))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    await assert_outcome(
        exchange, "failed", "Good ", error=("invalid_utf8", "The API sent text that is not valid UTF-8.")
    )
    await assert_still_usable(exchange)
    await close(communicator)


async def test_nul_characters_and_absurd_usage_do_not_break_the_save(alice, upstream, worker):
    usage_data = {"input_tokens": -5, "output_tokens": 2**40, "total_tokens": "many", "input_tokens_details": None}
    final = finished("completed", [message_item("nul\x00here")], usage=usage_data)
    upstream.queue(stream(*started(), *text_events(["nul\x00here"]), final))
    communicator, _, _ = await connect(alice)
    exchange = await ask(communicator, "Hi")
    await assert_outcome(exchange, "completed", "nulhere", usage=None)
    await close(communicator)


# --- 10. Stop -------------------------------------------------------------------------------


async def test_stop_during_a_silent_upstream_ends_the_answer_at_once(alice, bob, upstream, worker):
    bystander = await Bystander.start(bob, upstream)
    upstream.queue(stream(*partial(["Some ", "words"]), Pause(30), *text_events(["never"])[2:]))
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Talk slowly")
    while exchange.streamed() != "Some words":
        exchange.frames.append(await receive(communicator))
    stopped_at = time.monotonic()
    await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
    await until_done(exchange)
    assert time.monotonic() - stopped_at < 1.5
    await assert_outcome(exchange, "cancelled", "Some words")
    # No delta of that answer follows its message.done.
    assert await communicator.receive_nothing(timeout=0.5)
    # The upstream connection was closed, so the API stops generating too.
    request = upstream.requests[-1]
    for _ in range(50):
        if request.get("disconnected"):
            break
        await asyncio.sleep(0.02)
    assert request.get("disconnected")
    await bystander.assert_unaffected()
    await assert_still_usable(exchange)
    await close(communicator)


async def test_stop_while_waiting_between_retries_ends_the_answer_at_once(alice, upstream, worker):
    upstream.queue([Status(503, b"", {"Retry-After": "10"})])
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Hi")
    while len(upstream.requests) < 1:
        await asyncio.sleep(0.02)
    stopped_at = time.monotonic()
    await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
    await until_done(exchange)
    assert time.monotonic() - stopped_at < 1.5
    await assert_outcome(exchange, "cancelled", "")
    await asyncio.sleep(0.3)
    assert len(upstream.requests) == 1
    await assert_still_usable(exchange)
    await close(communicator)


async def test_stop_before_the_upstream_answers_drops_the_stream_when_it_comes(alice, upstream, worker):
    """The worker thread cannot interrupt a request still waiting for its status line: the answer is
    saved as cancelled at once, and the stream that arrives later is closed unread."""
    body = b"".join(step for step in answer(["too ", "late"]) if isinstance(step, bytes))
    upstream.queue([Pause(1.5), Status(200, body, {"Content-Type": "text/event-stream"})])
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "Hi")
    while not upstream.requests:
        await asyncio.sleep(0.02)
    stopped_at = time.monotonic()
    await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
    await until_done(exchange)
    assert time.monotonic() - stopped_at < 1.5
    await assert_outcome(exchange, "cancelled", "")
    # The status line comes; nothing of that stream reaches the socket or the row.
    assert await communicator.receive_nothing(timeout=2)
    await assert_outcome(exchange, "cancelled", "")
    await assert_still_usable(exchange)
    await close(communicator)


async def test_stop_of_a_queued_answer_cancels_it_before_anything_is_sent_upstream(alice, bob, upstream, worker):
    assert worker.threads == 4
    slow = stream(*partial(["busy "]), Pause(30))
    upstream.queue(*[slow] * 4)
    sockets, busy = [], []
    for number in range(4):
        communicator, _, _ = await connect(bob)
        exchange = await send(communicator, f"slow question {number}")
        exchange.frames += await receive_until(communicator, "message.delta")
        sockets.append(communicator)
        busy.append(exchange)
    # Every worker thread is taken: Alice's answer waits in the queue.
    communicator, _, _ = await connect(alice)
    exchange = await send(communicator, "queued question")
    assert exchange.frames[-1]["message"]["status"] == "queued"
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.send_json_to({"type": "chat.stop", "message": exchange.answer})
    await until_done(exchange, timeout=1.5)
    await assert_outcome(exchange, "cancelled", "")
    assert (await Message.objects.aget(pk=exchange.answer)).started_at is None
    # Free the threads; the cancelled job is then taken from the queue and dropped unsent.
    for other in busy:
        await other.communicator.send_json_to({"type": "chat.stop", "message": other.answer})
        await until_done(other)
        await assert_outcome(other, "cancelled", "busy ")
    await asyncio.sleep(0.3)
    assert len(upstream.requests) == 4
    assert all(request["body"]["input"][-1]["content"] != "queued question" for request in upstream.requests)
    assert await communicator.receive_nothing(timeout=0.2)
    await assert_still_usable(exchange)
    await close(communicator, *sockets)
