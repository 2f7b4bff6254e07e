"""Importing conversations from a file: this site's export, ChatGPT's `conversations.json` and
Open WebUI's chat export, recognised by their content.

Each format is read into drafts (`Draft`, `DraftMessage`): a tree of messages in the source's own
shape. `build_tree` turns that into the shape this site stores (chat.models.MessageTree: a user
message follows an answer, an answer follows a user message, and messages with the same parent and
role are versions of one another), so branches of every format become versions. `import_file` then
stores every conversation of the file in one transaction, or none of them.

What cannot be represented (images, files, tool calls and their results, unknown content) is left
out and named in the answer's `skipped` list; a file that is not one of the three formats, or whose
structure is broken, is refused with an `ImportRefused` sentence and stores nothing.

Imported answers never went upstream from this site: no usage-ledger entry is made for them, and
they are stored finished (an answer left "streaming" in the file is stored as interrupted), so the
reaper and the ledger never take them for answers of this site.
"""

import datetime
import hashlib
import json
import logging
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import INSTRUCTIONS_LENGTH, TITLE_LENGTH, Conversation, Message

logger = logging.getLogger(__name__)

MODEL_LENGTH = Message._meta.get_field("model").max_length
# Upstream names kept whole or not at all (Message.fit).
FITTED = {"response_id", "error_code", "incomplete_reason"}
# Two messages read from a file with the same time (or none) are stored this far apart, so that
# versions keep the order the source gave them (MessageTree orders by created_at).
TICK = datetime.timedelta(microseconds=1)


class ImportRefused(Exception):
    """The file cannot be imported; the sentence says why. Nothing was stored."""

    def __init__(self, message, code="invalid_file"):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class DraftMessage:
    role: str  # Message.Role
    text: str = ""
    reasoning: str = ""
    status: str = Message.Status.COMPLETED
    model: str = ""
    created_at: datetime.datetime | None = None
    # Other columns the source knows (this site's export: usage, errors, timings...).
    extra: dict = field(default_factory=dict)
    parent: "DraftMessage | None" = None
    # Set by build_tree when a following message of the same role was joined to this one.
    joined: bool = False

    def is_empty(self):
        return not (self.text or self.reasoning or self.extra.get("error_message") or self.extra.get("refusal"))


@dataclass(eq=False)
class SourceNode:
    """One node of a source's tree: a message, or None for a node with nothing to keep."""

    id: str
    parent_id: str | None
    message: DraftMessage | None


@dataclass(eq=False)
class Draft:
    """One conversation read from a file, ready to be stored."""

    source: str  # Conversation.Source
    key: str  # the import_key: unique per owner
    original_id: str  # the id in the source, for the answer ("" when it had none)
    title: str = ""
    model: str = ""
    instructions: str = ""
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    pinned: bool = False
    archived: bool = False
    messages: list = field(default_factory=list)  # DraftMessage, every parent before its children
    current: DraftMessage | None = None
    left_out: Counter = field(default_factory=Counter)  # what was not kept -> how many

    @property
    def name(self):
        return self.title or "Untitled conversation"


# --- small readers that refuse what is malformed --------------------------------------------

# NUL cannot be stored in PostgreSQL text, and a lone surrogate (JSON allows `\ud800`) is not
# Unicode text at all: neither is anything a person wrote.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean(text):
    return UNSTORABLE.sub("", text)


def text_of(value, where, default=""):
    if value is None:
        return default
    if not isinstance(value, str):
        raise ImportRefused(f"{where} must be text.")
    return clean(value)


def mapping_of(value, where):
    if not isinstance(value, dict):
        raise ImportRefused(f"{where} must be an object.")
    return value


def list_of(value, where, default=None):
    if value is None and default is not None:
        return default
    if not isinstance(value, list):
        raise ImportRefused(f"{where} must be a list.")
    return value


def epoch(value, where):
    """A time given as seconds since 1970 (or milliseconds, or nanoseconds, as some tools write)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ImportRefused(f"{where} must be a number of seconds.")
    for scale in (1, 1e3, 1e6, 1e9):
        if abs(value / scale) < 1e11:  # before the year 5138
            try:
                return datetime.datetime.fromtimestamp(value / scale, tz=datetime.UTC)
            except (OverflowError, OSError, ValueError):
                break
    raise ImportRefused(f"{where} is not a time.")


def iso_time(value, where):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImportRefused(f"{where} must be a time (ISO 8601 text).")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ImportRefused(f"{where} is not a time (ISO 8601).") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, datetime.UTC)


def token_count(value):
    """A token figure the source reported, or None: figures are history, never required."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


def digest_of(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8", "replace")).hexdigest()


def join(first, second):
    return f"{first}\n\n{second}" if first and second else first or second


# --- what every format's reader shares -------------------------------------------------------


def import_key(prefix, original_id, record):
    """The key that finds a conversation imported before: its id in the source, or without one
    the digest of its record (the same file imported twice gives the same keys)."""
    return f"{prefix}:{original_id}" if original_id else f"{prefix}:sha256:{digest_of(record)}"


def adopt_instructions(draft, text):
    """A system message's text becomes the conversation's instructions, unless it has some."""
    if text and not draft.instructions:
        draft.instructions = text


def keep_role(draft, role):
    """Whether a message of `role` can be stored here; one of any other role is counted as left out."""
    if role in ("user", "assistant"):
        return True
    draft.left_out[f"messages from {str(role)[:40]!r}"] += 1
    return False


def fill_model(draft, default):
    """A conversation that names no model of its own is given the last model that answered in it."""
    if not draft.model:
        used = [message.model for message in draft.messages if message.model]
        draft.model = used[-1] if used else default


# --- the tree ---------------------------------------------------------------------------------


def build_tree(draft, nodes, current_id=None, where="The conversation"):
    """Store-shaped messages for `draft` from a source tree (`nodes`, each naming its parent).

    A node without a message is passed through: its children follow what it followed. A message of
    the role its parent already has (ChatGPT's answer, tool call and answer again; two user
    messages in a row) is joined to the parent, or for a second such branch joined to a copy of
    the parent beside it: a version. An answer at the very start, answering nothing, is left out.
    The current message is the one `current_id` names, or the end of the newest branch.
    """
    by_id, children, roots = index_nodes(nodes, where)
    stored_for = {}  # source id -> the stored draft message its children follow (or None)
    own_text = {}  # a stored message -> its text and reasoning before anything was joined to it
    stack = [(node, None) for node in reversed(roots)]
    while stack:
        node, attach = stack.pop()
        out = place(draft, node.message, attach, own_text)
        stored_for[node.id] = out
        for child in reversed(children[node.id]):
            stack.append((child, out))
    # Every node is reached from a root unless its parents go round in a circle.
    if len(stored_for) != len(by_id):
        raise ImportRefused(f"{where} has messages in a loop (each one's parent follows it).")

    draft.current = stored_for.get(current_id) if current_id is not None else None
    if draft.current is None and draft.messages:
        draft.current = newest_leaf(draft.messages)


def index_nodes(nodes, where):
    """The nodes by id, each one's children (in the source's order) and the roots.

    A node whose parent is not in the file is a root: exports cut from a longer history name one.
    """
    by_id = {}
    for node in nodes:
        if node.id in by_id:
            raise ImportRefused(f"{where} has two messages with the id {node.id[:80]!r}.")
        by_id[node.id] = node
    children = defaultdict(list)
    roots = []
    for node in nodes:
        if node.parent_id is None or node.parent_id not in by_id:
            roots.append(node)
        else:
            children[node.parent_id].append(node)
    return by_id, children, roots


def place(draft, message, attach, own_text):
    """Put `message` below `attach` (what its source parent became); the stored message its
    children follow, or None."""
    if message is None or (message.is_empty() and message.status == Message.Status.COMPLETED):
        return attach
    if attach is not None and attach.role == message.role:
        if not attach.joined:
            return join_into(attach, message, own_text)
        return join_beside(draft, attach, message, own_text)
    if attach is None and message.role == Message.Role.ASSISTANT:
        draft.left_out["opening answers without a question"] += 1
        return None
    message.parent = attach
    draft.messages.append(message)
    return message


def join_into(attach, message, own_text):
    """The first message of `attach`'s own role below it is joined to it: one answer in parts."""
    # Kept so that a second branch of the same role can be joined to `attach` as it was.
    own_text[attach] = (attach.text, attach.reasoning)
    attach.text = join(attach.text, message.text)
    attach.reasoning = join(attach.reasoning, message.reasoning)
    attach.joined = True
    attach.model = message.model or attach.model
    attach.status = message.status
    attach.extra.update(message.extra)
    return attach


def join_beside(draft, attach, message, own_text):
    """A further such branch becomes a version of `attach`: its own text, then this message's."""
    text, reasoning = own_text[attach]
    message.text = join(text, message.text)
    message.reasoning = join(reasoning, message.reasoning)
    message.parent = attach.parent
    message.created_at = message.created_at or attach.created_at
    draft.messages.append(message)
    return message


def newest_leaf(messages):
    below = defaultdict(list)
    for message in messages:
        below[message.parent].append(message)
    message = below[None][-1] if below[None] else messages[-1]
    while below[message]:
        message = below[message][-1]
    return message


# --- this site's export (chat/transcripts.py) ----------------------------------------------

OUR_FIELDS = {
    # name in the export -> how it is read
    "refusal": "text",
    "response_id": "text",
    "error_code": "text",
    "error_message": "text",
    "incomplete_reason": "text",
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "total_tokens": "tokens",
    "cached_tokens": "tokens",
    "reasoning_tokens": "tokens",
    "started_at": "time",
    "first_token_at": "time",
    "finished_at": "time",
}
STATUSES = set(Message.Status.values)


# The readers of the two formats (read_our_conversation, read_chatgpt_conversation) have the same
# shape, a Draft filled field by field, because they fill the same Draft: what differs is every
# source field's name, its type (ISO time or epoch), its fallbacks and its error's wording, so the
# explicit reading is the shortest description of each format; a shared field table would need
# all four per field.


def read_ours(data):
    records = list_of(data.get("conversations"), "`conversations`")
    return [read_our_conversation(record, index) for index, record in enumerate(records, 1)]


def read_our_conversation(record, index):
    where = f"Conversation {index}"
    record = mapping_of(record, where)
    original_id = text_of(record.get("id"), f"{where}: `id`")
    draft = Draft(
        source=Conversation.Source.CHAT,
        key=import_key("chat", original_id, record),
        original_id=original_id,
        title=text_of(record.get("title"), f"{where}: `title`"),
        model=text_of(record.get("model"), f"{where}: `model`"),
        instructions=text_of(record.get("instructions"), f"{where}: `instructions`"),
        created_at=iso_time(record.get("created_at"), f"{where}: `created_at`"),
        updated_at=iso_time(record.get("updated_at"), f"{where}: `updated_at`"),
    )
    messages = list_of(record.get("messages"), f"{where}: `messages`")
    nodes = [read_our_message(message, number, where) for number, message in enumerate(messages, 1)]
    # An export names its attachments but holds no file: there is nothing to attach here.
    attached = sum(len(message["attachments"]) for message in messages if isinstance(message.get("attachments"), list))
    if attached:
        draft.left_out["attached files (an export names them, it does not hold them)"] += attached
    current = text_of(record.get("current"), f"{where}: `current`", default=None)
    build_tree(draft, nodes, current, where)
    return draft


def read_our_message(message, number, where):
    """The source node for message `number` of this site's export (the list's order, from 1)."""
    spot = f"{where}, message {number}"
    message = mapping_of(message, spot)
    role = message.get("role")
    if role not in Message.Role.values:
        raise ImportRefused(f"{spot}: `role` must be one of {', '.join(Message.Role.values)}.")
    status = our_status(message, spot)
    extra = our_extra(message, spot)
    message_id = text_of(message.get("id"), f"{spot}: `id`") or f"#{number}"
    parent_id = text_of(message.get("parent"), f"{spot}: `parent`", default=None)
    return SourceNode(
        message_id,
        parent_id,
        DraftMessage(
            role=role,
            text=text_of(message.get("text"), f"{spot}: `text`"),
            reasoning=text_of(message.get("reasoning"), f"{spot}: `reasoning`"),
            status=status,
            model=text_of(message.get("model"), f"{spot}: `model`"),
            created_at=iso_time(message.get("created_at"), f"{spot}: `created_at`"),
            extra=extra,
        ),
    )


def our_status(message, spot):
    status = message.get("status", Message.Status.COMPLETED)
    if status not in STATUSES:
        raise ImportRefused(f"{spot}: `status` must be one of {', '.join(sorted(STATUSES))}.")
    if status in Message.UNFINISHED:
        status = Message.Status.INTERRUPTED  # it is not being written here
    return status


def our_extra(message, spot):
    """The other columns of one exported message, each read as OUR_FIELDS says."""
    extra = {}
    for name, kind in OUR_FIELDS.items():
        value = message.get(name)
        if kind == "text":
            extra[name] = text_of(value, f"{spot}: `{name}`")
        elif kind == "tokens":
            extra[name] = token_count(value)
        else:
            extra[name] = iso_time(value, f"{spot}: `{name}`")
    return extra


# --- ChatGPT's conversations.json ------------------------------------------------------------

# ChatGPT's finish_details.type -> (status, incomplete reason)
CHATGPT_ENDINGS = {
    "max_tokens": (Message.Status.INCOMPLETE, "max_output_tokens"),
    "interrupted": (Message.Status.CANCELLED, ""),
}
# Content that is part of the conversation's machinery, not of what anyone said: left out silently.
CHATGPT_MACHINERY = {"reasoning_recap", "model_editable_context"}


def read_chatgpt(data):
    return [read_chatgpt_conversation(record, index) for index, record in enumerate(data, 1)]


def read_chatgpt_conversation(record, index):
    where = f"Conversation {index}"
    record = mapping_of(record, where)
    original_id = text_of(record.get("conversation_id") or record.get("id"), f"{where}: `id`")
    draft = Draft(
        source=Conversation.Source.CHATGPT,
        key=import_key("chatgpt", original_id, record),
        original_id=original_id,
        title=text_of(record.get("title"), f"{where}: `title`"),
        model=text_of(record.get("default_model_slug"), f"{where}: `default_model_slug`"),
        created_at=epoch(record.get("create_time"), f"{where}: `create_time`"),
        updated_at=epoch(record.get("update_time"), f"{where}: `update_time`"),
        archived=record.get("is_archived") is True,
    )
    nodes = []
    for node_id, node in mapping_of(record.get("mapping"), f"{where}: `mapping`").items():
        spot = f"{where}, node {node_id[:80]!r}"
        node = mapping_of(node, spot)
        parent_id = text_of(node.get("parent"), f"{spot}: `parent`", default=None)
        message = node.get("message")
        nodes.append(
            SourceNode(
                node_id, parent_id, None if message is None else chatgpt_message(draft, mapping_of(message, spot), spot)
            )
        )
    current = text_of(record.get("current_node"), f"{where}: `current_node`", default=None)
    build_tree(draft, nodes, current, where)
    fill_model(draft, "chatgpt")
    return draft


def chatgpt_message(draft, message, spot):
    """A draft message for one of ChatGPT's messages, or None for one with nothing to keep."""
    author = mapping_of(message.get("author") or {}, f"{spot}: `author`")
    role = author.get("role")
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    content = mapping_of(message.get("content") or {}, f"{spot}: `content`")
    kind = content.get("content_type")
    if kind == "user_editable_context":
        # The custom instructions the conversation was held under (hidden from its page).
        parts = [text_of(content.get(name), f"{spot}: `{name}`") for name in ("user_profile", "user_instructions")]
        adopt_instructions(draft, "\n\n".join(part for part in parts if part))
        return None
    if metadata.get("is_visually_hidden_from_conversation") or kind in CHATGPT_MACHINERY:
        return None
    if role == "system":
        adopt_instructions(draft, chatgpt_text(draft, content, spot))
        return None
    if role == "tool":
        draft.left_out["tool results (browsing, code output, generated files)"] += 1
        return None
    if not keep_role(draft, role):
        return None
    if kind == "code" or message.get("recipient") not in (None, "all"):
        draft.left_out["tool calls"] += 1
        return None
    said = chatgpt_said(draft, content, kind, spot)
    if said is None:
        return None
    text, reasoning = said
    status, reason = chatgpt_ending(message, metadata) if role == "assistant" else (Message.Status.COMPLETED, "")
    model = metadata.get("model_slug") if role == "assistant" else ""
    return DraftMessage(
        role=role,
        text=text,
        reasoning=reasoning,
        status=status,
        model=text_of(model, f"{spot}: `model_slug`"),
        created_at=epoch(message.get("create_time"), f"{spot}: `create_time`"),
        extra={"incomplete_reason": reason} if reason else {},
    )


def chatgpt_said(draft, content, kind, spot):
    """The text and the reasoning of a message's content, or None for content that is left out."""
    if kind == "thoughts":
        thoughts = list_of(content.get("thoughts"), f"{spot}: `thoughts`", default=[])
        reasoning = "\n\n".join(
            join(text_of(thought.get("summary"), spot), text_of(thought.get("content"), spot))
            for thought in thoughts
            if isinstance(thought, dict)
        )
        return "", reasoning
    if kind in ("text", "multimodal_text"):
        return chatgpt_text(draft, content, spot), ""
    draft.left_out[f"{str(kind)[:40]} content"] += 1
    return None


def chatgpt_ending(message, metadata):
    """An answer's status and incomplete reason, from how ChatGPT says it ended."""
    status, reason = Message.Status.COMPLETED, ""
    finish = metadata.get("finish_details")
    if isinstance(finish, dict):
        status, reason = CHATGPT_ENDINGS.get(finish.get("type"), (status, reason))
    if message.get("status") == "in_progress":
        status = Message.Status.INTERRUPTED
    return status, reason


def chatgpt_text(draft, content, spot):
    """The text of `parts`; images and other attachments among them are counted as left out."""
    texts = []
    for part in list_of(content.get("parts"), f"{spot}: `parts`", default=[]):
        if isinstance(part, str):
            texts.append(clean(part))
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(clean(part["text"]))  # e.g. an audio transcription
        elif isinstance(part, dict) and "image" in str(part.get("content_type", "")):
            draft.left_out["images"] += 1
        else:
            draft.left_out["attachments"] += 1
    return "\n\n".join(text for text in texts if text)


# --- Open WebUI's chat export ----------------------------------------------------------------

# Open WebUI keeps a model's reasoning and its tool calls inside the answer's text, as
# <details type="..."> blocks; reasoning becomes the answer's reasoning, the rest is left out.
DETAILS = re.compile(r'<details\s+type="([a-z_]+)"[^>]*>(.*?)</details>\s*', re.DOTALL | re.IGNORECASE)
SUMMARY = re.compile(r"<summary>.*?</summary>\s*", re.DOTALL | re.IGNORECASE)


def read_open_webui(data):
    return [read_open_webui_chat(record, index) for index, record in enumerate(data, 1)]


def read_open_webui_chat(record, index):
    where = f"Conversation {index}"
    record = mapping_of(record, where)
    chat = mapping_of(record.get("chat"), f"{where}: `chat`")
    original_id = text_of(record.get("id") or chat.get("id"), f"{where}: `id`")
    models = [name for name in list_of(chat.get("models"), f"{where}: `models`", default=[]) if isinstance(name, str)]
    params = chat.get("params") if isinstance(chat.get("params"), dict) else {}
    draft = Draft(
        source=Conversation.Source.OPEN_WEBUI,
        key=import_key("open-webui", original_id, record),
        original_id=original_id,
        title=text_of(record.get("title") or chat.get("title"), f"{where}: `title`"),
        model=clean(models[0]) if models else "",
        instructions=text_of(chat.get("system") or params.get("system"), f"{where}: `system`"),
        created_at=epoch(record.get("created_at") or chat.get("timestamp"), f"{where}: `created_at`"),
        updated_at=epoch(record.get("updated_at"), f"{where}: `updated_at`"),
        pinned=record.get("pinned") is True,
        archived=record.get("archived") is True,
    )
    history = chat.get("history")
    if history is not None:
        history = mapping_of(history, f"{where}: `history`")
        messages = mapping_of(history.get("messages"), f"{where}: `history.messages`")
        current = text_of(history.get("currentId"), f"{where}: `currentId`", default=None)
        entries = list(messages.items())
    else:
        # Exports of early versions have a plain list, one message after the other.
        listed = list_of(chat.get("messages"), f"{where}: `messages`")
        entries = [(str(number), message) for number, message in enumerate(listed)]
        current = None
    nodes = []
    previous = None
    for message_id, message in entries:
        spot = f"{where}, message {message_id[:80]!r}"
        message = mapping_of(message, spot)
        if history is not None:
            parent_id = text_of(message.get("parentId"), f"{spot}: `parentId`", default=None)
        else:
            parent_id = previous
        previous = message_id
        nodes.append(SourceNode(message_id, parent_id, open_webui_message(draft, message, spot)))
    build_tree(draft, nodes, current, where)
    fill_model(draft, "open-webui")
    return draft


def open_webui_message(draft, message, spot):
    """A draft message for one of Open WebUI's messages, or None for one with nothing to keep."""
    role = message.get("role")
    text = text_of(open_webui_content(draft, message.get("content")), f"{spot}: `content`")
    if role == "system":
        adopt_instructions(draft, text)
        return None
    if not keep_role(draft, role):
        return None
    files = message.get("files")
    if isinstance(files, list) and files:
        draft.left_out["attached files and images"] += len(files)
    reasoning, status, extra, model = "", Message.Status.COMPLETED, {}, ""
    if role == "assistant":
        text, reasoning = open_webui_reasoning(draft, text)
        status, extra = open_webui_outcome(message)
        model = message.get("model")
    return DraftMessage(
        role=role,
        text=text,
        reasoning=reasoning,
        status=status,
        model=text_of(model if isinstance(model, str) else "", f"{spot}: `model`"),
        created_at=epoch(message.get("timestamp"), f"{spot}: `timestamp`"),
        extra=extra,
    )


def open_webui_content(draft, content):
    """A message's content as text: of the multimodal shape (a list of parts) only the text parts."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            draft.left_out["images"] += 1
    return "\n\n".join(texts)


def open_webui_reasoning(draft, text):
    """An answer's text without its <details> blocks, and the reasoning they held."""
    reasoning = []

    def take(match):
        if match.group(1).lower() == "reasoning":
            reasoning.append(
                "\n".join(
                    line.removeprefix(">").strip() for line in SUMMARY.sub("", match.group(2)).splitlines()
                ).strip()
            )
        else:
            draft.left_out[f"{match.group(1).replace('_', ' ')} blocks"] += 1
        return ""

    text = DETAILS.sub(take, text).strip()
    return text, "\n\n".join(part for part in reasoning if part)


def open_webui_outcome(message):
    """An answer's status and its other columns: the error it failed with, its token figures."""
    status = Message.Status.COMPLETED
    extra = {}
    error = message.get("error")
    if error:
        status = Message.Status.FAILED
        detail = error.get("content") if isinstance(error, dict) else error
        extra["error_message"] = clean(detail) if isinstance(detail, str) else "The answer failed."
    elif message.get("done") is False:
        status = Message.Status.INTERRUPTED
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    if usage:
        # Open WebUI writes the figures of OpenAI-style providers or of Ollama, as they came.
        extra["input_tokens"] = token_count(usage.get("prompt_tokens", usage.get("prompt_eval_count")))
        extra["output_tokens"] = token_count(usage.get("completion_tokens", usage.get("eval_count")))
        extra["total_tokens"] = token_count(usage.get("total_tokens"))
        if extra["total_tokens"] is None and extra["input_tokens"] is not None and extra["output_tokens"] is not None:
            extra["total_tokens"] = extra["input_tokens"] + extra["output_tokens"]
    return status, extra


# --- recognising and storing -----------------------------------------------------------------

FORMATS_SENTENCE = (
    "This file is not an export this site can read. It takes this site's own export (from Export), "
    "ChatGPT's conversations.json (from its data export) and Open WebUI's chat export (JSON)."
)


def recognise(data):
    """The reader for the decoded JSON `data`, by its shape; ImportRefused for anything else."""
    if isinstance(data, dict) and isinstance(data.get("conversations"), list):
        return read_ours, data
    if isinstance(data, dict) and ("mapping" in data or "chat" in data):
        data = [data]  # one conversation on its own
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        if all("mapping" in item for item in data):
            return read_chatgpt, data
        if all(isinstance(item.get("chat"), dict) for item in data):
            return read_open_webui, data
    if isinstance(data, list) and not data:
        raise ImportRefused("The file holds no conversations.", code="empty_file")
    raise ImportRefused(FORMATS_SENTENCE, code="unrecognised_file")


def decode(content):
    try:
        return json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ImportRefused("The file is not text (UTF-8): " + FORMATS_SENTENCE, code="unrecognised_file") from None
    except RecursionError:
        raise ImportRefused("The file is nested too deeply to be read.") from None
    except ValueError as error:
        raise ImportRefused(f"The file is not valid JSON ({error}).") from None


def read_file(content):
    """The drafts of every conversation in the file's bytes; ImportRefused if it cannot be read."""
    reader, data = recognise(decode(content))
    return reader(data)


@dataclass
class ImportResult:
    conversations: list  # the stored Conversation rows
    skipped: list  # {"conversation", "reason"} for what was not kept


def import_file(owner, content):
    """Store the conversations of the file's bytes as `owner`'s, all in one transaction.

    Conversations imported before (the same key) and this site's own conversations of `owner`
    (an export imported back) are skipped and named. Raises ImportRefused, storing nothing.
    """
    drafts = read_file(content)
    try:
        with transaction.atomic():
            return store_all(owner, drafts)
    except IntegrityError:
        # The unique import key: another import of the same conversations committed first.
        raise ImportRefused(
            "Another import of the same conversations ran at the same time; nothing was imported from "
            "this file. Import it again to add what is still missing.",
            code="conflict",
        ) from None


def store_all(owner, drafts):
    now = timezone.now()
    mine = Conversation.objects.owned_by(owner)
    seen = set(mine.filter(import_key__in=[draft.key for draft in drafts]).values_list("import_key", flat=True))
    ours = [draft.original_id for draft in drafts if draft.source == Conversation.Source.CHAT]
    own_ids = {str(pk) for pk in mine.filter(pk__in=[i for i in ours if is_uuid(i)]).values_list("pk", flat=True)}
    stored, skipped = [], []
    for draft in drafts:
        if draft.key in seen:
            skipped.append({"conversation": draft.name, "reason": "Already imported."})
            continue
        seen.add(draft.key)
        if draft.original_id in own_ids:
            skipped.append({"conversation": draft.name, "reason": "Already one of your conversations here."})
            continue
        if not draft.messages:
            skipped.append({"conversation": draft.name, "reason": "It has no messages that can be kept."})
            continue
        stored.append(store(owner, draft, now))
        if draft.left_out:
            parts = ", ".join(f"{count} {what}" for what, count in sorted(draft.left_out.items()))
            skipped.append({"conversation": draft.name, "reason": f"Left out: {parts}."})
    return ImportResult(stored, skipped)


def is_uuid(value):
    try:
        uuid.UUID(value)
    except (TypeError, ValueError):
        return False
    return True


def store(owner, draft, now):
    """One draft as a conversation with its messages (bulk: a few queries per conversation)."""
    start = draft.created_at or min((m.created_at for m in draft.messages if m.created_at), default=now)
    title = draft.title if len(draft.title) <= TITLE_LENGTH else Conversation.title_from(draft.title)
    if len(draft.instructions) > INSTRUCTIONS_LENGTH:
        draft.left_out[f"instructions beyond {INSTRUCTIONS_LENGTH} characters"] += 1
    conversation = Conversation.objects.create(
        owner=owner,
        title=" ".join(title.split())[:TITLE_LENGTH],
        title_source=Conversation.TitleSource.COPIED,
        model=draft.model[:MODEL_LENGTH],
        instructions=draft.instructions[:INSTRUCTIONS_LENGTH],
        created_at=start,
        updated_at=draft.updated_at or start,
        pinned_at=now if draft.pinned and not draft.archived else None,
        archived_at=now if draft.archived else None,
        imported_at=now,
        import_source=draft.source,
        import_key=draft.key[:200],
    )
    rows = {}
    last_child_time = {}
    for message in draft.messages:  # every parent before its children
        parent = rows.get(message.parent)
        # Never before its parent, nor before an earlier version: MessageTree orders by time.
        floor = max(
            filter(None, [parent.created_at + TICK if parent else None, last_child_time.get(message.parent)]),
            default=None,
        )
        created_at = message.created_at or (parent.created_at + TICK if parent else start)
        if floor is not None and created_at < floor:
            created_at = floor
        last_child_time[message.parent] = created_at + TICK
        extra = {name: value for name, value in message.extra.items() if value is not None}
        rows[message] = Message(
            conversation=conversation,
            parent=parent,
            role=message.role,
            text=message.text,
            reasoning=message.reasoning,
            status=message.status,
            model=message.model[:MODEL_LENGTH],
            created_at=created_at,
            **{name: Message.fit(name, value) if name in FITTED else value for name, value in extra.items()},
        )
    Message.objects.bulk_create(rows.values(), batch_size=500)
    conversation.current = rows.get(draft.current)
    conversation.save(update_fields=["current"])
    return conversation
