"""Light measuring clients on asyncio: a websocket tab of the site, and a direct SSE reader.

Both stamp arrivals with `time.monotonic_ns()` when the event loop hands them the bytes
(`data_received`), before any parsing, and both run in the same process and loop: whatever the
loop's load adds to one it adds to the other, and the subtraction site - direct removes it.
The websocket framing is the `websockets` library's sans-I/O protocol (masking, pings, close).
"""

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.typing import Origin
from websockets.uri import parse_uri

from bench.timed_upstream import MARKER


@dataclass
class AnswerRecord:
    """Everything measured about one answer, on both paths."""

    answer_id: str
    deltas: int
    send_ns: int = 0
    message_id: str = ""
    conversation_id: str = ""
    # delta index -> emission (upstream clock) and arrivals; lists to catch duplicates
    emitted: dict = field(default_factory=dict)
    site: dict = field(default_factory=dict)
    direct: dict = field(default_factory=dict)
    site_duplicates: int = 0
    direct_duplicates: int = 0
    site_request_ns: int = 0
    first_byte_ns: int = 0
    first_delta_ns: int = 0  # arrival of the first message.delta frame at the site client
    delta_frames: int = 0
    delta_wire_bytes: int = 0
    delta_text_bytes: int = 0
    answer_wire_bytes: int = 0  # every frame of the answer, message.done included
    answer_frames: int = 0
    seq_errors: int = 0
    last_seq: int = 0
    streamed_text: list = field(default_factory=list)
    final_text: str | None = None
    final_status: str = ""
    done_ns: int = 0
    direct_done: bool = False
    site_done: asyncio.Event = field(default_factory=asyncio.Event)
    direct_finished: asyncio.Event = field(default_factory=asyncio.Event)

    def note_site_delta(self, frame, arrived_ns, wire_bytes):
        self.delta_frames += 1
        self.delta_wire_bytes += wire_bytes
        delta = frame["delta"]
        self.delta_text_bytes += len(delta.encode())
        self.streamed_text.append(delta)
        if frame["seq"] != self.last_seq + 1:
            self.seq_errors += 1
        self.last_seq = frame["seq"]
        if not self.first_delta_ns:
            self.first_delta_ns = arrived_ns
        for index, emitted in MARKER.findall(delta):
            index = int(index)
            if index in self.site:
                self.site_duplicates += 1
                continue
            self.site[index] = arrived_ns
            self.emitted[index] = int(emitted)

    def note_direct_delta(self, index, emitted_ns, arrived_ns):
        if index in self.direct:
            self.direct_duplicates += 1
            return
        self.direct[index] = arrived_ns
        self.emitted.setdefault(index, emitted_ns)


def wire_size(payload_length):
    """Bytes of a server-to-client websocket frame (unmasked) with this payload length."""
    if payload_length < 126:
        return payload_length + 2
    if payload_length < 65536:
        return payload_length + 4
    return payload_length + 10


class WebsocketTab(asyncio.Protocol):
    """One browser tab's websocket to /ws/chat/, with the session cookie of a logged-in user.

    Frames of the answers it is told to watch (`watch(record)`) are measured into their records;
    any other frame goes to `frames`, an asyncio.Queue the scenario reads for replies.
    """

    def __init__(self, url, origin, cookie):
        self.url = url
        self.origin = origin
        self.cookie = cookie
        self.protocol = ClientProtocol(parse_uri(url), origin=Origin(origin), max_size=2**26)
        self.transport = None
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.frames = asyncio.Queue()
        self.watching = {}  # message id -> AnswerRecord
        self.pending = None  # the record whose message.created is awaited
        # False: this tab only sends; the deltas it also receives are not measured (nor parsed).
        self.measure = True
        self.bytes_received = 0

    @classmethod
    async def open(cls, host, port, cookie, timeout=30):
        loop = asyncio.get_running_loop()
        url = f"ws://{host}:{port}/ws/chat/"
        tab = cls(url, f"http://{host}:{port}", cookie)
        await loop.create_connection(lambda: tab, host, port)
        await asyncio.wait_for(tab.opened, timeout)
        return tab

    def connection_made(self, transport):
        self.transport = transport
        request = self.protocol.connect()
        request.headers["Cookie"] = self.cookie
        self.protocol.send_request(request)
        self.flush()

    def flush(self):
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.write_eof() if self.transport.can_write_eof() else None

    def data_received(self, data):
        arrived_ns = time.monotonic_ns()
        self.bytes_received += len(data)
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code == 101 and self.protocol.handshake_exc is None:
                    self.opened.set_result(self)
                else:
                    self.opened.set_exception(ConnectionError(f"websocket handshake answered {event.status_code}"))
            elif event.opcode is Opcode.TEXT:
                self.on_text(event.data, arrived_ns)
            elif event.opcode is Opcode.CLOSE and not self.closed.done():
                self.closed.set_result(self.protocol.close_code)
        self.flush()

    def on_text(self, payload, arrived_ns):
        if not self.measure and payload.startswith(b'{"type": "message.delta"'):
            return
        frame = json.loads(payload)
        kind = frame.get("type")
        message = frame.get("message")
        record = self.watching.get(message["id"] if isinstance(message, dict) else message)
        if record is not None:
            size = wire_size(len(payload))
            record.answer_frames += 1
            record.answer_wire_bytes += size
            if kind == "message.delta":
                record.note_site_delta(frame, arrived_ns, size)
                return
            if kind == "message.done":
                record.final_text = frame.get("text")
                record.final_status = frame.get("status", "")
                record.done_ns = arrived_ns
                record.site_done.set()
                return
        if kind == "message.created" and self.pending is not None and frame["message"]["role"] == "assistant":
            record, self.pending = self.pending, None
            record.message_id = frame["message"]["id"]
            record.conversation_id = frame["conversation"]
            if self.measure:
                record.answer_frames += 1
                record.answer_wire_bytes += wire_size(len(payload))
                self.watching[record.message_id] = record
        self.frames.put_nowait(frame)

    def connection_lost(self, exc):
        self.protocol.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_json(self, data):
        self.protocol.send_text(json.dumps(data).encode())
        self.flush()

    def send_message(self, record, text, conversation=None):
        """chat.send of `text`, measuring the answer into `record` (stamped at the write)."""
        self.pending = record
        record.send_ns = time.monotonic_ns()
        self.send_json(
            {"type": "chat.send", "conversation": conversation, "text": text, "client_id": os.urandom(8).hex()}
        )

    def watch(self, record):
        self.watching[record.message_id] = record

    async def expect(self, kind, timeout=30):
        """The next frame of type `kind` (others that arrive meanwhile are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, deadline - time.monotonic()))
            if frame.get("type") == kind:
                return frame
            if frame.get("type") == "error":
                raise RuntimeError(f"the site answered an error frame: {frame}")

    def close(self):
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.protocol.send_close(1000)
                self.flush()
            except Exception:
                pass
            self.transport.close()


class DirectReader(asyncio.Protocol):
    """Reads one answer straight from the timed upstream, as the site's worker does."""

    def __init__(self, record, request):
        self.record = record
        self.request = request
        self.buffer = b""
        self.transport = None

    @classmethod
    async def open(cls, host, port, record, tag_text):
        body = json.dumps({"model": "bench", "input": [{"role": "user", "content": tag_text}], "stream": True}).encode()
        request = (
            f"POST /v1/responses HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nX-Bench-Role: direct\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader = cls(record, request)
        await asyncio.get_running_loop().create_connection(lambda: reader, host, port)
        return reader

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        arrived_ns = time.monotonic_ns()
        self.buffer += data
        *events, self.buffer = self.buffer.split(b"\n\n")
        record = self.record
        for event in events:
            if b"response.output_text.delta" in event:
                for index, emitted in MARKER.findall(event.decode()):
                    record.note_direct_delta(int(index), int(emitted), arrived_ns)
            elif b"bench.meta" in event:
                meta = json.loads(event.split(b"data: ", 1)[1])
                record.site_request_ns = meta["site_request_ns"] or 0
                record.first_byte_ns = meta["first_byte_ns"]
            elif b"response.completed" in event:
                record.direct_done = True
                record.direct_finished.set()

    def connection_lost(self, exc):
        self.record.direct_finished.set()

    def close(self):
        if self.transport is not None:
            self.transport.close()
