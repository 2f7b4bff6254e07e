"""The websocket protocol in one place (docs/protocol.md): the frame names, the kinds of streamed
text, the snapshot of an answer in flight, and the frames built from the models.

Everything an answer looks like on the wire is derived from here: adding a kind of streamed text
(say tool calls) touches STREAMS, the upstream parser and the page's renderer, nothing else.

Relay events (chat/relay.py) are `{type, message, frame, ...}` where `frame` is the browser's frame
encoded once for every socket following the conversation, and `type` names the follower's handler
(chat/follower.py). The account events go through the channel layer to every socket of a user or a
session (chat/signals.py).

This module imports nothing of the app: the models use its serialiser.
"""

import dataclasses
import datetime
import hashlib
import json
import typing
import uuid

# Client to server.
CHAT_SEND = "chat.send"
CHAT_STOP = "chat.stop"
CHAT_SUBSCRIBE = "chat.subscribe"
CHAT_REGENERATE = "chat.regenerate"
CHAT_EDIT = "chat.edit"
CHAT_SELECT = "chat.select"
CHAT_CONTINUE = "chat.continue"

# Server to client. The four `message.*` frames an answer makes while it is written are also the
# types of the relay events that carry them.
CONVERSATION_CREATED = "conversation.created"
CONVERSATION_SUBSCRIBED = "conversation.subscribed"
CONVERSATION_PATH = "conversation.path"
MESSAGE_CREATED = "message.created"
MESSAGE_STATUS = "message.status"
MESSAGE_SNAPSHOT = "message.snapshot"
MESSAGE_DELTA = "message.delta"  # the text's delta frame, and the relay event of every kind's delta
MESSAGE_DONE = "message.done"
ERROR = "error"

# Channel-layer events (each is handled by the consumer method of the same name).
ACCOUNT_CLOSED = "account.closed"
SESSION_CHECK = "session.check"


# --- the kinds of streamed text ------------------------------------------------------------------


class Stream(typing.NamedTuple):
    """One kind of text an answer streams: the Message field that keeps it, its delta frame."""

    name: str
    frame_type: str

    @classmethod
    def named(cls, name):
        # The answer's text came first and kept the plain name; every later kind names itself.
        return cls(name, MESSAGE_DELTA if name == "text" else f"message.{name}.delta")


# In the order a flush sends them: the reasoning before the text it led to.
STREAMS = tuple(Stream.named(name) for name in ("reasoning", "refusal", "text"))
STREAM_NAMES = tuple(stream.name for stream in STREAMS)
STREAMS_BY_NAME = {stream.name: stream for stream in STREAMS}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An answer in flight up to and including delta `seq`: what a socket that starts following
    it is sent first (`message.snapshot`), before the deltas after `seq`."""

    seq: int
    status: str
    text: str = ""
    reasoning: str = ""
    refusal: str = ""

    @classmethod
    def of_texts(cls, seq, status, texts):
        """From `texts`, a mapping of every stream's name to its text so far."""
        return cls(seq, status, **{name: texts[name] for name in STREAM_NAMES})

    @classmethod
    def of_row(cls, message):
        """The saved row as it is (its checkpoint), before any delta: seq 0."""
        return cls.of_texts(0, message.status, {name: getattr(message, name) for name in STREAM_NAMES})

    def frame(self, message_id):
        return {"type": MESSAGE_SNAPSHOT, "message": str(message_id), **dataclasses.asdict(self)}


# --- frames built from the models ----------------------------------------------------------------


def jsonable(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def fields_of(instance, names):
    """`{key: value}` of `instance` for `names`, each an attribute or a (key, attribute) pair;
    times as ISO 8601, ids as strings. The one serialiser of frames and exports."""
    pairs = (name if isinstance(name, tuple) else (name, name) for name in names)
    return {key: jsonable(getattr(instance, attribute)) for key, attribute in pairs}


CONVERSATION_FIELDS = ("id", "title", "model", "instructions", "created_at", "updated_at")

# The context an answer's input was fitted to (chat/answering/context.py): the id of the first
# message of its path that was sent, or None when all of it was. The page marks it ("Earlier
# messages are not sent to the model") for the latest answer. Sent from the moment the answer
# streams (message.status), and in every message frame after.
CONTEXT_FIELDS = ("context_start",)
# What an answer is once written, in message.created and message.done alike.
ANSWER_FIELDS = (
    "status",
    *STREAM_NAMES,
    "model",
    "started_at",
    "first_token_at",
    "finished_at",
    "usage",
    "estimated_tokens",
    "error",
    "incomplete_reason",
    *CONTEXT_FIELDS,
)
MESSAGE_FIELDS = ("id", ("conversation", "conversation_id"), ("parent", "parent_id"), "role", "created_at")
DONE_FIELDS = (("message", "id"), ("conversation", "conversation_id"), *ANSWER_FIELDS)


def conversation_frame(conversation):
    return fields_of(conversation, CONVERSATION_FIELDS)


def message_frame(message, version_ids, attachments=()):
    """The message as the protocol and the page describe it; `version_ids` are the ids of its
    versions, itself included, oldest first (chat.models.MessageTree.version_ids); `attachments`
    the frames of its attachments in order (chat.models.Attachment.message_frame)."""
    ids = [str(version) for version in version_ids]
    versions = {"index": ids.index(str(message.id)), "count": len(ids), "ids": ids}
    return {
        **fields_of(message, MESSAGE_FIELDS),
        "versions": versions,
        **fields_of(message, ANSWER_FIELDS),
        # The owner's rating of an answer (message.done carries none: a new answer has none yet).
        "feedback": message.feedback_frame,
        # The files sent with a user message; an answer has none.
        "attachments": list(attachments),
    }


# --- the relay's events --------------------------------------------------------------------------


def frame_event(message_id, frame, event_type=None, **extra):
    """A relay event carrying `frame`, encoded once for every socket following the conversation;
    its type is the frame's unless given."""
    return {"type": event_type or frame["type"], "message": str(message_id), "frame": json.dumps(frame), **extra}


def created_event(message):
    """`message`, a frame as message_frame() made it, announced to the conversation's sockets."""
    frame = {"type": MESSAGE_CREATED, "conversation": message["conversation"], "message": message}
    return frame_event(message["id"], frame)


def status_event(message_id, status, start=None, **context):
    """A change of status. A worker's taking of the answer carries `context` (CONTEXT_FIELDS) and,
    for a continued answer, `start`: the text it goes on from, by stream name, with which the
    relay starts the snapshot other processes resume from, before the answer's first delta."""
    frame = {"type": MESSAGE_STATUS, "message": str(message_id), "status": status}
    frame.update((name, jsonable(context[name])) for name in CONTEXT_FIELDS if name in context)
    event = frame_event(message_id, frame)
    if start:
        event["start"] = start
    return event


def delta_event(message_id, seq, stream, delta):
    """One flush of one stream. `stream` and `delta` let the relay keep the snapshot that other
    processes resume from (chat/relay.py); `seq` lets each socket drop what its snapshot holds."""
    return DeltaEvents(message_id).event(seq, stream.name, delta)


class DeltaEvents:
    """The delta events of one answer (see delta_event), made once per flush on the answer's
    thread: the frame is the text json.dumps gives for it, but only the delta is encoded, after a
    prefix encoded once per answer and stream (tests/unit/test_protocol.py compares the two)."""

    def __init__(self, message_id):
        self.message_id = str(message_id)
        message = json.dumps(self.message_id)
        self.prefixes = {
            stream.name: f'{{"type": {json.dumps(stream.frame_type)}, "message": {message}, "seq": '
            for stream in STREAMS
        }

    def event(self, seq, stream_name, delta):
        frame = f'{self.prefixes[stream_name]}{int(seq)}, "delta": {json.dumps(delta)}}}'
        return {
            "type": MESSAGE_DELTA,
            "message": self.message_id,
            "frame": frame,
            "seq": seq,
            "stream": stream_name,
            "delta": delta,
        }


def done_event(message):
    """The answer's end as saved. Queries (the owner's budget): build it where the ORM may run."""
    frame = {
        "type": MESSAGE_DONE,
        **fields_of(message, DONE_FIELDS),
        # The owner's budget with this answer spent: every socket of the group is the owner's.
        "budget": message.owner_budget(),
    }
    return frame_event(message.id, frame)


# --- the account's sockets, through the channel layer --------------------------------------------


def user_group(user_id):
    """Every socket of one user."""
    return f"chat.user.{user_id}"


def session_group(session_key):
    """Every socket of one login session (named by a digest: group names are not secret)."""
    return f"chat.session.{hashlib.sha256(session_key.encode()).hexdigest()[:32]}"


# Why a socket's session no longer lets it act: the `error` frame's code and sentence, sent just
# before the socket is closed with CLOSE_SESSION_ENDED (the browser then asks whether it is still
# signed in, and reconnects or shows that it is signed out).
SESSION_ENDINGS = {
    "logged_out": "You logged out.",
    "session_expired": "Your session has ended: log in again.",
    "password_changed": "Your password was changed: log in again.",
    "account_disabled": "This account has been deactivated.",
    "account_deleted": "This account has been deleted.",
}
CLOSE_SESSION_ENDED = 4401


def error_frame(code, message, client_id=None):
    frame = {"type": ERROR, "code": code, "message": message}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def session_ended_frame(code):
    return error_frame(code, SESSION_ENDINGS[code])


def account_closed_event(code):
    """The session or account behind a socket ended for certain (logout): close at once."""
    return {"type": ACCOUNT_CLOSED, "code": code}


def session_check_event():
    """Something about the account changed: each socket re-checks its own session."""
    return {"type": SESSION_CHECK}


# --- The sidebar's rows, on every socket of their owner ---------------------------------------

# Server to client: a conversation was pinned, archived or restored in some tab.
CONVERSATION_UPDATED = "conversation.updated"
# The channel-layer event that carries it (ChatConsumer.conversation_updated forwards it).
EVENT_CONVERSATION_UPDATED = "conversation.updated"


def conversation_updated_event(item):
    """`item` is Conversation.sidebar_item(); the frame is encoded once for every socket."""
    return {
        "type": EVENT_CONVERSATION_UPDATED,
        "frame": json.dumps({"type": CONVERSATION_UPDATED, "conversation": item}),
    }
