"""The client's frames parsed into typed values, or refused with the error that answers them
(`chat.frames`); no socket, no database. The same refusals through a real socket are in
tests/test_frames.py."""

import dataclasses
import json
import uuid

import pytest

from chat import frames
from chat.errors import ClientError

CONVERSATION = str(uuid.uuid4())
MESSAGE = str(uuid.uuid4())


@pytest.fixture(autouse=True)
def offered_models(settings):
    settings.OPENRESPONSES_API_KEY = "sk-test"
    settings.OPENRESPONSES_MODELS = ["test-model", "other-model"]
    settings.LOCAL_MODEL_ENABLED = False
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    settings.CHAT_MAX_FRAME_BYTES = 20_000


def refusal(content):
    with pytest.raises(ClientError) as caught:
        frames.parse(content)
    return caught.value.code, caught.value.message


def test_each_frame_type_parses_into_a_frozen_value_of_its_fields():
    send = frames.parse({"type": "chat.send", "conversation": None, "text": "hi", "model": "other-model"})
    assert send == frames.Send(text="hi", model="other-model", client_id="", conversation=None, parent=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        send.text = "changed"
    frame = {"type": "chat.send", "conversation": CONVERSATION, "parent": MESSAGE, "text": "x", "client_id": "k"}
    assert frames.parse(frame) == frames.Send("x", None, "k", uuid.UUID(CONVERSATION), uuid.UUID(MESSAGE))
    assert frames.parse({"type": "chat.subscribe", "conversation": CONVERSATION}) == frames.Subscribe(
        uuid.UUID(CONVERSATION)
    )
    assert frames.parse({"type": "chat.stop", "message": MESSAGE}) == frames.Stop(uuid.UUID(MESSAGE))
    assert frames.parse({"type": "chat.select", "message": MESSAGE}) == frames.Select(uuid.UUID(MESSAGE))
    assert frames.parse({"type": "chat.regenerate", "message": MESSAGE}) == frames.Regenerate(
        uuid.UUID(MESSAGE), None, ""
    )
    assert frames.parse({"type": "chat.edit", "message": MESSAGE, "text": "new"}) == frames.Edit(
        uuid.UUID(MESSAGE), "new", None, ""
    )
    assert frames.parse({"type": "chat.continue", "message": MESSAGE, "client_id": "c"}) == frames.Continue(
        uuid.UUID(MESSAGE), None, "c"
    )


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ({}, "unknown_type"),
        ({"type": 3}, "unknown_type"),
        ({"type": "chat.nothing"}, "unknown_type"),
        ({"type": "chat.send", "conversation": None}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": " \n"}, "empty_text"),
        ({"type": "chat.send", "conversation": None, "text": "x" * 101}, "text_too_long"),
        ({"type": "chat.send", "conversation": None, "text": "nul \x00"}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": "\ud800"}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "model": "gpt-unknown"}, "unknown_model"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "model": ["test-model"]}, "unknown_model"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "client_id": "k" * 65}, "invalid_field"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "client_id": 7}, "invalid_field"),
        ({"type": "chat.send", "conversation": 7, "text": "hi"}, "invalid_field"),
        ({"type": "chat.send", "conversation": "not an id", "text": "hi"}, "not_found"),
        ({"type": "chat.send", "conversation": None, "text": "hi", "parent": MESSAGE}, "invalid_field"),
        ({"type": "chat.send", "conversation": CONVERSATION, "text": "hi", "parent": "nope"}, "not_found"),
        ({"type": "chat.subscribe"}, "invalid_field"),
        ({"type": "chat.stop", "message": {"id": MESSAGE}}, "invalid_field"),
        ({"type": "chat.select", "message": "nope"}, "not_found"),
        ({"type": "chat.regenerate", "message": MESSAGE, "model": "nope"}, "unknown_model"),
        ({"type": "chat.edit", "message": MESSAGE}, "invalid_field"),
        ({"type": "chat.edit", "message": MESSAGE, "text": "ok", "client_id": "a\x00"}, "invalid_field"),
    ],
)
def test_a_bad_field_is_refused_with_its_code(content, code):
    assert refusal(content)[0] == code


def test_the_refusal_names_what_is_wrong():
    assert refusal({"type": "chat.nothing"})[1] == "Unknown frame type 'chat.nothing'."
    assert refusal({"type": "x" * 80})[1] == f"Unknown frame type {'x' * 50!r}."
    assert refusal({"type": "chat.subscribe", "conversation": "nope"})[1] == "No such conversation."
    assert refusal({"type": "chat.stop", "message": "nope"})[1] == "No such message."
    assert "other-model" in refusal({"type": "chat.edit", "message": MESSAGE, "text": "t", "model": "?"})[1]


def test_fields_are_checked_in_order_so_the_first_wrong_one_is_named():
    """chat.send checks text, model, client id, conversation, parent: a frame wrong in several
    ways is answered about the first."""
    frame = {"type": "chat.send", "conversation": 7, "text": "", "model": "nope"}
    assert refusal(frame)[0] == "empty_text"
    assert refusal({**frame, "text": "hi"})[0] == "unknown_model"
    assert refusal({**frame, "text": "hi", "model": None})[0] == "invalid_field"


@pytest.mark.parametrize(
    ("text_data", "bytes_data", "code"),
    [
        (None, b"{}", "invalid_frame"),
        ("x" * 20_001, None, "frame_too_large"),
        ("{", None, "invalid_json"),
        ("[" * 5000 + "]" * 5000, None, "invalid_json"),  # nested too deeply to parse
        ("1" * 5000, None, "invalid_json"),  # an integer too long to convert
        ("1" * 50, None, "invalid_frame"),
        ("[1]", None, "invalid_frame"),
        ('"chat.send"', None, "invalid_frame"),
    ],
)
def test_decoding_refuses_what_is_not_a_json_object(text_data, bytes_data, code):
    with pytest.raises(ClientError) as caught:
        frames.decode(text_data, bytes_data)
    assert caught.value.code == code


def test_the_client_id_is_repeated_only_when_it_is_a_string():
    assert frames.client_id_of(frames.decode(json.dumps({"client_id": "k"}))) == "k"
    assert frames.client_id_of({"client_id": 5}) is None
    assert frames.client_id_of({}) is None
