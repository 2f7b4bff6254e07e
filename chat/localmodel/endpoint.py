"""`POST /local/v1/responses`: the local model as an Open Responses endpoint, a small ASGI app.

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
from chat.localmodel.events import ResponseEvents
from chat.localmodel.runtime import ContextTooLong
from chat.localmodel.service import QueueFull, get_service

logger = logging.getLogger(__name__)

PATH = "/local/v1/responses"
DONE = b"data: [DONE]\n\n"


def local_token():
    """The bearer token of the local endpoint: derived from SECRET_KEY, the same in every process."""
    return hmac.new(settings.SECRET_KEY.encode(), b"chat.localmodel.token", "sha256").hexdigest()


def read_request(authorization, body):
    """The ResponseRequest of a request's Authorization header and body; RequestError (401, 400,
    404) when it has no valid token or is not a request the model can answer."""
    if not hmac.compare_digest((authorization or "").encode(), f"Bearer {local_token()}".encode()):
        raise local_request.RequestError(401, "Incorrect or missing API key.", code="invalid_api_key")
    try:
        decoded = json.loads(body)
    except ValueError:
        raise local_request.RequestError(400, "The request body is not valid JSON.", code="invalid_json") from None
    return local_request.parse(decoded, {settings.LOCAL_MODEL_NAME})


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
            code, message = failure(value)
            return [*events.failure(code, message), DONE]
        return [DONE]


def failure(error):
    """The code and sentence a failed generation is answered with."""
    if isinstance(error, ContextTooLong):
        return "context_length_exceeded", str(error)
    return "server_error", "The local model failed."


class Gone(Exception):
    """The client disconnected."""


async def application(scope, receive, send):
    """The ASGI application of PATH (http scopes only)."""
    exchange = Exchange(receive, send)
    try:
        await exchange.answer(scope)
    except Gone:
        pass


class Exchange:
    """One request and its answer; `items` also carries ("gone", None) when the client leaves."""

    def __init__(self, receive, send):
        self.receive = receive
        self.send = send
        self.items = asyncio.Queue()

    async def answer(self, scope):
        if scope["method"] != "POST":
            return await self.error(local_request.RequestError(405, "Use POST.", type="invalid_request_error"))
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            parsed = read_request(headers.get("authorization"), await self.body())
        except local_request.RequestError as error:
            return await self.error(error)
        loop = asyncio.get_running_loop()
        try:
            generation = get_service().submit(
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
                code, message = failure(value)
                if isinstance(value, ContextTooLong):
                    return await self.error(local_request.RequestError(400, message, code=code))
                return await self.error(local_request.RequestError(500, message, code=code, type="server_error"))
            elif kind == "end":
                return await self.error(
                    local_request.RequestError(500, "The local model stopped.", type="server_error")
                )

    async def start(self, status, content_type, headers=()):
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode()), *headers],
            }
        )

    async def json(self, status, data, headers=()):
        await self.start(status, "application/json", headers)
        await self.send({"type": "http.response.body", "body": json.dumps(data).encode()})

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
