"""The Open Responses client against a real SSE server on loopback: parsing, errors, retries, abort.

No mocking: every test goes through requests, real sockets and the chunked HTTP of
`tests.upstream.UpstreamServer`. The parts that need no server (the SSE framing, the event parser,
the key scrubber, the error-code mapping) are tested on their own in tests/unit/.
"""

import http.client
import itertools
import json
import logging
import threading
import time

import pytest

from chat.upstream import (
    ReasoningDelta,
    RefusalDelta,
    ResponseFinished,
    ResponseStarted,
    StreamError,
    TextDelta,
    TextDone,
    UpstreamClient,
    UpstreamError,
)
from tests.upstream import (
    Hangup,
    Pause,
    Raw,
    Status,
    answer,
    chunked,
    closed_port_url,
    sse,
    unresponsive_url,
    usage_object,
)

KEY = "sk-test-secret-key"
QUESTION = [{"type": "message", "role": "user", "content": "Hi"}]
KNOWN_EVENTS = (
    ResponseStarted,
    TextDelta,
    TextDone,
    ReasoningDelta,
    RefusalDelta,
    StreamError,
    ResponseFinished,
)


@pytest.fixture
def client(upstream):
    return UpstreamClient(base_url=upstream.base_url, api_key=KEY, timeout=5, connect_timeout=2, backoff=0.01)


def play(upstream, client, steps):
    """Every event the client yields for one streamed request playing `steps`."""
    upstream.queue(steps)
    return list(client.stream_response("test-model", QUESTION))


def failure(upstream, client, *scenarios):
    """The UpstreamError of a request, raised before or during the stream; events seen before it."""
    upstream.queue(*scenarios)
    seen = []
    with pytest.raises(UpstreamError) as caught:
        for event in client.stream_response("test-model", QUESTION):
            seen.append(event)
    caught.value.seen = seen
    return caught.value


def text_of(events):
    return "".join(event.delta for event in events if isinstance(event, TextDelta))


def delta_event(delta, **extra):
    return sse(
        {
            "type": "response.output_text.delta",
            "sequence_number": 5,
            "item_id": "msg_test",
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
            **extra,
        }
    )


def with_steps_before_terminal(steps, *extra):
    """An answer with extra steps inserted just before its output_text.done event."""
    steps = list(steps)
    index = next(i for i, step in enumerate(steps) if b"response.output_text.done" in step)
    return steps[:index] + list(extra) + steps[index:]


# --- SSE parsing ----------------------------------------------------------------------------


def test_it_turns_event_and_data_lines_into_typed_events(upstream, client):
    events = play(upstream, client, answer(["Hel", "lo"], usage=usage_object(11, 2, cached=3, reasoning=1)))
    assert [type(event) for event in events] == [
        ResponseStarted,
        ResponseStarted,
        TextDelta,
        TextDelta,
        TextDone,
        ResponseFinished,
    ]
    assert events[0].response_id == "resp_test"
    assert events[0].model == "test-model"
    assert text_of(events) == "Hello"
    assert events[-2].text == "Hello"
    final = events[-1]
    assert final.status == "completed"
    assert final.output_text == "Hello"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (11, 2, 13)
    assert (final.usage.cached_tokens, final.usage.reasoning_tokens) == (3, 1)


def test_multi_line_data_is_joined_with_newlines(upstream, client, caplog):
    split_json = (
        b"event: response.output_text.delta\n"
        b'data: {"type": "response.output_text.delta",\n'
        b'data:  "output_index": 0, "content_index": 0,\n'
        b'data: "delta": "joined"}\n\n'
    )
    not_json = b"data: first line\ndata: second line\n\n"
    steps = with_steps_before_terminal(answer(["a "]), split_json, not_json)
    with caplog.at_level(logging.WARNING, logger="chat.upstream"):
        events = play(upstream, client, steps)
    assert text_of(events) == "a joined"
    # The skipped event is logged with its data lines joined by a newline.
    assert "first line\\nsecond line" in caplog.text


def with_line_endings(steps, ending):
    """SSE steps with their line feeds replaced: CRLF, CR, or all three in turn (a CRLF then an LF
    is a line and then a blank line, however the chunks break between them)."""
    if ending != "mixed":
        return [step.replace(b"\n", ending.encode()) for step in steps]
    endings = itertools.cycle([b"\r\n", b"\n", b"\r", b"\r\n"])  # never a CR then an LF: that is one CRLF
    return [b"".join(line + next(endings) for line in step.split(b"\n")[:-1]) for step in steps]


@pytest.mark.parametrize("size", [None, 1, 7])
@pytest.mark.parametrize("ending", ["\r\n", "\r", "mixed"])
def test_crlf_cr_and_mixed_line_endings_are_accepted_wherever_the_chunks_break(upstream, client, ending, size):
    steps = with_line_endings(answer(["one ", "two"]), ending)
    events = play(upstream, client, chunked(steps, size) if size else steps)
    assert text_of(events) == "one two"
    assert [type(event) for event in events].count(TextDelta) == 2
    assert isinstance(events[-1], ResponseFinished)


def test_comment_lines_are_ignored(upstream, client):
    steps = answer(["x", "y"])
    steps.insert(0, b": keep-alive\n\n")
    steps = with_steps_before_terminal(
        steps,
        b":\n\n",
        b'event: response.output_text.delta\n: a comment inside an event\ndata: {"type": '
        b'"response.output_text.delta", "delta": "z"}\n\n',
    )
    events = play(upstream, client, steps)
    assert text_of(events) == "xyz"
    assert events[-1].status == "completed"


def test_data_done_ends_the_stream_without_waiting_for_more(upstream, client):
    """`[DONE]` ends reading; before any terminal event it is a broken stream."""
    steps = answer(["early "], done_marker=False)[:5] + [b"data: [DONE]\n\n", Pause(30), delta_event("late")]
    started = time.monotonic()
    error = failure(upstream, client, steps)
    assert time.monotonic() - started < 3
    assert error.code == "stream_truncated"
    assert text_of(error.seen) == "early "


def test_a_done_marker_after_the_terminal_event_is_fine(upstream, client):
    events = play(upstream, client, answer(["fine"], done_marker=True) + [Pause(30)])
    assert isinstance(events[-1], ResponseFinished)
    assert text_of(events) == "fine"


def test_a_final_event_without_a_trailing_blank_line_is_still_dispatched(upstream, client):
    steps = answer(["last"], done_marker=False)
    steps[-1] = steps[-1].rstrip(b"\n")
    events = play(upstream, client, steps)
    assert isinstance(events[-1], ResponseFinished)
    assert events[-1].status == "completed"


def test_a_multibyte_character_split_across_chunks_arrives_whole(upstream, client):
    text = "naïve 😀 日本語"
    event = delta_event(text)
    cut = event.index("😀".encode()) + 2  # inside the emoji's four bytes
    steps = with_steps_before_terminal(answer(["> "]), event[:cut], Pause(0.05), event[cut:])
    events = play(upstream, client, steps)
    assert text_of(events) == "> " + text


def test_malformed_events_are_skipped_and_logged_and_the_stream_goes_on(upstream, client, caplog):
    steps = with_steps_before_terminal(
        answer(["one ", "two"]),
        b"event: response.output_text.delta\ndata: {not json at all\n\n",
        b'data: {"delta": "no type"}\n\n',
        b'data: {"type": 42, "delta": "type is not a string"}\n\n',
        b"data: [1, 2, 3]\n\n",
        delta_event(" three"),
    )
    with caplog.at_level(logging.WARNING, logger="chat.upstream"):
        events = play(upstream, client, steps)
    assert text_of(events) == "one two three"
    assert events[-1].status == "completed"
    assert "not JSON" in caplog.text
    assert caplog.text.count("without a type") == 3


def test_unknown_events_fields_and_extensions_are_ignored(upstream, client):
    steps = with_steps_before_terminal(
        answer(["a"]),
        sse({"type": "acme:trace_event", "sequence_number": 6, "trace": {"span": 1}}),
        sse({"type": "response.web_search_call.searching", "sequence_number": 7, "item_id": "ws_1"}),
        sse({"type": "response.future_thing.delta", "sequence_number": 8, "delta": "not text"}),
        delta_event(
            "b",
            obfuscation="q8Zr1",
            logprobs=[{"token": "b", "logprob": -0.1, "top_logprobs": []}],
            brand_new_field={"nested": [1, 2]},
        ),
    )
    events = play(upstream, client, steps)
    assert text_of(events) == "ab"
    assert all(isinstance(event, KNOWN_EVENTS) for event in events)
    assert events[-1].status == "completed"


def test_an_eof_before_any_terminal_event_is_a_truncated_stream(upstream, client):
    steps = answer(["so ", "far"], done_marker=False)[:-1]
    error = failure(upstream, client, steps)
    assert error.code == "stream_truncated"
    assert error.message == "The API ended the stream before finishing the answer."
    assert text_of(error.seen) == "so far"


def test_a_connection_dropped_mid_stream_is_a_readable_error(upstream, client):
    steps = answer(["half "], done_marker=False)[:5] + [Hangup()]
    error = failure(upstream, client, steps)
    assert error.code == "connection_lost"
    assert error.message == "The connection to the API broke off in the middle of the answer."
    assert text_of(error.seen) == "half "


@pytest.mark.parametrize(
    "cut",
    [
        b"4",
        b"40;ext",
        b"40\r\n",
        b'40\r\nevent: response.output_text.delta\ndata: {"type"',
        b"5\r\nhello",
        b"5\r\nhello\r",
    ],
    ids=["in-a-size", "in-an-extension", "after-a-size", "in-the-data", "before-the-crlf", "in-the-crlf"],
)
def test_a_connection_dropped_inside_a_chunk_is_a_readable_error(upstream, client, cut):
    steps = answer(["half "], done_marker=False)[:5] + [Raw(cut), Hangup()]
    error = failure(upstream, client, steps)
    assert error.code == "connection_lost"
    assert text_of(error.seen) == "half "


def test_events_in_chunks_of_any_making_arrive_whole_and_in_order(upstream, client, monkeypatch):
    """Several events in one chunk, one event over three, chunk extensions, upper-case sizes, a
    trailer: the body is read off the socket (never through http.client's per-chunk reads)."""
    for name in ("read1", "_read1_chunked", "readinto", "read"):
        monkeypatch.setattr(http.client.HTTPResponse, name, None)
    steps = answer(["one ", "two ", "three ", "four"], done_marker=False)
    events = b"".join(steps[4:8])
    last = len(steps) - 1
    pieces = [events[:7], events[7:100], events[100:]]
    made = b"".join(b"%X;name=value\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    upstream.queue([*steps[:4], Raw(made), *steps[8:last], Raw(b"0\r\nTrailer: x\r\n\r\n" + steps[last])])
    seen = []
    with pytest.raises(UpstreamError) as caught:  # the terminal event came after the last chunk
        seen.extend(client.stream_response("test-model", QUESTION))
    assert caught.value.code == "stream_truncated"
    assert text_of(seen) == "one two three four"


def test_a_stall_longer_than_the_read_timeout_is_a_read_timeout(upstream, client):
    client.timeout = 0.5
    steps = answer(["before "], done_marker=False)[:5] + [Pause(10), delta_event("after")]
    started = time.monotonic()
    error = failure(upstream, client, steps)
    assert time.monotonic() - started < 3
    assert error.code == "read_timeout"
    assert error.message == "The API sent nothing for 0.5 seconds."
    assert text_of(error.seen) == "before "


def test_abort_from_another_thread_ends_a_silent_stream_at_once(upstream, client):
    upstream.queue(answer(["quiet "], done_marker=False)[:5] + [Pause(30), delta_event("never")])
    stream = client.stream_response("test-model", QUESTION)
    seen = []
    timer = threading.Timer(0.3, stream.abort)
    started = time.monotonic()
    timer.start()
    for event in stream:  # must neither raise nor wait for the 30 s pause
        seen.append(event)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert text_of(seen) == "quiet "
    # The upstream sees the connection closed: generation stops there too.
    deadline = time.monotonic() + 2
    while not upstream.requests[0].get("disconnected") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.requests[0].get("disconnected")


def test_abort_before_reading_closes_the_stream(upstream, client):
    upstream.queue(answer(["unread"]) + [Pause(30)])
    stream = client.stream_response("test-model", QUESTION)
    stream.abort()
    assert list(stream) == []


def test_a_megabyte_delta_arrives_intact(upstream, client):
    big = "ab€ü😀" * 200_000  # about 2 MB of UTF-8
    events = play(upstream, client, answer(["<", big, ">"]))
    assert text_of(events) == "<" + big + ">"
    assert events[-1].output_text == "<" + big + ">"


def test_invalid_utf8_is_an_error(upstream, client):
    bad = b'data: {"type": "response.output_text.delta", "delta": "\xff\xfe broken"}\n\n'
    steps = with_steps_before_terminal(answer(["fine "]), bad)
    error = failure(upstream, client, steps)
    assert error.code == "invalid_utf8"
    assert error.message == "The API sent text that is not valid UTF-8."
    assert text_of(error.seen) == "fine "


# --- the request ----------------------------------------------------------------------------


def test_the_request_carries_the_key_model_input_instructions_and_stream_flag(upstream, client):
    items = [
        {"type": "message", "role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": "Hello!"},
        {"type": "message", "role": "user", "content": "Again"},
    ]
    upstream.queue(answer(["ok"]))
    list(client.stream_response("test-model", items, "Answer briefly."))
    (request,) = upstream.requests
    assert request["path"] == "/v1/responses"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"model": "test-model", "input": items, "instructions": "Answer briefly.", "stream": True}


def test_without_instructions_none_are_sent(upstream, client):
    upstream.queue(answer(["ok"]))
    list(client.stream_response("test-model", QUESTION))
    assert "instructions" not in upstream.requests[0]["body"]


# --- HTTP errors before the stream ----------------------------------------------------------

# Written out again on purpose, not read from client.HTTP_SENTENCES: a test that reads the table
# it checks passes whatever the table says.
SENTENCES = {
    400: "The API rejected the request as invalid",
    401: "The API key was rejected: check OPENRESPONSES_API_KEY",
    403: "The API key is not allowed to use this model or endpoint",
    404: "The API has no such model or endpoint: check the model name and OPENRESPONSES_BASE_URL",
    408: "The API timed out waiting for the request",
    409: "The API reported a conflict with another request",
    413: "The request is too large for the API: the conversation may be too long",
    422: "The API could not process the request",
    429: "The API is rate limiting requests: try again in a moment",
    500: "The API had an internal error",
    502: "The API's gateway could not reach the model (bad gateway)",
    503: "The API is unavailable right now",
    504: "The API's gateway timed out waiting for the model",
}
# Statuses whose JSON detail is shown: it tells the person what to change in the request.
WITH_DETAIL = {400, 404, 409, 413, 422}
JSON_BODY = json.dumps(
    {"error": {"message": "Detail from the API.", "type": "invalid_request_error", "param": None, "code": "some_code"}}
).encode()


@pytest.mark.parametrize("status", sorted(SENTENCES))
def test_each_http_status_gets_its_own_sentence_with_a_json_body(upstream, client, status):
    client.retries = 0
    error = failure(upstream, client, [Status(status, JSON_BODY, {"Content-Type": "application/json"})])
    detail = ". It said: Detail from the API" if status in WITH_DETAIL else ""
    assert error.message == f"{SENTENCES[status]}{detail}."
    assert error.code == "some_code"
    assert error.status == status


@pytest.mark.parametrize("status", sorted(SENTENCES))
def test_each_http_status_gets_its_own_sentence_with_a_non_json_body(upstream, client, status):
    client.retries = 0
    body = b"<html><body><h1>Something went wrong</h1></body></html>"
    error = failure(upstream, client, [Status(status, body, {"Content-Type": "text/html"})])
    assert error.message == SENTENCES[status] + "."
    assert error.code == f"http_{status}"
    assert "<html>" not in error.message


def test_an_unlisted_http_status_still_gets_a_sentence(upstream, client):
    error = failure(upstream, client, [Status(418, b"I'm a teapot")])
    assert error.message == "The API answered with HTTP status 418."
    assert error.code == "http_418"


def test_a_long_error_detail_is_shortened(upstream, client):
    body = json.dumps({"error": {"message": "word " * 500, "code": "too_wordy"}}).encode()
    error = failure(upstream, client, [Status(400, body)])
    assert len(error.message) < 400
    assert error.message.endswith("….")


def test_running_out_of_quota_is_not_retried(upstream, client):
    quota = {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": "insufficient_quota"}
    body = json.dumps({"error": quota}).encode()
    error = failure(upstream, client, [Status(429, body)], answer(["unused"]))
    assert error.code == "insufficient_quota"
    assert error.message == "The API account has run out of credit or quota."
    assert len(upstream.requests) == 1


# --- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overload_statuses_are_retried_a_bounded_number_of_times(upstream, client, status):
    failures = [[Status(status, b"busy", {"Retry-After": "0"})] for _ in range(5)]
    error = failure(upstream, client, *failures)
    assert len(upstream.requests) == 3  # the first try and client.retries == 2 more
    assert error.message == SENTENCES[status] + " (tried 3 times)."
    assert error.status == status


def test_a_retry_waits_as_long_as_retry_after_says(upstream, client):
    upstream.queue([Status(503, b"", {"Retry-After": "1"})], answer(["after ", "waiting"]))
    started = time.monotonic()
    events = list(client.stream_response("test-model", QUESTION))
    elapsed = time.monotonic() - started
    assert text_of(events) == "after waiting"
    assert len(upstream.requests) == 2
    assert 0.9 <= elapsed < 5


def test_without_retry_after_retries_back_off_exponentially(upstream, client):
    client.backoff = 0.2
    upstream.queue([Status(502)], [Status(502)], answer(["third time lucky"]))
    started = time.monotonic()
    events = list(client.stream_response("test-model", QUESTION))
    assert text_of(events) == "third time lucky"
    assert time.monotonic() - started >= 0.2 + 0.4 - 0.05


def test_a_retry_after_longer_than_the_limit_fails_at_once(upstream, client):
    client.max_retry_wait = 2
    started = time.monotonic()
    error = failure(upstream, client, [Status(429, b"", {"Retry-After": "3600"})], answer(["unused"]))
    assert time.monotonic() - started < 1.5
    assert len(upstream.requests) == 1
    assert error.message == "The API is rate limiting requests: try again in a moment (it asked to wait 3600 seconds)."


def test_waiting_between_tries_ends_early_when_stopped(upstream, client):
    upstream.queue([Status(503, b"", {"Retry-After": "10"})], answer(["unused"]))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(UpstreamError):
        client.stream_response("test-model", QUESTION, stop_event=stop)
    assert time.monotonic() - started < 1.5
    assert len(upstream.requests) == 1


def test_nothing_is_retried_once_the_stream_started(upstream, client):
    error = failure(upstream, client, answer(["partial"], done_marker=False)[:5] + [Hangup()], answer(["unused"]))
    assert error.code == "connection_lost"
    assert len(upstream.requests) == 1


def test_other_client_errors_are_not_retried(upstream, client):
    error = failure(upstream, client, [Status(500, b"oops")], answer(["unused"]))
    assert error.code == "http_500"
    assert len(upstream.requests) == 1


# --- network failures -----------------------------------------------------------------------


def test_a_refused_connection_is_retried_then_explained(upstream):
    url = closed_port_url()
    client = UpstreamClient(base_url=url, api_key=KEY, backoff=0.01)
    with pytest.raises(UpstreamError) as caught:
        client.stream_response("test-model", QUESTION)
    host = url.removeprefix("http://").removesuffix("/v1")
    assert caught.value.code == "connection_refused"
    assert caught.value.message == f"The API at {host} refused the connection (tried 3 times)."


def test_an_unknown_host_fails_fast_and_offline():
    client = UpstreamClient(base_url="http://nonexistent.invalid/v1", api_key=KEY, backoff=2)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        client.stream_response("test-model", QUESTION)
    assert time.monotonic() - started < 1.5  # a retry would wait 2 s first
    assert caught.value.code == "unknown_host"
    assert caught.value.message == "The API's host name nonexistent.invalid could not be found."


def test_a_connect_timeout_is_explained():
    with unresponsive_url() as url:
        client = UpstreamClient(base_url=url, api_key=KEY, connect_timeout=0.8, backoff=0.01)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            client.stream_response("test-model", QUESTION)
        elapsed = time.monotonic() - started
    host = url.removeprefix("http://").removesuffix("/v1")
    assert caught.value.code == "connect_timeout"
    assert caught.value.message == f"Timed out connecting to the API at {host}."
    assert elapsed < 1.5  # one timeout, not retried: a second try would double the wait


def test_a_tls_failure_is_explained_and_not_retried(upstream):
    client = UpstreamClient(base_url=upstream.base_url.replace("http://", "https://"), api_key=KEY, backoff=2)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        client.stream_response("test-model", QUESTION)
    host = upstream.base_url.removeprefix("http://").removesuffix("/v1")
    assert caught.value.code == "tls_error"
    assert caught.value.message == f"A secure (TLS) connection to the API at {host} could not be set up."
    assert time.monotonic() - started < 1.5  # a retry would wait 2 s first


def test_a_slow_answer_before_the_status_line_is_a_read_timeout(upstream, client):
    client.timeout = 0.5
    error = failure(upstream, client, [Pause(5), Status(200)])
    assert error.code == "read_timeout"
    assert error.message == "The API did not start answering within 0.5 seconds."


# --- the key stays secret -------------------------------------------------------------------


def test_the_api_key_never_appears_in_errors_or_in_the_clients_repr(upstream, client):
    assert KEY not in repr(client)
    assert KEY not in str(client)
    echoed = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}.", "code": "invalid_api_key"}})
    scenarios = [
        [Status(400, echoed.encode())],
        [Status(401, echoed.encode())],
        [Status(404, echoed.encode())],
        [Status(500, echoed.encode())],
        answer(["x"], done_marker=False)[:5] + [Hangup()],
        answer(["x"], done_marker=False)[:5] + [sse({"type": "error", "error": {"code": "bad", "message": KEY}})],
    ]
    messages = []
    for scenario in scenarios:
        error = failure(upstream, client, scenario)
        messages += [error.message, str(error), repr(error)]
        messages += [event.message for event in error.seen if isinstance(event, StreamError)]
    failed_terminal = sse(
        {"type": "response.failed", "response": {"status": "failed", "error": {"code": "x", "message": f"key {KEY}"}}}
    )
    events = play(upstream, client, [failed_terminal])
    messages.append(events[-1].error_message)
    assert messages
    assert not [message for message in messages if KEY in message]
