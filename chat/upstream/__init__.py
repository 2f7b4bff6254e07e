"""The Open Responses upstream, in three parts that import only downwards.

- `events`: the typed events and their lenient parsing from decoded JSON, and the API-key
  `Scrubber`; no I/O.
- `sse`: the server-sent events framing of a byte stream; no I/O.
- `client`: `UpstreamClient`, the only code in the project that speaks HTTP upstream, with its
  errors (`UpstreamError`), retries and the abortable `ResponseStream`.

The names the rest of the site uses are importable from here.
"""

from chat.upstream.client import HTTP_SENTENCES, ResponseStream, UpstreamClient, UpstreamError
from chat.upstream.events import (
    HOLD_FROM,
    MAX_COUNT,
    REDACTED,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    RefusalDone,
    ResponseFinished,
    ResponseStarted,
    Scrubber,
    StreamError,
    TextDelta,
    TextDone,
    Usage,
    parse_event,
)
from chat.upstream.sse import sse_data

__all__ = [
    "HOLD_FROM",
    "HTTP_SENTENCES",
    "MAX_COUNT",
    "REDACTED",
    "ReasoningDelta",
    "ReasoningDone",
    "RefusalDelta",
    "RefusalDone",
    "ResponseFinished",
    "ResponseStarted",
    "ResponseStream",
    "Scrubber",
    "StreamError",
    "TextDelta",
    "TextDone",
    "UpstreamClient",
    "UpstreamError",
    "Usage",
    "parse_event",
    "sse_data",
]
