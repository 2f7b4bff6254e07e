"""Names of the websocket protocol and of the channel-layer events behind it (docs/protocol.md).

Frame types sent to browsers are the contract of docs/protocol.md; the channel-layer event types
are the names of the ChatConsumer methods that forward them.
"""

import hashlib
import json

# Client to server.
CHAT_SEND = "chat.send"
CHAT_STOP = "chat.stop"
CHAT_SUBSCRIBE = "chat.subscribe"
CHAT_REGENERATE = "chat.regenerate"
CHAT_EDIT = "chat.edit"
CHAT_SELECT = "chat.select"

# Server to client.
CONVERSATION_CREATED = "conversation.created"
CONVERSATION_SUBSCRIBED = "conversation.subscribed"
CONVERSATION_PATH = "conversation.path"
MESSAGE_CREATED = "message.created"
MESSAGE_STATUS = "message.status"
MESSAGE_SNAPSHOT = "message.snapshot"
MESSAGE_DELTA = "message.delta"
MESSAGE_REASONING_DELTA = "message.reasoning.delta"
MESSAGE_REFUSAL_DELTA = "message.refusal.delta"
MESSAGE_DONE = "message.done"
ERROR = "error"

# Channel-layer events (each is handled by the consumer method of the same name).
EVENT_ACCOUNT_CLOSED = "account.closed"
EVENT_SESSION_CHECK = "session.check"
EVENT_CREATED = "message.created"
EVENT_STATUS = "message.status"
EVENT_DELTA = "message.delta"
EVENT_DONE = "message.done"


def frame_event(event_type, message_id, frame):
    """A channel-layer event carrying a frame encoded once for every socket of the group."""
    return {"type": event_type, "message": str(message_id), "frame": json.dumps(frame)}


def created_event(message):
    frame = {
        "type": MESSAGE_CREATED,
        "conversation": str(message.conversation_id),
        "message": message.as_frame(),
    }
    return frame_event(EVENT_CREATED, message.id, frame)


def status_event(message_id, status):
    frame = {"type": MESSAGE_STATUS, "message": str(message_id), "status": status}
    return frame_event(EVENT_STATUS, message_id, frame)


def done_event(message):
    frame = {
        "type": MESSAGE_DONE,
        "message": str(message.id),
        "conversation": str(message.conversation_id),
        "status": message.status,
        "text": message.text,
        "reasoning": message.reasoning,
        "refusal": message.refusal,
        "usage": message.usage,
        "estimated_tokens": message.estimated_tokens,
        "error": message.error,
        "incomplete_reason": message.incomplete_reason,
        "model": message.model,
        "started_at": message.started_at.isoformat() if message.started_at else None,
        "first_token_at": message.first_token_at.isoformat() if message.first_token_at else None,
        "finished_at": message.finished_at.isoformat() if message.finished_at else None,
        # The owner's budget with this answer spent: every socket of the group is the owner's.
        "budget": message.owner_budget(),
    }
    return frame_event(EVENT_DONE, message.id, frame)


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


def session_ended_frame(code):
    return {"type": ERROR, "code": code, "message": SESSION_ENDINGS[code]}


def account_closed_event(code):
    """The session or account behind a socket ended for certain (logout): close at once."""
    return {"type": EVENT_ACCOUNT_CLOSED, "code": code}


def session_check_event():
    """Something about the account changed: each socket re-checks its own session."""
    return {"type": EVENT_SESSION_CHECK}


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
