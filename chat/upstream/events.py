"""The Open Responses events the site uses, read leniently from decoded JSON, and the API-key scrubber.

No I/O here: `parse_event()` turns one decoded `data:` object into a typed event (or None for
events the site does not use), reading every field leniently, so that a field of the wrong type
counts as absent and never crashes the parser. `Scrubber` blanks the API key out of everything an
upstream sends, including a key split across the deltas of a stream. The client (`client.py`)
applies both to each event it reads.
"""

import json
from dataclasses import dataclass, replace

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
# The largest token count a PositiveIntegerField holds on every database we support.
MAX_COUNT = 2**31 - 1

# --- Typed events ---------------------------------------------------------------------------
# One class per event, even where two have the same fields (the text, refusal and reasoning
# deltas, their .done events): the class is the stream kind the worker and the scrubber dispatch
# on (`type(event)`, DELTA_STREAMS), and each field is named as the API names it (`text`,
# `refusal`). A shared generic class would make every reader ask which stream a delta is of.


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict):
            return None
        input_details = _dict(data.get("input_tokens_details"))
        output_details = _dict(data.get("output_tokens_details"))
        return cls(
            input_tokens=_count(data.get("input_tokens")),
            output_tokens=_count(data.get("output_tokens")),
            total_tokens=_count(data.get("total_tokens")),
            cached_tokens=_count(input_details.get("cached_tokens")),
            reasoning_tokens=_count(output_details.get("reasoning_tokens")),
        )


@dataclass(frozen=True)
class ResponseStarted:
    """`response.created` / `response.queued` / `response.in_progress`: the upstream's id, model and
    whether it is still waiting to start (`queued`)."""

    response_id: str
    model: str
    status: str = "in_progress"


@dataclass(frozen=True)
class TextDelta:
    delta: str
    output_index: int = 0
    content_index: int = 0


@dataclass(frozen=True)
class TextDone:
    """`response.output_text.done`: the full text of one content part."""

    text: str
    output_index: int = 0
    content_index: int = 0


@dataclass(frozen=True)
class ReasoningDelta:
    delta: str
    output_index: int = 0
    part_index: int = 0


@dataclass(frozen=True)
class ReasoningDone:
    text: str
    output_index: int = 0
    part_index: int = 0


@dataclass(frozen=True)
class RefusalDelta:
    delta: str
    output_index: int = 0
    content_index: int = 0


@dataclass(frozen=True)
class RefusalDone:
    refusal: str
    output_index: int = 0
    content_index: int = 0


@dataclass(frozen=True)
class StreamError:
    """An `error` event inside the stream (nested or flat form)."""

    code: str
    message: str


@dataclass(frozen=True)
class ResponseFinished:
    """The terminal event: `response.completed`, `response.failed` or `response.incomplete`."""

    status: str  # completed, failed or incomplete
    response_id: str = ""
    model: str = ""
    usage: Usage | None = None
    output_text: str | None = None
    reasoning_text: str | None = None
    refusal: str | None = None
    error_code: str = ""
    error_message: str = ""
    incomplete_reason: str = ""


def _count(value):
    """A token count, or None for anything a database column could not hold."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


# Upstream JSON is read leniently: a field of the wrong type counts as absent, never as a crash.


def _index(data, key):
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _string(value):
    # PostgreSQL text cannot hold NUL characters; they carry nothing a person could read anyway.
    return value.replace("\x00", "") if isinstance(value, str) else ""


def _code(value):
    """An error code: a string, though some servers send a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _string(value)


def _dict(value):
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _output_texts(output):
    """Text, reasoning summary and refusal read from a terminal response's `output` items."""
    texts, reasoning, refusals = [], [], []
    found_message = False
    for item in _list(output):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            found_message = True
            for part in _list(item.get("content")):
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text":
                    texts.append(_string(part.get("text")))
                elif part.get("type") == "refusal":
                    refusals.append(_string(part.get("refusal")))
        elif item.get("type") == "reasoning":
            # The summary when one was asked for, else the raw reasoning text some servers stream.
            parts = [part for part in _list(item.get("summary")) if isinstance(part, dict)]
            if not parts:
                parts = [part for part in _list(item.get("content")) if isinstance(part, dict)]
            reasoning += [_string(part.get("text")) for part in parts]
    return (
        "".join(texts) if found_message else None,
        "\n\n".join(reasoning) if reasoning else None,
        "".join(refusals) if refusals else None,
    )


def parse_event(data):
    """Turn one decoded `data:` object into a typed event, or None for events we do not use."""
    kind = data.get("type")
    if kind == "response.output_text.delta":
        return TextDelta(_string(data.get("delta")), _index(data, "output_index"), _index(data, "content_index"))
    if kind == "response.output_text.done":
        return TextDone(_string(data.get("text")), _index(data, "output_index"), _index(data, "content_index"))
    if kind in ("response.reasoning_summary_text.delta", "response.reasoning.delta", "response.reasoning_text.delta"):
        part = _index(data, "summary_index") if "summary_index" in data else _index(data, "content_index")
        return ReasoningDelta(_string(data.get("delta")), _index(data, "output_index"), part)
    if kind in ("response.reasoning_summary_text.done", "response.reasoning.done", "response.reasoning_text.done"):
        part = _index(data, "summary_index") if "summary_index" in data else _index(data, "content_index")
        return ReasoningDone(_string(data.get("text")), _index(data, "output_index"), part)
    if kind == "response.refusal.delta":
        return RefusalDelta(_string(data.get("delta")), _index(data, "output_index"), _index(data, "content_index"))
    if kind == "response.refusal.done":
        return RefusalDone(_string(data.get("refusal")), _index(data, "output_index"), _index(data, "content_index"))
    if kind in ("response.created", "response.in_progress", "response.queued"):
        response = _dict(data.get("response"))
        status = "queued" if kind == "response.queued" else _string(response.get("status")) or "in_progress"
        return ResponseStarted(_string(response.get("id")), _string(response.get("model")), status)
    if kind == "error":
        # The live API nests the details under "error"; its reference documents them flat.
        nested = _dict(data.get("error"))
        code = _code(nested.get("code")) or _code(nested.get("type")) or _code(data.get("code")) or "stream_error"
        message = _string(nested.get("message")) or _string(data.get("message")) or "The API reported an error."
        return StreamError(code, message)
    if kind in TERMINAL_EVENTS:
        response = _dict(data.get("response"))
        status = kind.removeprefix("response.")
        text, reasoning, refusal = _output_texts(response.get("output"))
        error = _dict(response.get("error"))
        incomplete = _dict(response.get("incomplete_details"))
        return ResponseFinished(
            status=status,
            response_id=_string(response.get("id")),
            model=_string(response.get("model")),
            usage=Usage.from_json(response.get("usage")),
            output_text=text,
            reasoning_text=reasoning,
            refusal=refusal,
            error_code=_code(error.get("code")),
            error_message=_string(error.get("message")),
            incomplete_reason=_string(incomplete.get("reason")) or ("unknown" if status == "incomplete" else ""),
        )
    return None


# --- Scrubbing the API key -------------------------------------------------------------------

REDACTED = "[API key]"
# Streams whose deltas are joined with nothing between them downstream (the worker, the browser):
# a key split across two deltas of one of them would be whole again once joined.
DELTA_STREAMS = {TextDelta: "text", RefusalDelta: "refusal", ReasoningDelta: "reasoning"}
DONE_EVENTS = {TextDone: "text", RefusalDone: "refusal", ReasoningDone: "reasoning"}


# A tail of streamed text that opens the key is held back once it is this long. Shorter ones go
# out at once: "s" and "sk" end many words, and holding them would delay every such delta until
# the next one, against "coalescing adds no delay to a slow stream". Should the key then follow,
# its rest is blanked out, so a reader sees at most its first two characters ("sk" for most APIs).
HOLD_FROM = 3


@dataclass
class _Stream:
    """What the scrubber knows of one delta stream."""

    held: str = ""  # text held back: it may be the start of the key
    event: object = None  # the delta the held text came from
    passed: str = ""  # the end of the text let through, as long as the key less one character


class Scrubber:
    """Blanks the API key out of everything an upstream sends: the one place that does.

    `value()` scrubs every string of a decoded JSON event (keys included) before it is parsed, so
    no field (id, model, error code, usage detail, text) can carry the key on. `events()` handles
    the one case a single string cannot: a key split across the deltas of a stream, which the
    worker and the browser join back together. It holds back the longest tail of a stream's text
    that could be the start of the key (from HOLD_FROM characters on) until the next delta of that
    stream shows whether it is, blanks out the rest of a key whose start went through, and lets
    the held text go at the stream's end (its `.done` event, the terminal event, or the end of the
    body). A held-back tail that is a large part of the key (half of it or more) is blanked out
    there too: the stream broke off in the middle of the key.
    """

    def __init__(self, secret):
        self.secret = secret or ""
        self.streams = {}  # stream name -> _Stream
        # Whether only a \\uXXXX escape of JSON could turn text without the key into text with it:
        # the other escapes stand for characters the key does not have.
        self._escapes_blank = not any(character in self.secret for character in '"\\/\b\f\n\r\t')

    def decoded(self, data):
        """json.loads(data) with the key blanked out of every string in it (ValueError if not
        JSON). The walk of `value()` only when the JSON text could hold the key: with no escape
        that could make one of its characters, a decoded string holds the key only if the text
        did (an upstream event per delta, most of which cannot)."""
        decoded = json.loads(data)
        if not self.secret:
            return decoded
        if self.secret in data or ("\\" in data and (not self._escapes_blank or "\\u" in data)):
            return self.value(decoded)
        return decoded

    def text(self, text):
        if self.secret and text and self.secret in text:
            return text.replace(self.secret, REDACTED)
        return text

    def value(self, value):
        """A decoded JSON value with the key blanked out of every string in it."""
        if not self.secret:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(key): self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def events(self, event):
        """The events to pass on for one parsed event: deltas with any held-back text, flushes."""
        if not self.secret:
            return [event]
        stream = DELTA_STREAMS.get(type(event))
        if stream is not None:
            return self._delta(stream, event)
        stream = DONE_EVENTS.get(type(event))
        if stream is not None:
            return self.flush(stream) + [event]
        if isinstance(event, ResponseFinished):
            return self.flush() + [event]
        return [event]

    def _delta(self, name, event):
        flushed = []
        state = self.streams.get(name)
        if state is not None and name == "reasoning" and _part(state.event) != _part(event):
            # A new reasoning part is set apart by a blank line downstream: no key spans the two.
            flushed = self.flush(name)
            state = None
        if state is None:
            state = self.streams[name] = _Stream()
        text = state.held + event.delta
        # A key whose first characters went through already: blank out the rest of it.
        start = (state.passed + text).find(self.secret)
        if 0 <= start < len(state.passed):
            text = REDACTED + text[start + len(self.secret) - len(state.passed) :]
        text = self.text(text)
        opening = self._prefix_length(state.passed + text)
        keep = min(opening, len(text)) if opening >= HOLD_FROM else 0
        out = text[: len(text) - keep]
        state.held, state.event = text[len(text) - keep :], event
        state.passed = (state.passed + out)[-(len(self.secret) - 1) :] if len(self.secret) > 1 else ""
        if not out:
            return flushed
        # The usual delta passes unchanged: the event itself, not a copy of it.
        return [*flushed, event if out == event.delta else replace(event, delta=out)]

    def _prefix_length(self, text):
        """The length of the longest tail of `text` that is a proper prefix of the key."""
        first = self.secret[0]
        index = text.find(first, max(0, len(text) - len(self.secret) + 1))
        while index != -1:
            if self.secret.startswith(text[index:]):
                return len(text) - index
            index = text.find(first, index + 1)
        return 0

    def _release(self, held):
        return REDACTED if len(held) >= max(HOLD_FROM + 1, len(self.secret) // 2) else held

    def flush(self, name=None):
        """The held-back text of one stream (or all) as deltas of their own; those streams end."""
        names = [name] if name is not None else list(self.streams)
        released = []
        for stream in names:
            state = self.streams.pop(stream, None)
            if state is not None and state.held:
                released.append(replace(state.event, delta=self._release(state.held)))
        return released


def _part(event):
    return (event.output_index, event.part_index) if event is not None else None
