"""The chunked transfer coding undone on the bytes of each socket read (`ChunkedBody`,
chat/upstream/client.py), however the reads cut it."""

import http.client
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.upstream.client import ChunkedBody

PIECES = [b"event: a\ndata: {}\n\n", b"x" * 300, "naïve 😀".encode(), b"\r\n\r\n", b"z"]
ENCODED = (
    b"13\r\n" + PIECES[0] + b"\r\n"
    b"12C;name=value;other\r\n" + PIECES[1] + b"\r\n"
    b"b \r\n" + PIECES[2] + b"\r\n"
    b"4\r\n" + PIECES[3] + b"\r\n"
    b"01\r\n" + PIECES[4] + b"\r\n"
    b"0\r\nTrailer: ignored\r\n\r\n"
    b"after the body: never read"
)
BODY = b"".join(PIECES)


def decoded(reads):
    body, out = ChunkedBody(), []
    for read in reads:
        out.append(body.feed(read))
        if body.done:
            break
    return b"".join(out), body.done


def cut(data, offsets):
    bounds = [0, *sorted(offsets), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def test_one_read_of_the_whole_body():
    assert decoded([ENCODED]) == (BODY, True)


@pytest.mark.parametrize("offset", range(1, len(ENCODED)))
def test_a_read_cut_at_any_offset(offset):
    assert decoded(cut(ENCODED, [offset])) == (BODY, True)


def test_a_byte_a_read():
    assert decoded([ENCODED[index : index + 1] for index in range(len(ENCODED))]) == (BODY, True)


@given(st.lists(st.integers(min_value=1, max_value=len(ENCODED) - 1), max_size=12))
def test_reads_cut_anywhere(offsets):
    assert decoded(cut(ENCODED, offsets)) == (BODY, True)


def test_a_body_not_ended_is_not_done():
    assert decoded([ENCODED[: ENCODED.index(b"0\r\nTrailer")]]) == (BODY, False)


@pytest.mark.parametrize("size_line", [b"zz\r\n", b"-5\r\n", b"\r\n", b";ext\r\n"])
def test_a_size_that_is_no_size_loses_the_framing(size_line):
    with pytest.raises(http.client.IncompleteRead):
        ChunkedBody().feed(b"3\r\nabc\r\n" + size_line)


def test_an_endless_size_line_is_refused():
    body = ChunkedBody()
    body.feed(b"3\r\nabc\r\n" + b"0" * 1000)
    with pytest.raises(http.client.LineTooLong):
        body.feed(b"0" * 70_000)
