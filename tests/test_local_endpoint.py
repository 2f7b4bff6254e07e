"""The local endpoint as an Open Responses server: what the specification's compliance suite asks
of one, and an answer in the specification's shape to everything it does not support.

Through real HTTP and real websockets to a real daphne serving the site in production mode (debug
off), with the real model; every response, event and error body is checked against the vendored
schema (tests/openresponses.py). The compliance suite's tests that apply to a text-only model with
no stored state are basic-response, streaming-response, system-prompt and multi-turn; its
tool-calling, image-input, compact and websocket tests ask for what this server refuses, and the
refusals are checked here instead (docs/openresponses.md).
"""

import asyncio
import json

import pytest
import requests
import websockets
from django.test import override_settings

from chat.localmodel import endpoint, request
from tests.openresponses import ERROR_BODY, SCHEMAS, read_events, validate_event, validator
from tests.services import Daphne, manage, site_env

SECRET = "local-endpoint-test-secret"
MODEL = "smollm2-135m"
# Small enough that a conversation too long for it costs no time to write, large enough for the
# prompts of the compliance suite.
CONTEXT = 512

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local-endpoint")
    env = site_env(
        DJANGO_DEBUG="0",
        DJANGO_HTTPS="0",
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}",
        LOCAL_MODEL_THREADS="2",
        LOCAL_MODEL_CONTEXT=str(CONTEXT),
    )
    for name in ("OPENRESPONSES_BASE_URL", "OPENRESPONSES_API_KEY", "LOCAL_MODEL_BASE_URL", "REDIS_URL"):
        env.pop(name, None)
    manage(env, "migrate", "--noinput")
    daphne = Daphne("local-endpoint", env, folder).start()
    daphne.env = env
    yield daphne
    daphne.terminate()


@pytest.fixture(scope="module")
def base(server):
    return f"{server.url}{endpoint.PREFIX}"


def token():
    with override_settings(SECRET_KEY=SECRET):
        return endpoint.local_token()


def post(base, body, *, path="/responses", stream=False, key=None):
    return requests.post(
        f"{base}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key or token()}"},
        stream=stream,
        timeout=180,
    )


def answer(base, body):
    """A non-streamed answer, checked as the compliance suite checks one: valid, with output, and
    completed (at temperature 0 the model's answers to these short prompts end well within the limit)."""
    response = post(base, {"model": MODEL, "temperature": 0, "max_output_tokens": 96, **body})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    validator("ResponseResource").validate(data)
    assert data["status"] == "completed", data["incomplete_details"]
    assert data["output"] and data["output"][0]["content"][0]["text"].strip()
    return data


def refusal(response, status):
    """The error of a refused request: the status, JSON, the specification's shape."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    ERROR_BODY.validate(body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


# --- The compliance suite's tests that apply -----------------------------------------------


def test_basic_response(base):
    data = answer(base, {"input": [{"type": "message", "role": "user", "content": "Say hello in exactly 3 words."}]})
    assert data["object"] == "response" and data["model"] == MODEL
    assert data["usage"]["total_tokens"] == data["usage"]["input_tokens"] + data["usage"]["output_tokens"]
    assert data["tools"] == [] and data["store"] is False and data["previous_response_id"] is None


def test_streaming_response_events_are_valid_and_in_the_specifications_order(base):
    body = {"model": MODEL, "input": "Count from 1 to 5.", "stream": True, "temperature": 0, "max_output_tokens": 96}
    response = post(base, body, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events, done = read_events(response)
    assert done, "the stream ends with data: [DONE]"
    for event_line, data in events:
        assert event_line == data["type"], "the event: line is the type"
        validate_event(data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    types = [data["type"] for _, data in events]
    deltas = [data for _, data in events if data["type"] == "response.output_text.delta"]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas
    assert {data["item_id"] for _, data in events if "item_id" in data} == {events[2][1]["item"]["id"]}
    text = "".join(data["delta"] for data in deltas)
    final = events[-1][1]["response"]
    assert events[-4][1]["text"] == text == final["output"][0]["content"][0]["text"]
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["usage"] is None
    assert final["usage"]["output_tokens"] > 0 and final["id"] == events[0][1]["response"]["id"]
    # stream_options.include_obfuscation is on by default: each delta is padded to a whole block.
    for data in deltas:
        assert (len(json.dumps(data["delta"])) + len(data["obfuscation"])) % 32 == 0


def test_obfuscation_is_left_out_when_the_client_turns_it_off(base):
    body = {
        "model": MODEL,
        "input": "Say hi.",
        "stream": True,
        "max_output_tokens": 16,
        "stream_options": {"include_obfuscation": False},
    }
    events, done = read_events(post(base, body, stream=True))
    deltas = [data for _, data in events if data["type"] == "response.output_text.delta"]
    assert done and deltas
    for _, data in events:
        validate_event(data)
    assert not any("obfuscation" in data for data in deltas)


def user_only_tokens(base, question):
    return answer(base, {"input": question})["usage"]["input_tokens"]


SYSTEM = "You are a terse assistant who always answers in exactly one short sentence, never more."
QUESTION = "What is the capital of France?"


def with_system_prompt(how, system):
    if how == "instructions":
        return {"instructions": system, "input": QUESTION}
    if how == "system message":
        return {
            "input": [
                {"type": "message", "role": "system", "content": system},
                {"type": "message", "role": "user", "content": QUESTION},
            ]
        }
    return {
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": system}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        ]
    }


@pytest.mark.parametrize("how", ["instructions", "system message", "developer message"])
def test_system_prompt(base, how):
    """The system text is part of what the model read, whichever way it came (the model's chat
    template has a system prompt of its own when none is sent, so a short one is the baseline)."""
    data = answer(base, with_system_prompt(how, SYSTEM))
    short = answer(base, with_system_prompt(how, "Be terse."))
    assert data["usage"]["input_tokens"] > short["usage"]["input_tokens"] + 8
    assert data["instructions"] == (SYSTEM if how == "instructions" else None)


@pytest.mark.parametrize("parts", [False, True], ids=["string contents", "content parts"])
def test_multi_turn(base, parts):
    def content(role, text):
        kind = "output_text" if role == "assistant" else "input_text"
        return [{"type": kind, "text": text}] if parts else text

    turns = [
        ("user", "My name is Alice."),
        ("assistant", "Hello Alice! Nice to meet you."),
        ("user", "What is my name?"),
    ]
    items = [{"type": "message", "role": role, "content": content(role, text)} for role, text in turns]
    data = answer(base, {"input": items})
    assert data["usage"]["input_tokens"] > user_only_tokens(base, "What is my name?") + 8


def test_accepted_parameters_are_echoed_and_change_nothing_a_text_answer_cannot_satisfy(base):
    """What a plain-text answer already satisfies is accepted, and the response says what was used."""
    asked = {
        "tools": [],
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "max_tool_calls": 3,
        "reasoning": {"effort": "none"},
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "background": False,
        "truncation": "disabled",
        "service_tier": "auto",
        "top_logprobs": 0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "safety_identifier": "user-1234",
        "prompt_cache_key": "conversation-1",
        "metadata": {"purpose": "test"},
        "previous_response_id": None,
        "stream_options": None,
    }
    data = answer(base, {"input": "Say hi.", **asked})
    assert data["tool_choice"] == "none" and data["tools"] == []
    assert data["parallel_tool_calls"] is True and data["max_tool_calls"] == 3
    assert data["reasoning"] == {"effort": "none", "summary": None}
    assert data["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert data["service_tier"] == "default" and data["truncation"] == "disabled"
    assert (data["safety_identifier"], data["prompt_cache_key"]) == ("user-1234", "conversation-1")
    assert data["metadata"] == {"purpose": "test"}
    assert not any(item["type"] == "reasoning" for item in data["output"])


# --- Refusals: every request it does not support ---------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def user(*parts):
    return [{"type": "message", "role": "user", "content": list(parts)}]


REFUSED = {
    # The compliance suite's tool-calling and image-input tests, as it sends them.
    "tools": (
        {"tools": [WEATHER_TOOL], "input": "What's the weather in San Francisco?"},
        "tools",
        "unsupported_parameter",
    ),
    "tool_choice required": ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    "tool_choice a function": (
        {"tool_choice": {"type": "function", "name": "get_weather"}},
        "tool_choice",
        "unsupported_parameter",
    ),
    "tool_choice allowed_tools": (
        {"tool_choice": {"type": "allowed_tools", "tools": [{"type": "function", "name": "x"}]}},
        "tool_choice",
        "unsupported_parameter",
    ),
    "input_image": (
        {"input": user({"type": "input_text", "text": "What is in it?"}, {"type": "input_image", "image_url": PIXEL})},
        "input[0]",
        "unsupported_content",
    ),
    "input_file": (
        {"input": user({"type": "input_file", "filename": "a.txt", "file_data": "aGVsbG8="})},
        "input[0]",
        "unsupported_content",
    ),
    "function_call_output item": (
        {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]},
        "input[0]",
        "unsupported_item",
    ),
    "previous_response_id": (
        {"previous_response_id": "resp_123"},
        "previous_response_id",
        "previous_response_not_found",
    ),
    "store true": ({"store": True}, "store", "unsupported_value"),
    "background": ({"background": True}, "background", "unsupported_parameter"),
    "reasoning effort": ({"reasoning": {"effort": "low"}}, "reasoning.effort", "unsupported_parameter"),
    "reasoning summary": ({"reasoning": {"summary": "auto"}}, "reasoning.summary", "unsupported_parameter"),
    "json_schema": (
        {"text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}}},
        "text.format",
        "unsupported_parameter",
    ),
    "verbosity": ({"text": {"verbosity": "low"}}, "text.verbosity", "unsupported_value"),
    "logprobs": ({"include": ["message.output_text.logprobs"]}, "include", "unsupported_value"),
    "top_logprobs": ({"top_logprobs": 5}, "top_logprobs", "unsupported_value"),
    "presence_penalty": ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value"),
    "frequency_penalty": ({"frequency_penalty": -1}, "frequency_penalty", "unsupported_value"),
    "truncation auto": ({"truncation": "auto"}, "truncation", "unsupported_value"),
    "service_tier": ({"service_tier": "priority"}, "service_tier", "unsupported_value"),
    "a parameter of another API": ({"conversation": "conv_1"}, "conversation", "unknown_parameter"),
    "a field of text the specification lacks": (
        {"text": {"fromat": {"type": "text"}}},
        "text.fromat",
        "unknown_parameter",
    ),
    "a malformed tool_choice": ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    "a malformed include": ({"include": ["everything"]}, "include", "invalid_value"),
    "over-long metadata": ({"metadata": {"key": "x" * 513}}, "metadata", "invalid_value"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", REFUSED)
def test_what_the_model_cannot_do_is_refused_with_400_naming_the_parameter(base, case, stream):
    """Refused before anything is generated, as JSON even when a stream was asked for."""
    fields, param, code = REFUSED[case]
    error = refusal(post(base, {"model": MODEL, "input": "Hi.", "stream": stream, **fields}, stream=stream), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_a_conversation_longer_than_the_context_fails_with_context_length_exceeded(base):
    """truncation is "disabled": the specification's 400 before a stream, error then failed in one."""
    long_text = " ".join(f"word{number}" for number in range(CONTEXT))
    error = refusal(post(base, {"model": MODEL, "input": long_text}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")

    response = post(base, {"model": MODEL, "input": long_text, "stream": True}, stream=True)
    assert response.status_code == 200
    events, done = read_events(response)
    assert done
    for _, data in events:
        validate_event(data)
    assert [data["type"] for _, data in events][-2:] == ["error", "response.failed"]
    assert events[-2][1]["error"]["code"] == "context_length_exceeded"
    assert events[-2][1]["error"]["type"] == "invalid_request_error"
    assert events[-1][1]["response"]["error"]["code"] == "context_length_exceeded"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))


UNKNOWN_PATHS = [
    "/responses/compact",  # the specification's, not offered here
    "/models",
    "/",
    "",
    "/responses/",
    "/responses/resp_123",
    "/responses/resp_123/cancel",
    "/chat/completions",
]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", UNKNOWN_PATHS)
def test_every_unknown_path_under_the_prefix_answers_a_json_404(base, path, method):
    """With a token or without: the path is answered, not the request's credentials."""
    for headers in ({"Authorization": f"Bearer {token()}"}, {}):
        response = requests.request(method, f"{base}{path}", json={"model": MODEL}, headers=headers, timeout=30)
        error = refusal(response, 404)
        assert (error["type"], error["code"]) == ("not_found", "not_found")
        assert endpoint.PATH in error["message"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_on_the_endpoint_answer_a_json_405_with_allow(base, method):
    response = requests.request(method, f"{base}/responses", headers={"Authorization": f"Bearer {token()}"}, timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.headers["Content-Type"] == "application/json"
    if method == "HEAD":
        assert response.content == b"" and int(response.headers["Content-Length"]) > 0
    else:
        assert refusal(response, 405)["code"] == "method_not_allowed"


def test_only_paths_under_the_prefix_are_the_endpoints():
    assert endpoint.serves("/local/v1") and endpoint.serves("/local/v1/responses") and endpoint.serves("/local/v1/x/y")
    assert not endpoint.serves("/local/v1x") and not endpoint.serves("/local/v2/responses") and not endpoint.serves("/")


def test_every_field_of_the_specifications_request_is_decided():
    """request.py names every field the vendored specification defines: a field added to it
    fails here until someone decides whether the model honours it."""
    assert request.FIELDS == set(SCHEMAS["CreateResponseBody"]["properties"])
    nested = {"text": "TextParam", "reasoning": "ReasoningParam", "stream_options": "StreamOptionsParam"}
    assert {name: set(SCHEMAS[schema]["properties"]) for name, schema in nested.items()} == request.NESTED_FIELDS


# --- Websockets: no websocket mode, and no route answers 500 ----------------------------------


def signed_in_cookie(server):
    output = manage(
        server.env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from django.test import Client; "
        "client = Client(); client.force_login(User.objects.create_user('alice', password='a long password')); "
        "print('SESSION', client.cookies['sessionid'].value)",
    )
    return next(line.split()[1] for line in output.splitlines() if line.startswith("SESSION "))


async def handshake(url, headers):
    """The HTTP status a websocket handshake was answered with (101 when the socket opened)."""
    try:
        async with websockets.connect(url, additional_headers=headers, proxy=None, open_timeout=30):
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


def test_a_websocket_to_any_path_without_a_route_is_refused_cleanly_at_the_handshake(server):
    """Websocket mode of /local/v1/responses, unknown paths, with and without the site's origin
    and a signed-in session: 403 at the handshake, no 500, nothing but access lines in the log.
    The chat's own socket still opens."""
    own = {"Origin": server.url, "Cookie": f"sessionid={signed_in_cookie(server)}"}
    api = {"Authorization": f"Bearer {token()}"}
    ws = server.url.replace("http://", "ws://")
    paths = [endpoint.PATH, f"{endpoint.PREFIX}/", "/ws/chat/other/", "/ws/", "/", "/admin/"]

    async def attempts():
        statuses = {}
        for path in paths:
            for name, headers in {"api": api, "site": own, "both": own | api}.items():
                statuses[path, name] = await handshake(f"{ws}{path}", headers)
        statuses["chat"] = await handshake(server.ws_url, own)
        return statuses

    log_before = server.log_path.read_text()
    statuses = asyncio.run(attempts())
    assert statuses.pop("chat") == 101
    assert set(statuses.values()) == {403}, statuses
    log = server.log_path.read_text()[len(log_before) :]
    for sign in ("Traceback", "No route found", "Internal server error", " 500", "ERROR"):
        assert sign not in log, log
    assert log.count("WSREJECT") == len(statuses)
