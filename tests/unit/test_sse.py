"""The server-sent events framing (`chat.upstream.sse`) on bytes in memory, cut every way."""

import itertools

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.upstream.sse import sse_data

STREAM = (
    "event: response.created\n"
    'data: {"type": "response.created"}\n'
    "\n"
    ": keep-alive\n"
    "\n"
    "event: response.output_text.delta\n"
    "id: 7\n"
    "retry: 1000\n"
    'data: {"type": "response.output_text.delta",\n'
    'data:  "delta": "naïve 😀"}\n'
    "\n"
    "data: last\n"
    "\n"
).encode()
DATA = [
    '{"type": "response.created"}',
    '{"type": "response.output_text.delta",\n "delta": "naïve 😀"}',
    "last",
]


def data_of(*chunks):
    return list(sse_data(chunks))


def cut(stream, *points):
    """The stream in pieces, cut at `points`."""
    points = [0, *points, len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(points)]


def with_ending(stream, ending):
    return stream.replace(b"\n", ending)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_cut_at_every_offset_gives_the_same_data(ending):
    stream = with_ending(STREAM, ending)
    assert data_of(stream) == DATA
    for point in range(len(stream) + 1):
        assert data_of(*cut(stream, point)) == DATA, point


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_one_byte_at_a_time_and_cut_twice_gives_the_same_data(ending):
    stream = with_ending(STREAM, ending)
    assert data_of(*[stream[index : index + 1] for index in range(len(stream))]) == DATA
    for first in range(0, len(stream) + 1, 3):
        for second in range(first, len(stream) + 1, 5):
            assert data_of(*cut(stream, first, second)) == DATA, (first, second)


def test_mixed_line_endings_in_one_stream():
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert data_of(stream) == ["a\nb\nc", "d"]
    for point in range(len(stream) + 1):
        assert data_of(*cut(stream, point)) == ["a\nb\nc", "d"], point


def test_a_crlf_split_between_two_chunks_is_one_line_ending_not_two():
    # Were the LF a line of its own, it would end the event after "a" and "b" would be another.
    assert data_of(b"data: a\r", b"\ndata: b\r\n", b"\r\n") == ["a\nb"]
    assert data_of(b"data: a\r", b"", b"\ndata: b\n\n") == ["a\nb"], "an empty chunk between them changes nothing"


def test_empty_chunks_change_nothing():
    for ending in (b"\n", b"\r\n", b"\r"):
        stream = with_ending(STREAM, ending)
        assert data_of(*[piece for index in range(len(stream)) for piece in (b"", stream[index : index + 1])]) == DATA


def test_comments_are_skipped_between_and_inside_events():
    stream = b": keep-alive\n\n:\n\ndata: a\n: inside\ndata: b\n\n:only a comment\n\n"
    assert data_of(stream) == ["a\nb"]


def test_fields_other_than_data_are_ignored():
    stream = b"event: x\nid: 1\nretry: 5\nunknown: y\ndata: kept\ndatum: no\n\n"
    assert data_of(stream) == ["kept"]


def test_one_space_after_the_colon_is_dropped_and_no_more():
    assert data_of(b"data:tight\n\ndata: one\n\ndata:  two\n\ndata:\n\n") == ["tight", "one", " two", ""]


def test_blank_lines_without_data_dispatch_nothing():
    assert data_of(b"\n\n\r\n\r\revent: x\n\n") == []


def test_a_final_event_without_its_blank_line_is_dispatched_at_the_end():
    for stream in (b"data: a\n\ndata: last", b"data: a\n\ndata: last\n", b"data: a\n\ndata: last\r"):
        assert data_of(stream) == ["a", "last"], stream
    assert data_of(b"data: one\ndata: two") == ["one\ntwo"]


def test_done_ends_the_events_and_nothing_after_it_is_read():
    pulled = []

    def chunks():
        for chunk in (b"data: a\n\n", b"data: [DONE]\n\n", b"data: after\n\n"):
            pulled.append(chunk)
            yield chunk
        raise AssertionError("read past [DONE]")

    assert list(sse_data(chunks())) == ["a"]
    assert pulled == [b"data: a\n\n", b"data: [DONE]\n\n"]


def test_done_is_recognised_with_spaces_around_it_cut_anywhere_and_without_its_blank_line():
    for stream in (b"data: [DONE]  \n\ndata: x\n\n", b"data:[DONE]\r\n\r\n", b"data: [DONE]"):
        for point in range(len(stream) + 1):
            assert data_of(*cut(b"data: a\n\n" + stream, point)) == ["a"], (stream, point)
    assert data_of(b"data: [DONE] later\n\ndata: b\n\n") == ["[DONE] later", "b"], "only the marker alone"


def test_a_multibyte_character_cut_at_every_offset_arrives_whole():
    stream = "data: naïve 😀 日本語\n\n".encode()
    for point in range(len(stream) + 1):
        assert data_of(*cut(stream, point)) == ["naïve 😀 日本語"], point


def test_invalid_utf8_raises_but_the_events_before_it_come_first():
    events = sse_data([b"data: fine\n\n", b'data: {"delta": "\xff\xfe broken"}\n\n'])
    assert next(events) == "fine"
    with pytest.raises(UnicodeDecodeError):
        next(events)
    with pytest.raises(UnicodeDecodeError):
        data_of("data: cut 😀".encode()[:-1] + b"\n\n")


def test_a_huge_line_in_tiny_chunks_arrives_whole():
    text = "ab€" * 100_000
    stream = f"data: {text}\n\n".encode()
    assert data_of(*[stream[index : index + 7] for index in range(0, len(stream), 7)]) == [text]


# Data lines: any text without a line break, never the end marker.
line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=8)
event = st.lists(line, min_size=1, max_size=3).filter(lambda lines: "\n".join(lines).strip() != "[DONE]")


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event, max_size=5),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    comments=st.booleans(),
)
def test_any_events_with_any_line_endings_cut_anywhere_give_their_data_back(events, endings, cuts, comments):
    ending = itertools.cycle(endings)
    lines = []
    for lines_of_event in events:
        if comments:
            lines.append(b": comment")
        lines += [b"data: " + text.encode() for text in lines_of_event]
        lines.append(b"")
    stream = b""
    previous = b""
    for text in lines:
        chosen = next(ending)
        if previous.endswith(b"\r") and not text and chosen == b"\n":
            chosen = b"\r"  # a CR then an LF is one CRLF: this blank line would vanish into it
        stream += text + chosen
        previous = text + chosen
    points = sorted({min(point, len(stream)) for point in cuts})
    assert data_of(*cut(stream, *points)) == ["\n".join(lines_of_event) for lines_of_event in events]


def test_a_crlf_split_then_a_lone_lf_is_a_blank_line():
    # CR | LF | LF: the first LF completes the CRLF, the second ends the event.
    assert data_of(b"data: a\r", b"\n", b"\n", b"data: b\n\n") == ["a", "b"]
    assert data_of(b"data: a\r", b"\n", b"\r", b"data: b\r\r") == ["a", "b"]


def test_an_event_line_before_the_data_and_data_named_in_other_lines():
    assert data_of(b"event: x\ndata: {}\n\n") == ["{}"]
    assert data_of(b"event: data: no\ndata: yes\n\n") == ["yes"]
    assert data_of(b"id: data:\ndata: a\ndata: b\n\n") == ["a\nb"]
    assert data_of(b"event: x\n\n") == []
