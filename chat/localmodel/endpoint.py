"""`POST /local/v1/responses`: the local model as an Open Responses endpoint, a small ASGI app.

Every path under /local/v1 is this app's: the one it serves, and for any other (another path of
the specification such as /responses/compact, or /models, or a typo) a JSON 404 in the
specification's error shape, as a client of the API expects, rather than the site's HTML page;
a method other than POST gets a JSON 405 with `Allow`. What a request asks that the model cannot do
is refused with 400 naming the parameter (chat/localmodel/request.py). docs/openresponses.md has
the whole table.

The site's own worker does not come through here: it calls the same service in-process
(chat/localmodel/transport.py), whatever the host, TLS and proxy settings, and reads the same SSE
bytes `EventWriter` writes. This endpoint is for other clients (another server process set up with
LOCAL_MODEL_BASE_URL, tools, benchmarks), and is not open to the world: it needs a bearer token
derived from the site's secret key, which no repository holds (chatsite/secret_key.py).

It is an ASGI application of its own (chatsite/asgi.py routes the path to it) rather than a Django
view, because Django's ASGI handler gives every request in flight a thread of its own (its
ThreadSensitiveContext, for the sync signal receivers and middleware), and a request waiting for
the model would hold that thread for as long as it waits. Here a waiting request is a coroutine
awaiting its queue on the event loop, and at most LOCAL_MODEL_QUEUE of them wait: beyond, 503
with Retry-After. A client that goes away leaves the queue at once, or stops its generation at
the next prompt batch or token (chat/localmodel/service.py).
"""

import asyncio
import contextlib
import hmac
import json
import logging

from django.conf import settings

from chat.localmodel import request as local_request
from chat.localmodel import runtime
from chat.localmodel.credentials import local_token
from chat.localmodel.events import ResponseEvents
from chat.localmodel.runtime import ContextTooLong
from chat.localmodel.service import QueueFull

logger = logging.getLogger(__name__)

PREFIX = "/local/v1"
PATH = f"{PREFIX}/responses"
DONE = b"data: [DONE]\n\n"


def serves(path):
    """Whether an HTTP request for `path` is this app's (chatsite/asgi.py routes it here)."""
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def read_request(authorization, body):
    """The ResponseRequest of a request's Authorization header and body; RequestError (401, 400,
    404) when it has no valid token or is not a request the model can answer, 503 while the model
    is not installed (yet)."""
    if not hmac.compare_digest((authorization or "").encode(), f"Bearer {local_token()}".encode()):
        raise local_request.RequestError(401, "Incorrect or missing API key.", code="invalid_api_key")
    try:
        decoded = json.loads(body)
    except ValueError:
        raise local_request.RequestError(400, "The request body is not valid JSON.", code="invalid_json") from None
    parsed = local_request.parse(decoded, {settings.LOCAL_MODEL_NAME})
    problem = runtime.problem()
    if problem:
        raise local_request.RequestError(503, problem, code="model_not_ready", type="server_error")
    return parsed


def sse(event):
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class EventWriter:
    """The SSE bytes of one streamed response, from its generation's items (service.py).

    The one definition of the stream, for this endpoint and the in-process transport alike.
    """

    def __init__(self, request):
        self.events = ResponseEvents(request)
        self.queued = False
        self.finished = False  # nothing follows the bytes last returned

    def write(self, kind, value):
        return b"".join(sse(event) if isinstance(event, dict) else event for event in self._events(kind, value))

    def _events(self, kind, value):
        events = self.events
        if kind == "queued":
            self.queued = True
            return events.queued()
        if kind == "started":
            return events.opening(after_queue=self.queued)
        if kind == "piece":
            written = [events.delta(value.text)] if value.text else []
            if value.finish_reason:
                usage = events.usage(value.input_tokens, value.output_tokens)
                reason = "max_output_tokens" if value.finish_reason == "length" else None
                written += events.closing(usage, incomplete_reason=reason)
            return written
        self.finished = True
        if kind == "error":
            error = failure(value)
            return [*events.failure(error.code, error.message, error.type), DONE]
        return [DONE]


def failure(error):
    """The RequestError a failed generation is answered with: its JSON body when nothing was sent
    yet, its code, sentence and type in the stream's `error` event otherwise."""
    if isinstance(error, ContextTooLong):
        # truncation is always "disabled" here: the specification's 400, naming what is too long.
        return local_request.RequestError(400, str(error), param="input", code="context_length_exceeded")
    return local_request.RequestError(500, "The local model failed.", code="server_error", type="server_error")


class Gone(Exception):
    """The client disconnected."""


async def application(scope, receive, send, service):
    """The ASGI application of every path under PREFIX (http scopes only), answered by the
    process's local model `service` (chatsite/asgi.py hands it over from the runtime)."""
    exchange = Exchange(receive, send, service, head=scope["method"] == "HEAD")
    try:
        await exchange.answer(scope)
    except Gone:
        pass


class Exchange:
    """One request and its answer; `items` also carries ("gone", None) when the client leaves."""

    def __init__(self, receive, send, service, head=False):
        self.receive = receive
        self.send = send
        self.service = service
        self.head = head  # a HEAD request: the headers of the answer, without its body
        self.items = asyncio.Queue()

    async def answer(self, scope):
        if scope["path"] != PATH:
            path = scope["path"][:200]
            message = f"There is no {path} here: this server answers POST {PATH} only."
            return await self.error(local_request.RequestError(404, message, code="not_found", type="not_found"))
        if scope["method"] != "POST":
            message = f"{scope['method'][:20]} is not allowed on {PATH}: use POST."
            error = local_request.RequestError(405, message, code="method_not_allowed")
            return await self.error(error, [(b"allow", b"POST")])
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            parsed = read_request(headers.get("authorization"), await self.body())
        except local_request.RequestError as error:
            return await self.error(error)
        loop = asyncio.get_running_loop()
        try:
            generation = self.service.submit(
                parsed, lambda item: loop.call_soon_threadsafe(self.items.put_nowait, item)
            )
        except QueueFull as refusal:
            logger.info("Refused a local model request: %s are waiting", refusal.waiting)
            return await self.busy(refusal)
        watcher = asyncio.create_task(self.watch_for_disconnect())
        try:
            if parsed.stream:
                await self.stream(parsed)
            else:
                await self.complete(parsed)
        finally:
            # Ended, or the client went away: leave the queue or stop the generation.
            generation.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def body(self):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                raise local_request.RequestError(413, f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def watch_for_disconnect(self):
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.items.put_nowait(("gone", None))

    async def next_item(self):
        kind, value = await self.items.get()
        if kind == "gone":
            raise Gone
        return kind, value

    async def stream(self, parsed):
        await self.start(
            200,
            "text/event-stream; charset=utf-8",
            [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
        )
        writer = EventWriter(parsed)
        while not writer.finished:
            chunk = writer.write(*await self.next_item())
            await self.send({"type": "http.response.body", "body": chunk, "more_body": not writer.finished})

    async def complete(self, parsed):
        events = ResponseEvents(parsed)
        while True:
            kind, value = await self.next_item()
            if kind == "piece":
                events.text += value.text
                if value.finish_reason:
                    usage = events.usage(value.input_tokens, value.output_tokens)
                    if value.finish_reason == "length":
                        response = events.response("incomplete", usage=usage, incomplete_reason="max_output_tokens")
                    else:
                        response = events.response("completed", usage=usage)
                    return await self.json(200, response)
            elif kind == "error":
                return await self.error(failure(value))
            elif kind == "end":
                return await self.error(
                    local_request.RequestError(500, "The local model stopped.", type="server_error")
                )

    async def start(self, status, content_type, headers=()):
        # Django's middleware does not run here: its nosniff header is set by hand (a 404 repeats
        # the path it was asked for).
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    *headers,
                ],
            }
        )

    async def json(self, status, data, headers=()):
        body = json.dumps(data).encode()
        await self.start(status, "application/json", [(b"content-length", str(len(body)).encode()), *headers])
        await self.send({"type": "http.response.body", "body": b"" if self.head else body})

    async def error(self, error, headers=()):
        await self.json(error.status, error.as_json(), headers)

    async def busy(self, refusal):
        error = local_request.RequestError(
            503,
            f"The local model is busy: {refusal.waiting} requests are waiting already. "
            f"Try again in {refusal.retry_after} seconds.",
            code="queue_full",
            type="server_error",
        )
        await self.error(error, [(b"retry-after", str(refusal.retry_after).encode())])
