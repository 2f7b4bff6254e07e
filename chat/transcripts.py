"""Transcript exports (JSON and Markdown), shared by the admin action and `export_transcripts`."""

import json

from django.db.models import Prefetch
from django.template.defaultfilters import filesizeformat

from chat import protocol
from chat.models import Message, MessageAttachment

FORMATS = ("json", "markdown")
MESSAGE_FIELDS = (
    "id",
    ("parent", "parent_id"),
    "role",
    "status",
    "model",
    *protocol.STREAM_NAMES,
    "response_id",
    "error_code",
    "error_message",
    "incomplete_reason",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "created_at",
    "started_at",
    "first_token_at",
    "finished_at",
)
CONVERSATION_FIELDS = (*protocol.CONVERSATION_FIELDS, ("current", "current_id"))


def with_messages(conversations):
    links = MessageAttachment.objects.select_related("attachment")
    return conversations.select_related("owner").prefetch_related(
        Prefetch("messages", queryset=Message.objects.order_by("created_at")),
        Prefetch("messages__attachment_links", queryset=links),
    )


def attachments_of(message):
    """What was attached, as the upload answered it: names, types and sizes, not the files."""
    return [link.attachment.as_frame() for link in message.attachment_links.all()]


def on_current_path(conversation):
    """Ids of the messages the owner's page shows; the rest are earlier versions."""
    return {message.id for message in conversation.path()}


def conversation_record(conversation):
    shown = on_current_path(conversation)
    return {
        **protocol.fields_of(conversation, CONVERSATION_FIELDS),
        "owner": conversation.owner.get_username(),
        "messages": [
            {
                **protocol.fields_of(message, MESSAGE_FIELDS),
                "on_current_path": message.id in shown,
                "attachments": attachments_of(message),
            }
            for message in conversation.messages.all()
        ],
    }


def as_json(conversations):
    records = [conversation_record(conversation) for conversation in with_messages(conversations)]
    return json.dumps({"conversations": records}, indent=2, ensure_ascii=False)


def _usage_line(message):
    if message.total_tokens is None:
        return ""
    return f"{message.input_tokens or 0} tokens in, {message.output_tokens or 0} out" + (
        f" ({message.reasoning_tokens} reasoning)" if message.reasoning_tokens else ""
    )


def as_markdown(conversations):
    parts = []
    for conversation in with_messages(conversations):
        parts.append(f"# {conversation.title or 'Untitled conversation'}\n")
        parts.append(
            f"- Owner: {conversation.owner.get_username()}\n- Model: {conversation.model}\n"
            f"- Started: {conversation.created_at:%Y-%m-%d %H:%M %Z}\n- Id: {conversation.id}\n"
        )
        if conversation.instructions:
            parts.append(f"**Instructions:**\n\n> {conversation.instructions.replace(chr(10), chr(10) + '> ')}\n")
        shown = on_current_path(conversation)
        for message in conversation.messages.all():
            heading = "User" if message.role == Message.Role.USER else "Assistant"
            if message.id not in shown:
                heading += " (earlier version)"
            facts = [f"{message.created_at:%Y-%m-%d %H:%M:%S}"]
            if message.role == Message.Role.ASSISTANT:
                facts += [message.status, message.model, _usage_line(message)]
            parts.append(f"## {heading}\n\n*{' · '.join(fact for fact in facts if fact)}*\n")
            if message.reasoning:
                parts.append("<details><summary>Thinking</summary>\n\n" + message.reasoning + "\n\n</details>\n")
            if message.text:
                parts.append(message.text + "\n")
            attached = attachments_of(message)
            if attached:
                lines = [f"- {item['name']} ({item['type']}, {filesizeformat(item['size'])})" for item in attached]
                parts.append("**Attachments:**\n\n" + "\n".join(lines) + "\n")
            if message.refusal:
                parts.append(f"**Refused:** {message.refusal}\n")
            if message.error_message:
                parts.append(f"**Error ({message.error_code}):** {message.error_message}\n")
            if message.incomplete_reason:
                parts.append(f"**Incomplete:** {message.incomplete_reason}\n")
        parts.append("\n---\n")
    return "\n".join(parts)


def export(conversations, format):
    """The export as text and its file extension."""
    if format == "json":
        return as_json(conversations), "json"
    if format == "markdown":
        return as_markdown(conversations), "md"
    raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
