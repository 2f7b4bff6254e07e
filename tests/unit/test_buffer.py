"""The coalescing buffer (`chat.answering.buffer`) with a clock stepped by hand: no threads, no
database, no wall-clock windows."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.answering.buffer import Chunk, StreamBuffer
from chat.protocol import STREAM_NAMES

WINDOW = 0.03


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def buffer_and_clock():
    clock = Clock()
    return StreamBuffer(STREAM_NAMES, WINDOW, clock=clock), clock


def test_a_delta_after_a_quiet_period_goes_out_at_once():
    buffer, clock = buffer_and_clock()
    assert buffer.add("text", "Hello") == [Chunk(1, "text", "Hello")]
    assert buffer.timer() is None, "nothing waits: no timer"
    clock.advance(WINDOW)
    assert buffer.add("text", " again") == [Chunk(2, "text", " again")]


def test_deltas_faster_than_the_window_wait_for_its_end_and_go_out_as_one():
    buffer, clock = buffer_and_clock()
    buffer.add("text", "a")
    clock.advance(0.01)
    assert buffer.add("text", "b") == []
    assert buffer.timer() == pytest.approx(WINDOW - 0.01)
    clock.advance(0.005)
    assert buffer.add("text", "c") == []
    assert buffer.timer() is None, "one timer per window"
    clock.advance(0.015)
    assert buffer.flush_due() == [Chunk(2, "text", "bc")]
    assert buffer.timer() is None


def test_a_timer_that_comes_late_still_flushes_and_asks_for_no_negative_wait():
    buffer, clock = buffer_and_clock()
    buffer.add("text", "a")
    buffer.add("text", "b")
    clock.advance(1.0)
    assert buffer.timer() == 0.0
    assert buffer.flush_due() == [Chunk(2, "text", "b")]


def test_a_flush_sends_each_stream_in_order_with_its_own_seq():
    buffer, clock = buffer_and_clock()
    buffer.add("text", "t0")
    buffer.add("text", "t1")
    buffer.add("reasoning", "r")
    buffer.add("refusal", "no")
    assert buffer.flush() == [Chunk(2, "reasoning", "r"), Chunk(3, "refusal", "no"), Chunk(4, "text", "t1")]
    assert buffer.texts() == {"reasoning": "r", "refusal": "no", "text": "t0t1"}
    assert buffer.flush() == [], "nothing waits: nothing goes out, no seq used"
    assert buffer.seq == 4


def test_empty_deltas_are_no_output_and_use_no_seq():
    buffer, _ = buffer_and_clock()
    assert buffer.add("text", "") == []
    assert not buffer.has_output() and buffer.seq == 0 and buffer.timer() is None


def test_output_counts_what_waits_and_the_final_texts_replace_what_streamed():
    buffer, _ = buffer_and_clock()
    buffer.add("text", "a")
    buffer.add("refusal", "waiting")
    assert buffer.has_output()
    buffer.replace({"text": "final", "reasoning": "", "refusal": "no"})
    assert buffer.texts() == {"text": "final", "reasoning": "", "refusal": "no"}


@given(st.lists(st.tuples(st.sampled_from(STREAM_NAMES), st.text(max_size=5), st.floats(0, 0.1)), max_size=40))
def test_whatever_the_timing_every_delta_goes_out_once_in_order_and_none_waits_past_its_window(steps):
    buffer, clock = buffer_and_clock()
    sent, due_at = [], None
    for stream, delta, pause in steps:
        clock.advance(pause)
        if due_at is not None and clock.now >= due_at:
            sent += buffer.flush_due()  # the timer fires before later deltas arrive
            due_at = None
        sent += buffer.add(stream, delta)
        delay = buffer.timer()
        if delay is not None:
            assert delay <= WINDOW + 1e-9  # within the window, give or take float rounding
            due_at = clock.now + delay
    sent += buffer.flush()
    assert [chunk.seq for chunk in sent] == list(range(1, len(sent) + 1))
    for name in STREAM_NAMES:
        expected = "".join(delta for stream, delta, _ in steps if stream == name)
        assert "".join(chunk.delta for chunk in sent if chunk.stream == name) == expected
        assert buffer.text(name) == expected


def test_a_continued_answer_starts_from_its_earlier_text_which_is_never_a_delta_nor_output():
    """Continue: the texts and snapshots hold the text continued from; the deltas only what follows."""
    buffer, clock = buffer_and_clock()
    buffer.start_from({"text": "Once upon"})
    assert buffer.texts() == {"reasoning": "", "refusal": "", "text": "Once upon"}
    assert (buffer.seq, buffer.has_output()) == (0, False)
    assert buffer.add("text", " a time") == [Chunk(1, "text", " a time")]
    assert buffer.text("text") == "Once upon a time"
    # The upstream's final text is the continuation's own: it comes after the start.
    assert buffer.after_start({"text": " a time."}) == {"text": "Once upon a time."}
    # The saved final texts are whole: they replace the start too.
    buffer.replace({"reasoning": "", "refusal": "", "text": "Once upon a time."})
    assert buffer.text("text") == "Once upon a time."
