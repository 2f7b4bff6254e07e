"""A real Open Responses server on loopback for tests: SSE over chunked HTTP, driven by scenario.

A scenario is a list of steps the handler performs in order:

- `bytes`: written as one HTTP chunk (an SSE event, part of one, or anything else);
- `Pause(seconds)`: a silence (slow first byte, stall, pacing);
- `Hangup()`: the connection is dropped without the terminating chunk (a truncated body);
- `Status(code, body, headers)`: as the first step, an HTTP error answer before any stream.

`server.queue(scenario)` makes the next request play it; with nothing queued the server answers
with `echo_answer()` of the last user message. Every request is recorded in `server.requests` with
its headers and decoded JSON body.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRANSCRIPTS = Path(__file__).resolve().parent.parent.parent / "shared" / "transcripts"


@dataclass
class Pause:
    seconds: float


@dataclass
class Hangup:
    pass


@dataclass
class Status:
    code: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def sse(data, event=None):
    """One SSE event; `event:` defaults to the data's type as the specification requires."""
    if isinstance(data, dict):
        event = event or data.get("type")
        payload = json.dumps(data)
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
    """A complete, well-formed streamed answer made of the given text deltas."""
    deltas = list(deltas)
    text = "".join(deltas)
    usage = usage if usage is not None else usage_object(7, len(deltas))
    item_id = "msg_test"
    steps = []
    seq = iter(range(10_000))
    steps.append(
        sse(
            {
                "type": "response.created",
                "sequence_number": next(seq),
                "response": response_object(response_id, model, "in_progress"),
            }
        )
    )
    steps.append(
        sse(
            {
                "type": "response.in_progress",
                "sequence_number": next(seq),
                "response": response_object(response_id, model, "in_progress"),
            }
        )
    )
    if first_pause:
        steps.append(Pause(first_pause))
    steps.append(
        sse(
            {
                "type": "response.output_item.added",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
            }
        )
    )
    steps.append(
        sse(
            {
                "type": "response.content_part.added",
                "sequence_number": next(seq),
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        )
    )
    for delta in deltas:
        if pause:
            steps.append(Pause(pause))
        steps.append(
            sse(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": next(seq),
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                    "logprobs": [],
                }
            )
        )
    steps.append(
        sse(
            {
                "type": "response.output_text.done",
                "sequence_number": next(seq),
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }
        )
    )
    part = {"type": "output_text", "text": text, "annotations": []}
    steps.append(
        sse(
            {
                "type": "response.content_part.done",
                "sequence_number": next(seq),
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        )
    )
    item_status = "completed" if terminal == "completed" else "incomplete"
    item = {"id": item_id, "type": "message", "status": item_status, "role": "assistant", "content": [part]}
    steps.append(
        sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0, "item": item})
    )
    final = response_object(response_id, model, terminal, usage=usage, output=[item])
    if terminal == "incomplete":
        final["incomplete_details"] = {"reason": incomplete_reason}
    steps.append(sse({"type": f"response.{terminal}", "sequence_number": next(seq), "response": final}))
    if done_marker:
        steps.append(b"data: [DONE]\n\n")
    return steps


def echo_answer(request_body):
    """The default answer: repeats the last user message, a few characters per delta."""
    items = request_body.get("input") or []
    last = items[-1]["content"] if items and isinstance(items, list) else str(items)
    text = f"You said: {last}"
    deltas = [text[index : index + 4] for index in range(0, len(text), 4)]
    return answer(deltas, model=request_body.get("model") or "test-model", pause=0.01)


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
        self.api_key = None
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

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

    def stop(self):
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
        steps = server.next_scenario(body)
        if steps and isinstance(steps[0], Status):
            status = steps[0]
            self.send_response(status.code)
            for name, value in status.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(status.body)))
            self.end_headers()
            self.wfile.write(status.body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for step in steps:
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                elif isinstance(step, Hangup):
                    self.close_connection = True
                    return
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(step), step))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            record["finished"] = True
        except (BrokenPipeError, ConnectionResetError):
            record["disconnected"] = True
            self.close_connection = True

    def send_json(self, code, data):
        payload = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
