"""`POST /local/v1/responses`: the local model as an Open Responses endpoint.

Served by the site itself rather than by a companion process: one command starts everything, no
second port has to be coordinated, and the generation runs in its own thread so the server's
event loop never waits on the model. The endpoint is not open to the world: it needs a bearer
token derived from the site's secret key, which only the site's own worker sends.
"""

import asyncio
import hmac
import json
import logging
import threading

from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat.localmodel import request as local_request
from chat.localmodel.events import ResponseEvents
from chat.localmodel.runtime import ContextTooLong, get_model

logger = logging.getLogger(__name__)


def local_token():
    """The bearer token of the local endpoint: derived from SECRET_KEY, the same in every process."""
    return hmac.new(settings.SECRET_KEY.encode(), b"chat.localmodel.token", "sha256").hexdigest()


def error_response(error):
    return JsonResponse(error.as_json(), status=error.status)


def sse(event):
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


@csrf_exempt
async def responses(request):
    if request.method != "POST":
        return error_response(local_request.RequestError(405, "Use POST.", type="invalid_request_error"))
    authorization = request.headers.get("Authorization", "")
    if not hmac.compare_digest(authorization.encode(), f"Bearer {local_token()}".encode()):
        return error_response(local_request.RequestError(401, "Incorrect or missing API key.", code="invalid_api_key"))
    try:
        body = json.loads(request.body)
    except ValueError:
        return error_response(
            local_request.RequestError(400, "The request body is not valid JSON.", code="invalid_json")
        )
    try:
        parsed = local_request.parse(body, {settings.LOCAL_MODEL_NAME})
    except local_request.RequestError as error:
        return error_response(error)
    if parsed.stream:
        response = StreamingHttpResponse(stream(parsed), content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    return await complete(parsed)


def _generate_into(queue, loop, parsed, stop_event):
    """Run in a thread: put ("piece", Piece) items, then ("end", None) or ("error", exception)."""
    model = get_model()

    def put(item):
        loop.call_soon_threadsafe(queue.put_nowait, item)

    try:
        with model.generation_lock:
            put(("started", None))
            for piece in model.generate(parsed, stop_event):
                put(("piece", piece))
        put(("end", None))
    except Exception as error:  # handed to the event loop, which answers it
        if not isinstance(error, ContextTooLong):
            logger.exception("The local model failed")
        put(("error", error))


def start_generation(parsed):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    stop_event = threading.Event()
    threading.Thread(
        target=_generate_into, args=(queue, loop, parsed, stop_event), name="local-model", daemon=True
    ).start()
    return queue, stop_event


async def stream(parsed):
    events = ResponseEvents(parsed)
    # Another generation holds the model: tell the client it is queued until this one starts.
    busy = get_model().generation_lock.locked()
    queue, stop_event = start_generation(parsed)
    try:
        if busy:
            for event in events.queued():
                yield sse(event)
        while True:
            kind, value = await queue.get()
            if kind == "started":
                for event in events.opening(after_queue=busy):
                    yield sse(event)
            elif kind == "piece":
                if value.text:
                    yield sse(events.delta(value.text))
                if value.finish_reason:
                    usage = events.usage(value.input_tokens, value.output_tokens)
                    reason = "max_output_tokens" if value.finish_reason == "length" else None
                    for event in events.closing(usage, incomplete_reason=reason):
                        yield sse(event)
            elif kind == "error":
                code = "context_length_exceeded" if isinstance(value, ContextTooLong) else "server_error"
                message = str(value) if isinstance(value, ContextTooLong) else "The local model failed."
                for event in events.failure(code, message):
                    yield sse(event)
                break
            else:
                break
        yield b"data: [DONE]\n\n"
    finally:
        # The client went away (or the stream ended): stop generating at the next token.
        stop_event.set()


async def complete(parsed):
    events = ResponseEvents(parsed)
    queue, stop_event = start_generation(parsed)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                events.text += value.text
                if value.finish_reason:
                    usage = events.usage(value.input_tokens, value.output_tokens)
                    if value.finish_reason == "length":
                        return JsonResponse(
                            events.response("incomplete", usage=usage, incomplete_reason="max_output_tokens")
                        )
                    return JsonResponse(events.response("completed", usage=usage))
            elif kind == "error":
                if isinstance(value, ContextTooLong):
                    return error_response(local_request.RequestError(400, str(value), code="context_length_exceeded"))
                return error_response(local_request.RequestError(500, "The local model failed.", type="server_error"))
    finally:
        stop_event.set()
