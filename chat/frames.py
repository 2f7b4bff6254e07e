"""The client's frames, parsed: each parser returns a typed frame or raises the ClientError that
answers it, as a Django form gives `cleaned_data` or its errors (docs/protocol.md)."""

import dataclasses
import json
import uuid

from django.conf import settings

from chat import protocol, providers
from chat.errors import NO_SUCH_UPLOAD, ClientError
from chat.models import Attachment


def decode(text_data, bytes_data=None):
    """The frame's JSON object; nothing about its type or fields yet."""
    if text_data is None:
        raise ClientError("invalid_frame", "Frames must be JSON text, not binary.")
    if len(text_data) > settings.CHAT_MAX_FRAME_BYTES:
        raise ClientError("frame_too_large", f"Frames are limited to {settings.CHAT_MAX_FRAME_BYTES} bytes.")
    try:
        content = json.loads(text_data)
    except RecursionError:
        raise ClientError("invalid_json", "The frame is nested too deeply.") from None
    except ValueError:  # also integers too long to convert
        raise ClientError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(content, dict):
        raise ClientError("invalid_frame", "A frame must be a JSON object with a `type`.")
    return content


def client_id_of(content):
    """The client id an error frame repeats, whatever else is wrong with the frame."""
    client_id = content.get("client_id")
    return client_id if isinstance(client_id, str) else None


def parse(content):
    """The typed frame of a decoded `content`, by its `type`."""
    frame_type = content.get("type")
    parser = PARSERS.get(frame_type) if isinstance(frame_type, str) else None
    if parser is None:
        shown = f" {frame_type[:50]!r}" if isinstance(frame_type, str) else ""
        raise ClientError("unknown_type", f"Unknown frame type{shown}.")
    return parser.parse(content)


# --- fields ---------------------------------------------------------------------------------------


def clean_id(content, field):
    value = content.get(field)
    if not isinstance(value, str):
        raise ClientError("invalid_field", f"`{field}` must be an id string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        # The message names what the id is of: `parent` is a message too.
        raise ClientError("not_found", f"No such {'conversation' if field == 'conversation' else 'message'}.") from None


def clean_optional_id(content, field):
    return None if content.get(field) is None else clean_id(content, field)


def require_storable(value, field):
    """Text the database can store. JSON escapes can carry a NUL, which PostgreSQL refuses, and a
    lone surrogate (`\\ud800`), which is not Unicode text and cannot be encoded as UTF-8."""
    if "\x00" in value:
        raise ClientError("invalid_field", f"`{field}` must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("invalid_field", f"`{field}` must be valid Unicode text.") from None
    return value


def clean_text(content):
    """The `text` of a frame that stores a user message, as chat.send and chat.edit take it.
    Empty only beside attachments: files alone make a message (a screenshot, asked about in the
    next turn); chat.edit refuses it still (Edit.__post_init__)."""
    text = content.get("text")
    if not isinstance(text, str):
        raise ClientError("invalid_field", "`text` must be a string.")
    files = content.get("attachments")
    if not text.strip() and not (isinstance(files, list) and files):
        raise ClientError("empty_text", "The message is empty.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ClientError("text_too_long", f"The message is {len(text)} characters long; the limit is {limit}.")
    return require_storable(text, "text")


def clean_model(content):
    model = content.get("model")
    offered = providers.model_names()
    if model is not None and (not isinstance(model, str) or model not in offered):
        raise ClientError("unknown_model", f"Unknown model; choose one of: {', '.join(offered)}.")
    return model


def clean_client_id(content):
    client_id = content.get("client_id", "")
    if not isinstance(client_id, str) or len(client_id) > 64:
        raise ClientError("invalid_field", "`client_id` must be a string of at most 64 characters.")
    return require_storable(client_id, "client_id")


def clean_attachments(content):
    """The ids of `attachments` in their order, or None when the frame has no such key (chat.edit
    then keeps the edited message's). Malformed ids are refused like unknown ones: whose upload an
    id names is decided where it is stored (Attachment.objects.for_message)."""
    if "attachments" not in content or content["attachments"] is None:
        return None
    listed = content["attachments"]
    if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
        raise ClientError("invalid_field", "`attachments` must be a list of upload id strings.")
    limit = Attachment.PER_MESSAGE
    if len(listed) > limit:
        raise ClientError(
            "too_many_attachments", f"A message can carry at most {limit} attachments; this one has {len(listed)}."
        )
    ids = []
    for item in listed:
        try:
            ids.append(uuid.UUID(item))
        except ValueError:
            raise ClientError("not_found", NO_SUCH_UPLOAD) from None
    if len(set(ids)) != len(ids):
        raise ClientError("invalid_field", "`attachments` lists an upload twice.")
    return tuple(ids)


# --- the frames ----------------------------------------------------------------------------------
# The dataclasses below are the frames' description: their fields, in order, say what each frame
# carries and what is checked first, and Frame.parse derives the parsing from them. Frames with
# the same fields (chat.stop and chat.select, chat.regenerate and chat.continue) keep a class each:
# the class says which frame a handler was given, and one may gain a field without the other.

CLEANERS = {
    "text": clean_text,
    "model": clean_model,
    "client_id": clean_client_id,
    "attachments": clean_attachments,
}


@dataclasses.dataclass(frozen=True)
class Frame:
    """A parsed client frame. Its fields are checked in the order they are declared, so that a
    frame wrong in several ways is answered about the first; the others are ids."""

    optional = ()  # the id fields that may be null

    @classmethod
    def parse(cls, content):
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in CLEANERS:
                values[field.name] = CLEANERS[field.name](content)
            elif field.name in cls.optional:
                values[field.name] = clean_optional_id(content, field.name)
            else:
                values[field.name] = clean_id(content, field.name)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Send(Frame):
    text: str
    model: str | None
    client_id: str
    conversation: uuid.UUID | None
    parent: uuid.UUID | None
    attachments: tuple | None = None  # upload ids; None (absent) is none

    optional = ("conversation", "parent")

    def __post_init__(self):
        if self.parent is not None and self.conversation is None:
            raise ClientError("invalid_field", "`parent` needs a `conversation`.")


@dataclasses.dataclass(frozen=True)
class Subscribe(Frame):
    conversation: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Stop(Frame):
    message: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Select(Frame):
    message: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Regenerate(Frame):
    message: uuid.UUID
    model: str | None
    client_id: str


@dataclasses.dataclass(frozen=True)
class Edit(Frame):
    message: uuid.UUID
    text: str
    model: str | None
    client_id: str
    attachments: tuple | None = None  # upload ids; None (absent) keeps the edited message's

    def __post_init__(self):
        # An edit is of the words: even a message of files alone is edited into one with text.
        if not self.text.strip():
            raise ClientError("empty_text", "The message is empty.")


@dataclasses.dataclass(frozen=True)
class Continue(Frame):
    message: uuid.UUID
    model: str | None
    client_id: str


PARSERS = {
    protocol.CHAT_SEND: Send,
    protocol.CHAT_SUBSCRIBE: Subscribe,
    protocol.CHAT_STOP: Stop,
    protocol.CHAT_REGENERATE: Regenerate,
    protocol.CHAT_EDIT: Edit,
    protocol.CHAT_SELECT: Select,
    protocol.CHAT_CONTINUE: Continue,
}
