"""A real Open Responses server on loopback for tests: SSE over chunked HTTP, driven by scenario.

A scenario is a list of steps the handler performs in order:

- `bytes`: written as one HTTP chunk (an SSE event, part of one, or anything else);
- `Pause(seconds)`: a silence (slow first byte, stall, pacing); a client hanging up meanwhile is
  noticed at once and recorded as `disconnected`;
- `Gate(event)`: a silence until the test sets the `threading.Event` (a cue rather than a guess
  at how long something takes), noticed like a `Pause`; `held(steps, before=...)` puts one in;
- `Hangup()`: the connection is dropped without the terminating chunk (a truncated body);
- `Status(code, body, headers)`: as the first step (after any `Pause`, which then delays the
  status line), an HTTP error answer before any stream.

`server.queue(scenario)` makes the next request play it; with nothing queued the server answers
with `echo_answer()` of the last user message. Every request is recorded in `server.requests` with
its headers and decoded JSON body. `chunked(steps, size)` re-cuts a scenario's bytes into chunks of
`size` bytes; `closed_port_url()` and `unresponsive_url()` give APIs that refuse connections and
that never accept them; `Routed` answers two kinds of request (answers and titles) apart.
"""

import contextlib
import json
import select
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "transcripts"


@dataclass
class Pause:
    seconds: float


@dataclass
class Hangup:
    pass


@dataclass
class Raw:
    """Bytes written as they are, outside the chunked framing: chunks of one's own making (with
    extensions, several events in one), or one cut off in its middle before a Hangup."""

    data: bytes


@dataclass
class Gate:
    """Wait until the test opens `event` (at most `timeout` seconds); `passed` is set once through.

    A test that opens the gate when it has received what came before proves that those bytes were
    not held back (by compression, buffering) until later ones were sent.
    """

    event: threading.Event = field(default_factory=threading.Event)
    timeout: float = 60.0
    passed: threading.Event = field(default_factory=threading.Event)


@dataclass
class Body:
    """A 200 answer's whole body with its own content type (a JSON error where a stream was due)."""

    data: bytes
    content_type: str = "application/json"


@dataclass
class Status:
    code: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def sse(data, event=None):
    """One SSE event; `event:` defaults to the data's type as the specification requires.

    Text goes out as raw UTF-8, not `\\u` escapes, as the real APIs send it.
    """
    if isinstance(data, dict):
        event = event or data.get("type")
        payload = json.dumps(data, ensure_ascii=False)
    else:
        payload = data
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def response_object(response_id, model, status, usage=None, output=None, **extra):
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "model": model,
        "output": output or [],
        "usage": usage,
        "error": None,
        "incomplete_details": None,
        **extra,
    }


def usage_object(input_tokens, output_tokens, cached=0, reasoning=0):
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


# --- Building blocks for streams of any shape ------------------------------------------------
# `stream(*started(), *text_events(["Hi"]), finished("completed", [message_item("Hi")]))` is a
# complete answer; mix in reasoning, refusals, `error` events, pauses and raw bytes as a test needs.


def stream(*events):
    """SSE steps from event dicts, numbered from 0 in order; other steps (Pause, bytes…) pass through."""
    steps, number = [], 0
    for event in events:
        if isinstance(event, dict):
            steps.append(sse({"type": event["type"], **event, "sequence_number": number}))
            number += 1
        else:
            steps.append(event)
    return steps


def started(response_id="resp_test", model="test-model"):
    response = response_object(response_id, model, "in_progress")
    return [{"type": "response.created", "response": response}, {"type": "response.in_progress", "response": response}]


def finished(
    status, output=(), *, usage=None, error=None, incomplete_reason=None, response_id="resp_test", model="test-model"
):
    """The terminal event: `response.completed`, `response.failed` or `response.incomplete`."""
    final = response_object(response_id, model, status, usage=usage, output=list(output))
    final["error"] = error
    if status == "incomplete":
        final["incomplete_details"] = {"reason": incomplete_reason or "max_output_tokens"}
    return {"type": f"response.{status}", "response": final}


def error_event(code, message, *, flat=False):
    """An `error` event as the live API nests it, or flat as its reference documents it."""
    if flat:
        return {"type": "error", "code": code, "message": message, "param": None}
    return {"type": "error", "error": {"type": "server_error", "code": code, "message": message, "param": None}}


def message_item(text="", *, refusal=None, status="completed", item_id="msg_test"):
    part = {"type": "refusal", "refusal": refusal} if refusal is not None else output_text_part(text)
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def output_text_part(text):
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def text_events(deltas, *, output_index=0, item_id="msg_test", status="completed"):
    """A message item streaming `deltas` as output text, from output_item.added to .done."""
    text = "".join(deltas)
    where = {"item_id": item_id, "output_index": output_index, "content_index": 0}
    return [
        {
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": message_item(status="in_progress", item_id=item_id),
        },
        {"type": "response.content_part.added", **where, "part": output_text_part("")},
        *({"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []} for delta in deltas),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": output_text_part(text)},
        {
            "type": "response.output_item.done",
            "output_index": output_index,
            "item": message_item(text, status=status, item_id=item_id),
        },
    ]


def refusal_events(deltas, *, output_index=0, item_id="msg_test"):
    """A message item streaming a refusal instead of text."""
    refusal = "".join(deltas)
    where = {"item_id": item_id, "output_index": output_index, "content_index": 0}
    return [
        {
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": message_item(status="in_progress", item_id=item_id),
        },
        {"type": "response.content_part.added", **where, "part": {"type": "refusal", "refusal": ""}},
        *({"type": "response.refusal.delta", **where, "delta": delta} for delta in deltas),
        {"type": "response.refusal.done", **where, "refusal": refusal},
        {"type": "response.content_part.done", **where, "part": {"type": "refusal", "refusal": refusal}},
        {
            "type": "response.output_item.done",
            "output_index": output_index,
            "item": message_item(refusal=refusal, item_id=item_id),
        },
    ]


REASONING_EVENTS = {
    # kind: (delta event, done event, index field); `summary` is what OpenAI streams when asked for
    # a reasoning summary, `reasoning_text` its name for raw reasoning, `reasoning` the spec's name.
    "summary": ("response.reasoning_summary_text.delta", "response.reasoning_summary_text.done", "summary_index"),
    "reasoning_text": ("response.reasoning_text.delta", "response.reasoning_text.done", "content_index"),
    "reasoning": ("response.reasoning.delta", "response.reasoning.done", "content_index"),
}


def reasoning_item(parts, kind="summary", item_id="rs_test"):
    texts = ["".join(part) for part in parts]
    if kind == "summary":
        return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": t} for t in texts]}
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": t} for t in texts],
    }


def reasoning_events(parts, *, kind="summary", output_index=0, item_id="rs_test"):
    """A reasoning item streaming each part (a list of deltas) of its summary or reasoning text."""
    delta_type, done_type, index_field = REASONING_EVENTS[kind]
    events = [
        {"type": "response.output_item.added", "output_index": output_index, "item": reasoning_item([], kind, item_id)}
    ]
    for index, deltas in enumerate(parts):
        where = {"item_id": item_id, "output_index": output_index, index_field: index}
        if kind == "summary":
            empty = {"type": "summary_text", "text": ""}
            events.append({"type": "response.reasoning_summary_part.added", **where, "part": empty})
        events += [{"type": delta_type, **where, "delta": delta} for delta in deltas]
        events.append({"type": done_type, **where, "text": "".join(deltas)})
    events.append(
        {
            "type": "response.output_item.done",
            "output_index": output_index,
            "item": reasoning_item(parts, kind, item_id),
        }
    )
    return events


def answer(
    deltas,
    *,
    model="test-model",
    usage=None,
    pause=0.0,
    response_id="resp_test",
    done_marker=True,
    terminal="completed",
    incomplete_reason="max_output_tokens",
    first_pause=0.0,
):
    """A complete, well-formed streamed answer made of the given text deltas.

    Steps: created, in_progress, [Pause(first_pause)], output_item.added, content_part.added,
    ([Pause(pause)], output_text.delta) per delta, output_text.done, content_part.done,
    output_item.done, the terminal event, and `data: [DONE]` when `done_marker`.
    """
    deltas = list(deltas)
    usage = usage if usage is not None else usage_object(7, len(deltas))
    item_status = "completed" if terminal == "completed" else "incomplete"
    events = text_events(deltas, status=item_status)
    if pause:
        events[2 : 2 + len(deltas)] = [step for event in events[2 : 2 + len(deltas)] for step in (Pause(pause), event)]
    final = finished(
        terminal,
        [message_item("".join(deltas), status=item_status)],
        usage=usage,
        incomplete_reason=incomplete_reason,
        response_id=response_id,
        model=model,
    )
    steps = stream(*started(response_id, model), *([Pause(first_pause)] if first_pause else []), *events, final)
    if done_marker:
        steps.append(b"data: [DONE]\n\n")
    return steps


def held(steps, before):
    """`steps` with a Gate just before the first step holding `before`, and that gate.

    `before` is a delta's text (str) or bytes the step contains. The stream stops there until the
    test opens the gate, so what the test does and checks while an answer is still being written
    happens while it is: a `pause=` only guesses how long that takes, and a loaded machine may
    reach the answer's end first.
    """
    needle = b'"delta": ' + json.dumps(before, ensure_ascii=False).encode() if isinstance(before, str) else before
    index = next((index for index, step in enumerate(steps) if isinstance(step, bytes) and needle in step), None)
    if index is None:
        raise ValueError(f"no step of the scenario holds {needle!r}")
    gate = Gate()
    return [*steps[:index], gate, *steps[index:]], gate


# A response id as LiteLLM's proxy makes them: the provider's id and routing data, base64 encoded.
LONG_RESPONSE_ID = "resp_" + "bGl0ZWxsbTpjdXN0b21fbGxtX3Byb3ZpZGVyOm9wZW5haTttb2RlbF9pZDo" * 8


def real_world_answer(deltas, *, response_id=LONG_RESPONSE_ID, model="test-model", usage=None):
    """An answer shaped as real servers and proxies send them, unlike our own server's: a very
    long response id, keep-alive comments between events, `event:` lines that differ from the
    data's type (some proxies send a generic name, some none), and `[DONE]` after the terminal
    event."""
    steps = []
    for number, step in enumerate(answer(deltas, response_id=response_id, model=model, usage=usage, done_marker=False)):
        if isinstance(step, bytes) and step.startswith(b"event: "):
            data = step.split(b"\n", 1)[1]
            step = data if number % 2 else b"event: message\n" + data
        steps.append(step)
        if number % 3 == 0:
            steps.append(b": keep-alive\n\n")
    steps.append(b"data: [DONE]\n\n")
    return steps


def echo_answer(request_body):
    """The default answer: repeats the last user message, a few characters per delta."""
    items = request_body.get("input") or []
    last = items[-1]["content"] if items and isinstance(items, list) else str(items)
    text = f"You said: {last}"
    deltas = [text[index : index + 4] for index in range(0, len(text), 4)]
    return answer(deltas, model=request_body.get("model") or "test-model", pause=0.01)


class Routed:
    """A scenario for requests of two kinds, queued once per request it may serve: those
    `picks(body)` chooses (a title request, say) play `picked` and are kept in `picked_bodies`
    (`asked` is set at the first); the others play `answers` in order, then `echo_answer`."""

    def __init__(self, picks, picked, *answers):
        self.picks = picks
        self.picked = picked
        self.answers = list(answers)
        self.asked = threading.Event()
        self.picked_bodies = []

    def __call__(self, body):
        if self.picks(body):
            self.picked_bodies.append(body)
            self.asked.set()
            return self.picked
        return self.answers.pop(0) if self.answers else echo_answer(body)


def chunked(steps, size):
    """The same scenario with its bytes cut into HTTP chunks of `size` bytes, wherever that falls."""
    result, buffer = [], b""
    for step in steps:
        if isinstance(step, bytes):
            buffer += step
            continue
        result.extend(buffer[start : start + size] for start in range(0, len(buffer), size))
        buffer = b""
        result.append(step)
    result.extend(buffer[start : start + size] for start in range(0, len(buffer), size))
    return result


def closed_port_url():
    """The base URL of a loopback port nothing listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def unresponsive_url():
    """The base URL of a loopback listener whose backlog is full: connecting times out, offline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # One connection fills a backlog of 0; the kernel then drops further SYNs unanswered.
        filler = socket.create_connection(("127.0.0.1", port))
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            filler.close()


def transcript(name):
    """A recorded stream from shared/transcripts, replayed verbatim, one event per chunk."""
    raw = (TRANSCRIPTS / name).read_bytes()
    events = raw.split(b"\n\n")
    steps = [event + b"\n\n" for event in events[:-1]]
    if events[-1].strip():
        steps.append(events[-1])
    return steps


def transcript_terminal(name):
    """The terminal response object of a recorded stream."""
    terminal = None
    for line in (TRANSCRIPTS / name).read_text().splitlines():
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            if data["type"] in ("response.completed", "response.failed", "response.incomplete"):
                terminal = data
    return terminal


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.requests = []
        self.scenarios = []
        self.lock = threading.Lock()
        self.connections_closed = threading.Event()
        self.stopping = threading.Event()
        self.api_key = None
        # "gzip" or "deflate": every stream is compressed as a proxy in front of a real API
        # (nginx `gzip on`) does, flushed after each chunk so that deltas still arrive one by one.
        self.content_encoding = None
        # A short poll interval: shutdown() waits for one poll, at the end of every test.
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def queue(self, *scenarios):
        with self.lock:
            self.scenarios.extend(scenarios)

    def next_scenario(self, body):
        with self.lock:
            if self.scenarios:
                scenario = self.scenarios.pop(0)
                return scenario(body) if callable(scenario) else scenario
        return echo_answer(body)

    def start(self):
        self.thread.start()
        return self

    def handle_error(self, request, client_address):
        # Clients closing their end (Stop, a finished stream) are expected, not test failures.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def stop(self):
        self.stopping.set()  # ends every Pause still running
        self.shutdown()
        self.server_close()


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        server = self.server
        record = {"path": self.path, "headers": dict(self.headers), "body": body, "finished": False}
        with server.lock:
            server.requests.append(record)
        if not self.path.endswith("/responses"):
            return self.send_json(404, {"error": {"message": "Not found", "type": "not_found", "code": None}})
        if body is None:
            return self.send_json(400, {"error": {"message": "Invalid JSON", "type": "invalid_request"}})
        if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            return self.send_json(
                401,
                {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}},
            )
        steps = list(server.next_scenario(body))
        first = next((step for step in steps if not isinstance(step, Pause)), None)
        if isinstance(first, Status):
            try:
                for step in steps[: steps.index(first)]:
                    self.pause(step.seconds)
            except ConnectionError:
                record["disconnected"] = True
                self.close_connection = True
                return
            status = first
            self.send_response(status.code)
            for name, value in status.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(status.body)))
            self.end_headers()
            self.wfile.write(status.body)
            return
        content_type = next((step.content_type for step in steps if isinstance(step, Body)), None)
        self.send_response(200)
        self.send_header("Content-Type", content_type or "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        compressor = self.compressor(server.content_encoding)
        if compressor is not None:
            self.send_header("Content-Encoding", server.content_encoding)
        self.end_headers()
        try:
            for step in steps:
                if isinstance(step, Pause):
                    self.pause(step.seconds)
                elif isinstance(step, Gate):
                    self.pause(step.timeout, until=step.event)
                    step.passed.set()
                elif isinstance(step, Hangup):
                    self.close_connection = True
                    return
                elif isinstance(step, Raw):
                    self.wfile.write(step.data)
                    self.wfile.flush()
                else:
                    payload = step.data if isinstance(step, Body) else step
                    if compressor is not None:
                        payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
                    self.write_chunk(payload)
            if compressor is not None:
                self.write_chunk(compressor.flush())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            record["finished"] = True
        except ConnectionError:
            record["disconnected"] = True
            self.close_connection = True

    def write_chunk(self, payload):
        if payload:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()

    @staticmethod
    def compressor(encoding):
        if encoding is None:
            return None
        # wbits: 16 + 15 writes a gzip stream, 15 a zlib stream (HTTP's "deflate").
        return zlib.compressobj(wbits={"gzip": 31, "deflate": 15}[encoding])

    def pause(self, seconds, until=None):
        """Stay silent for `seconds` (or until the Event `until` is set), raising ConnectionError as
        soon as the client hangs up."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not (until is not None and until.is_set()):
            if self.server.stopping.is_set():
                raise ConnectionAbortedError("the test server is stopping")
            readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
            if readable:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    raise ConnectionResetError("the client closed the connection")
                time.sleep(min(remaining, 0.05))  # unexpected bytes from the client: just wait

    def send_json(self, code, data):
        payload = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
