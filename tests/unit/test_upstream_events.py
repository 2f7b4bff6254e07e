"""The Open Responses event parser (`chat.upstream.parse_event`) on decoded JSON in memory.

The same events arriving through a real SSE server are tested in tests/test_upstream_client.py.
"""

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.upstream import (
    MAX_COUNT,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    RefusalDone,
    ResponseFinished,
    ResponseStarted,
    StreamError,
    TextDelta,
    TextDone,
    Usage,
    parse_event,
)


def finished(kind, **response):
    return parse_event({"type": kind, "response": response})


def test_text_deltas_and_dones_carry_their_text_and_indexes():
    assert parse_event(
        {"type": "response.output_text.delta", "delta": "Hi", "output_index": 1, "content_index": 2}
    ) == TextDelta("Hi", 1, 2)
    assert parse_event({"type": "response.output_text.done", "text": "Hi there"}) == TextDone("Hi there", 0, 0)


@pytest.mark.parametrize("name", ["reasoning_summary_text", "reasoning", "reasoning_text"])
def test_each_name_of_reasoning_gives_reasoning_events_by_summary_or_content_index(name):
    delta = {"type": f"response.{name}.delta", "delta": "hm", "output_index": 1}
    assert parse_event(delta | {"summary_index": 2, "content_index": 5}) == ReasoningDelta("hm", 1, 2)
    assert parse_event(delta | {"content_index": 5}) == ReasoningDelta("hm", 1, 5)
    assert parse_event({"type": f"response.{name}.done", "text": "all"}) == ReasoningDone("all", 0, 0)


def test_refusals_carry_their_text():
    assert parse_event({"type": "response.refusal.delta", "delta": "No", "content_index": 1}) == RefusalDelta(
        "No", 0, 1
    )
    assert parse_event({"type": "response.refusal.done", "refusal": "No."}) == RefusalDone("No.", 0, 0)


def test_the_start_events_carry_the_id_the_model_and_whether_it_is_queued():
    response = {"id": "resp_1", "model": "m", "status": "in_progress"}
    assert parse_event({"type": "response.created", "response": response}) == ResponseStarted("resp_1", "m")
    assert parse_event({"type": "response.in_progress", "response": {}}) == ResponseStarted("", "", "in_progress")
    queued = parse_event({"type": "response.queued", "response": response})
    assert queued == ResponseStarted("resp_1", "m", "queued")


def test_an_error_event_is_read_nested_or_flat_with_defaults():
    nested = {"type": "error", "error": {"code": "rate_limit", "message": "Slow down."}}
    assert parse_event(nested) == StreamError("rate_limit", "Slow down.")
    assert parse_event({"type": "error", "code": "flat", "message": "Flat."}) == StreamError("flat", "Flat.")
    assert parse_event({"type": "error", "error": {"type": "server_error"}}).code == "server_error"
    assert parse_event({"type": "error", "code": 500}).code == "500", "a numeric code"
    assert parse_event({"type": "error"}) == StreamError("stream_error", "The API reported an error.")


def test_a_completed_response_carries_its_texts_and_usage():
    event = finished(
        "response.completed",
        id="resp_1",
        model="m",
        output=[
            {"type": "reasoning", "summary": [{"text": "first"}, {"text": "second"}], "content": [{"text": "raw"}]},
            {"type": "reasoning", "content": [{"text": "raw only"}]},
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text", "text": "lo"}],
            },
            {"type": "message", "content": [{"type": "refusal", "refusal": "No"}]},
        ],
        usage={
            "input_tokens": 11,
            "output_tokens": 2,
            "total_tokens": 13,
            "input_tokens_details": {"cached_tokens": 3},
            "output_tokens_details": {"reasoning_tokens": 1},
        },
    )
    assert event == ResponseFinished(
        status="completed",
        response_id="resp_1",
        model="m",
        usage=Usage(11, 2, 13, 3, 1),
        output_text="Hello",
        reasoning_text="first\n\nsecond\n\nraw only",
        refusal="No",
    )


def test_without_a_message_item_there_is_no_output_text_rather_than_an_empty_one():
    assert finished("response.completed").output_text is None
    assert finished("response.completed", output=[{"type": "message", "content": []}]).output_text == ""


def test_failed_and_incomplete_responses_say_why():
    failed = finished("response.failed", error={"code": "server_error", "message": "Boom."})
    assert (failed.status, failed.error_code, failed.error_message) == ("failed", "server_error", "Boom.")
    incomplete = finished("response.incomplete", incomplete_details={"reason": "max_output_tokens"})
    assert (incomplete.status, incomplete.incomplete_reason) == ("incomplete", "max_output_tokens")
    assert finished("response.incomplete").incomplete_reason == "unknown"
    assert finished("response.completed").incomplete_reason == ""


def test_counts_a_database_column_could_not_hold_are_absent():
    usage = finished(
        "response.completed", usage={"input_tokens": -1, "output_tokens": True, "total_tokens": MAX_COUNT + 1}
    ).usage
    assert usage == Usage()
    assert finished("response.completed", usage={"input_tokens": MAX_COUNT}).usage.input_tokens == MAX_COUNT
    assert finished("response.completed", usage="lots").usage is None


def test_nul_characters_are_dropped_from_text():
    assert parse_event({"type": "response.output_text.delta", "delta": "a\x00b"}) == TextDelta("ab")


def test_fields_of_the_wrong_type_count_as_absent():
    assert parse_event({"type": "response.output_text.delta", "delta": 5, "output_index": "1"}) == TextDelta("")
    assert parse_event({"type": "response.output_text.delta", "content_index": True}).content_index == 0
    assert parse_event({"type": "response.created", "response": ["x"]}) == ResponseStarted("", "")
    assert finished("response.completed", output={"type": "message"}).output_text is None


@pytest.mark.parametrize(
    "kind",
    [
        "response.output_item.added",
        "response.content_part.added",
        "response.web_search_call.searching",
        "response.future_thing.delta",
        "acme:trace_event",
        "",
    ],
)
def test_unknown_events_are_ignored(kind):
    assert parse_event({"type": kind, "delta": "not text", "response": {}}) is None


# --- leniency: any JSON in any field ----------------------------------------------------------

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def maybe(shaped):
    """Values of the right shape, or anything at all."""
    return shaped | anything


def some_of(**fields):
    return st.fixed_dictionaries({}, optional={name: maybe(strategy) for name, strategy in fields.items()})


part = some_of(
    type=st.sampled_from(["output_text", "refusal", "summary_text", "reasoning_text"]), text=anything, refusal=anything
)
item = some_of(
    type=st.sampled_from(["message", "reasoning"]),
    content=st.lists(maybe(part), max_size=3),
    summary=st.lists(maybe(part), max_size=3),
)
usage = some_of(
    input_tokens=st.integers(),
    output_tokens=st.integers(),
    total_tokens=st.integers(),
    input_tokens_details=some_of(cached_tokens=st.integers()),
    output_tokens_details=some_of(reasoning_tokens=st.integers()),
)
error = some_of(code=anything, type=anything, message=anything)
response = some_of(
    id=anything,
    model=anything,
    output=st.lists(maybe(item), max_size=3),
    usage=usage,
    error=error,
    incomplete_details=some_of(reason=anything),
)
EVENT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_text.delta",
    "response.output_text.done",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.done",
    "response.refusal.delta",
    "response.refusal.done",
    "error",
    "response.completed",
    "response.failed",
    "response.incomplete",
]
events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={
        "delta": anything,
        "text": anything,
        "refusal": anything,
        "output_index": anything,
        "content_index": anything,
        "summary_index": anything,
        "code": anything,
        "message": anything,
        "error": maybe(error),
        "response": maybe(response),
    },
)


@hypothesis_settings(deadline=None)  # a busy CI machine is no parser bug
@given(events)
def test_fields_of_the_wrong_type_never_crash_the_parser(data):
    event = parse_event(data)
    if isinstance(event, ResponseFinished):
        assert isinstance(event.error_code, str) and isinstance(event.error_message, str)
        counts = vars(event.usage).values() if event.usage else ()
        assert all(count is None or 0 <= count <= MAX_COUNT for count in counts)
    elif isinstance(event, (TextDelta, ReasoningDelta, RefusalDelta)):
        assert isinstance(event.delta, str)
    elif isinstance(event, StreamError):
        assert event.code and event.message
