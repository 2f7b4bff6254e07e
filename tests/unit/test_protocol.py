"""The one description of an answer on the wire (`chat.protocol`): stream kinds, the snapshot
value and the frames built from unsaved models, with no database."""

import dataclasses
import datetime
import json
import uuid

import pytest

from chat import protocol
from chat.models import Conversation, Message

WHEN = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def answer(**fields):
    return Message(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        parent_id=uuid.uuid4(),
        role=Message.Role.ASSISTANT,
        **{"status": Message.Status.COMPLETED, "text": "Flowing water.", "created_at": WHEN, **fields},
    )


def test_every_stream_is_a_message_field_with_a_delta_frame_of_its_own():
    assert protocol.STREAM_NAMES == ("reasoning", "refusal", "text"), "reasoning flushes before its text"
    assert [stream.frame_type for stream in protocol.STREAMS] == [
        "message.reasoning.delta",
        "message.refusal.delta",
        "message.delta",
    ]
    for name in protocol.STREAM_NAMES:
        assert Message._meta.get_field(name).get_internal_type() == "TextField"
    assert {field.name for field in dataclasses.fields(protocol.Snapshot)} == {"seq", "status", *protocol.STREAM_NAMES}


def test_a_snapshot_is_a_frozen_value_built_from_texts_and_sent_as_its_frame():
    texts = {"text": "Flow", "reasoning": "Think", "refusal": "", "ignored": "x"}
    snapshot = protocol.Snapshot.of_texts(3, "streaming", texts)
    assert snapshot == protocol.Snapshot(3, "streaming", text="Flow", reasoning="Think")
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.seq = 4
    assert snapshot.frame(uuid.UUID(int=7)) == {
        "type": "message.snapshot",
        "message": str(uuid.UUID(int=7)),
        "seq": 3,
        "status": "streaming",
        "text": "Flow",
        "reasoning": "Think",
        "refusal": "",
    }
    with pytest.raises(KeyError):
        protocol.Snapshot.of_texts(0, "queued", {"text": ""})  # every stream, or none


def test_a_message_frame_has_every_documented_field_and_its_versions_without_a_query():
    message = answer(started_at=WHEN, input_tokens=3, output_tokens=2, total_tokens=5, error_code="x")
    other = uuid.uuid4()
    frame = message.as_frame([other, message.id])
    assert list(frame) == [
        *("id", "conversation", "parent", "role", "created_at", "versions", "status"),
        *("reasoning", "refusal", "text", "model", "started_at", "first_token_at", "finished_at"),
        *("usage", "estimated_tokens", "error", "incomplete_reason", "context_start", "feedback"),
        "attachments",
    ]
    assert frame["versions"] == {"index": 1, "count": 2, "ids": [str(other), str(message.id)]}
    assert frame["conversation"] == str(message.conversation_id) and frame["parent"] == str(message.parent_id)
    assert frame["created_at"] == WHEN.isoformat() and frame["started_at"] == WHEN.isoformat()
    assert frame["finished_at"] is None
    assert frame["usage"]["total_tokens"] == 5 and frame["error"] == {"code": "x", "message": ""}
    assert json.loads(json.dumps(frame)) == frame
    first = Message(id=uuid.uuid4(), conversation_id=uuid.uuid4(), role="user", created_at=WHEN)
    assert first.as_frame([first.id])["parent"] is None


def test_the_done_frame_repeats_the_answer_fields_of_the_message_frame():
    message = answer(finished_at=WHEN, incomplete_reason="max_output_tokens", estimated_tokens=9)
    message.owner_budget = lambda: {"used": 9}
    event = protocol.done_event(message)
    frame = json.loads(event["frame"])
    assert event["type"] == frame["type"] == "message.done" and event["message"] == str(message.id)
    created = message.as_frame([message.id])
    assert frame["message"] == created["id"] and frame["budget"] == {"used": 9}
    for name in protocol.ANSWER_FIELDS:
        assert frame[name] == created[name], name
    assert set(frame) == {"type", "message", "conversation", "budget", *protocol.ANSWER_FIELDS}


def test_relay_events_carry_their_frame_encoded_once():
    message = answer()
    created = protocol.created_event(message.as_frame([message.id]))
    assert created["type"] == "message.created" and created["message"] == str(message.id)
    assert json.loads(created["frame"])["conversation"] == str(message.conversation_id)
    status = protocol.status_event(message.id, "streaming")
    assert json.loads(status["frame"]) == {"type": "message.status", "message": str(message.id), "status": "streaming"}
    reasoning = protocol.STREAMS[0]
    delta = protocol.delta_event(str(message.id), 4, reasoning, "hmm")
    # Every kind of delta is one relay event type; the frame says which kind it is.
    assert (delta["type"], delta["seq"], delta["stream"], delta["delta"]) == ("message.delta", 4, "reasoning", "hmm")
    assert json.loads(delta["frame"]) == {
        "type": "message.reasoning.delta",
        "message": str(message.id),
        "seq": 4,
        "delta": "hmm",
    }


@pytest.mark.parametrize(
    "delta", ["plain", 'quotes " and \\ backslash', "line\nbreak\ttab", "naïve 😀", "\u2028\x00\x1f", "{}", ""]
)
def test_a_delta_frame_is_the_text_json_dumps_gives_whatever_the_delta(delta):
    # The answer thread encodes only the delta after a prefix kept per answer (DeltaEvents): the
    # frame must be exactly the JSON the browser would get from encoding the whole frame.
    message_id = str(uuid.uuid4())
    events = protocol.DeltaEvents(message_id)
    for seq, stream in enumerate(protocol.STREAMS, start=7):
        event = events.event(seq, stream.name, delta)
        frame = {"type": stream.frame_type, "message": message_id, "seq": seq, "delta": delta}
        assert event["frame"] == json.dumps(frame)
        extra = {"seq": seq, "stream": stream.name, "delta": delta}
        assert event == protocol.frame_event(message_id, frame, "message.delta", **extra)


def test_a_conversation_frame_is_its_public_fields():
    conversation = Conversation(id=uuid.uuid4(), title="Rivers", model="m", created_at=WHEN, updated_at=WHEN)
    assert conversation.as_frame() == {
        "id": str(conversation.id),
        "title": "Rivers",
        "model": "m",
        "instructions": "",
        "created_at": WHEN.isoformat(),
        "updated_at": WHEN.isoformat(),
    }


def test_error_frames_repeat_the_client_id_only_when_there_is_one():
    assert protocol.error_frame("busy", "Wait.") == {"type": "error", "code": "busy", "message": "Wait."}
    assert protocol.error_frame("busy", "Wait.", "k")["client_id"] == "k"
    assert protocol.session_ended_frame("logged_out")["message"] == protocol.SESSION_ENDINGS["logged_out"]


def test_the_status_frame_of_a_worker_taking_an_answer_says_where_its_input_started():
    first = uuid.uuid4()
    taken = json.loads(protocol.status_event("a1", "streaming", context_start=first)["frame"])
    assert taken == {"type": "message.status", "message": "a1", "status": "streaming", "context_start": str(first)}
    whole = json.loads(protocol.status_event("a1", "streaming", context_start=None)["frame"])
    assert "context_start" in whole and whole["context_start"] is None, "decided: all of it was sent"
    requeued = json.loads(protocol.status_event("a1", "queued")["frame"])
    assert "context_start" not in requeued, "the upstream queueing it decides nothing about its input"
