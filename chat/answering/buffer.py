"""The coalescing buffer of one answer: pure state, no threads, no database, no clock of its own.

Deltas that arrive after a quiet period go out at once; deltas arriving faster than the window
wait and go out together at the end of that window, so that none waits longer than one window
(DESIGN.md, "Coalescing adds no delay to a slow stream"). The buffer decides; its owner sends the
chunks it returns and arms the timer it asks for (chat/answering/job.py). The clock is injected,
so tests step it by hand (tests/unit/test_buffer.py).
"""

import time
from typing import NamedTuple


class Chunk(NamedTuple):
    """One flushed delta of one stream, with its place in the answer's sequence (a tuple: one is
    made per flush and read once)."""

    seq: int
    stream: str
    delta: str


class StreamBuffer:
    def __init__(self, streams, window, clock=time.monotonic):
        self.streams = tuple(streams)  # in the order a flush sends them
        self.window = window
        self.clock = clock
        self.seq = 0
        # What an answer made by Continue goes on from (its earlier version's text): part of every
        # text and snapshot, never a delta, never counted as output (`has_output`).
        self.start = {name: "" for name in self.streams}
        self.flushed = {name: [] for name in self.streams}
        self.pending = {name: [] for name in self.streams}
        self.last_flush = float("-inf")
        self.timer_armed = False

    @property
    def has_pending(self):
        return any(self.pending.values())

    def add(self, stream, delta):
        """Take one delta; the chunks to send now (the window since the last flush is over), else
        [] and the delta waits for the timer (see `timer`)."""
        if not delta:
            return []
        self.pending[stream].append(delta)
        if self.clock() - self.last_flush >= self.window:
            return self.flush()
        return []

    def timer(self):
        """Seconds until the waiting deltas are due, when a timer must be armed for them (once per
        window); None when nothing waits or a timer is armed already. At its end: `flush_due`."""
        if self.timer_armed or not self.has_pending:
            return None
        self.timer_armed = True
        return max(0.0, self.last_flush + self.window - self.clock())

    def flush_due(self):
        """The armed timer's end: whatever waits goes out."""
        self.timer_armed = False
        return self.flush()

    def flush(self):
        """Everything waiting, one chunk per stream with deltas, each with the next seq."""
        chunks = []
        for name in self.streams:
            pending = self.pending[name]
            if not pending:
                continue
            delta = "".join(pending)
            pending.clear()
            self.flushed[name].append(delta)
            self.seq += 1
            chunks.append(Chunk(self.seq, name, delta))
        if chunks:
            self.last_flush = self.clock()
        return chunks

    def start_from(self, texts):
        """Go on from `texts` ({stream name: text}, the continued version's), before any delta."""
        self.start = {name: texts.get(name, "") for name in self.streams}

    def after_start(self, texts):
        """`texts` the upstream sent whole (its final texts, this answer's part only), each after
        the text it went on from."""
        return {name: self.start[name] + text for name, text in texts.items()}

    def text(self, stream):
        """The stream's text so far: where it started, then what was flushed."""
        return self.start[stream] + "".join(self.flushed[stream])

    def texts(self):
        return {name: self.text(name) for name in self.streams}

    def has_output(self):
        """Whether anything at all came, flushed or not."""
        return any(self.flushed[name] or self.pending[name] for name in self.streams)

    def replace(self, texts):
        """Take the final texts as saved (they may differ from what streamed); whole texts, start included."""
        self.start = {name: "" for name in self.streams}
        self.flushed = {name: [texts[name]] for name in self.streams}
