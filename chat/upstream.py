"""The client for the Open Responses API: the only code in the project that speaks HTTP upstream.

`UpstreamClient.stream_response()` posts `{base}/responses` with `stream: true` and returns a
`ResponseStream`, an iterator of the typed events below. Every expected failure (HTTP errors before
the stream, network errors, a stream that breaks off) is raised as one `UpstreamError` with a code
and a sentence a person can read. The API key goes into the Authorization header and nowhere else.
"""

import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
import sseclient
import urllib3.exceptions
from django.conf import settings

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
READ_SIZE = 64 * 1024


class UpstreamError(Exception):
    """An expected failure talking to the upstream, with a readable message."""

    def __init__(self, code, message, *, status=None, retry_after=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self):
        return self.status in RETRYABLE_STATUSES or self.code in ("connection_error", "connect_timeout")


# --- Typed events ---------------------------------------------------------------------------


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
        input_details = data.get("input_tokens_details") or {}
        output_details = data.get("output_tokens_details") or {}
        return cls(
            input_tokens=_integer(data.get("input_tokens")),
            output_tokens=_integer(data.get("output_tokens")),
            total_tokens=_integer(data.get("total_tokens")),
            cached_tokens=_integer(input_details.get("cached_tokens")),
            reasoning_tokens=_integer(output_details.get("reasoning_tokens")),
        )


@dataclass(frozen=True)
class ResponseStarted:
    """`response.created` / `response.in_progress`: the upstream's id and model."""

    response_id: str
    model: str


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


def _integer(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _index(data, key):
    value = data.get(key)
    return value if isinstance(value, int) else 0


def _string(value):
    return value if isinstance(value, str) else ""


def _output_texts(output):
    """Text, reasoning summary and refusal read from a terminal response's `output` items."""
    texts, reasoning, refusals = [], [], []
    found_message = False
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            found_message = True
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text":
                    texts.append(_string(part.get("text")))
                elif part.get("type") == "refusal":
                    refusals.append(_string(part.get("refusal")))
        elif item.get("type") == "reasoning":
            for part in item.get("summary") or ():
                if isinstance(part, dict):
                    reasoning.append(_string(part.get("text")))
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
        response = data.get("response") if isinstance(data.get("response"), dict) else {}
        return ResponseStarted(_string(response.get("id")), _string(response.get("model")))
    if kind == "error":
        # The live API nests the details under "error"; its reference documents them flat.
        nested = data.get("error") if isinstance(data.get("error"), dict) else {}
        code = nested.get("code") or nested.get("type") or data.get("code") or "stream_error"
        message = nested.get("message") or data.get("message") or "The API reported an error."
        return StreamError(str(code), str(message))
    if kind in TERMINAL_EVENTS:
        response = data.get("response") if isinstance(data.get("response"), dict) else {}
        status = kind.removeprefix("response.")
        text, reasoning, refusal = _output_texts(response.get("output"))
        error = response.get("error") if isinstance(response.get("error"), dict) else {}
        incomplete = response.get("incomplete_details")
        incomplete = incomplete if isinstance(incomplete, dict) else {}
        return ResponseFinished(
            status=status,
            response_id=_string(response.get("id")),
            model=_string(response.get("model")),
            usage=Usage.from_json(response.get("usage")),
            output_text=text,
            reasoning_text=reasoning,
            refusal=refusal,
            error_code=_string(error.get("code")),
            error_message=_string(error.get("message")),
            incomplete_reason=_string(incomplete.get("reason")) or ("unknown" if status == "incomplete" else ""),
        )
    return None


# --- HTTP errors ----------------------------------------------------------------------------

HTTP_SENTENCES = {
    400: "The API rejected the request as invalid",
    401: "The API key was rejected: check OPENRESPONSES_API_KEY",
    403: "The API key is not allowed to use this model or endpoint",
    404: "The model is not available at this API (or OPENRESPONSES_BASE_URL is wrong)",
    408: "The API timed out waiting for the request",
    409: "The API reported a conflict with another request",
    413: "The conversation is too long for the API",
    422: "The API could not process the request",
    429: "The API is rate limiting requests",
    500: "The API had an internal error",
    502: "The API's gateway could not reach the model (bad gateway)",
    503: "The API is unavailable right now",
    504: "The API's gateway timed out",
}


def _error_from_http(response):
    status = response.status_code
    try:
        body = response.content[: 64 * 1024].decode("utf-8", errors="replace")
    except requests.RequestException:
        body = ""
    detail, code = "", ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error") if isinstance(data.get("error"), dict) else data
        detail = _string(error.get("message"))
        code = _string(error.get("code")) or _string(error.get("type"))
    sentence = HTTP_SENTENCES.get(status) or f"The API answered HTTP {status}"
    if status in (400, 404, 409, 413, 422) and detail:
        sentence = f"{sentence}: {detail}"
    elif not detail and body.strip() and data is None:
        logger.warning("Upstream answered HTTP %s with a non-JSON body: %.200r", status, body)
    if not sentence.endswith("."):
        sentence += "."
    return UpstreamError(code or f"http_{status}", sentence, status=status, retry_after=_retry_after(response))


def _retry_after(response):
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# --- The client -----------------------------------------------------------------------------


@dataclass
class UpstreamClient:
    base_url: str
    api_key: str = ""
    timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_retry_wait: float = 20.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @classmethod
    def from_settings(cls, **overrides):
        options = dict(
            base_url=settings.OPENRESPONSES_BASE_URL,
            api_key=settings.OPENRESPONSES_API_KEY,
            timeout=settings.OPENRESPONSES_TIMEOUT,
            connect_timeout=settings.OPENRESPONSES_CONNECT_TIMEOUT,
        )
        return cls(**(options | overrides))

    def __repr__(self):
        # Never show the key, even in a traceback's locals.
        return f"UpstreamClient(base_url={self.base_url!r})"

    def configuration_problem(self):
        """A sentence saying what to set, when requests could not possibly succeed."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        if not self.api_key and host not in LOOPBACK_HOSTS:
            return (
                f"No API key is configured for {self.base_url}: set OPENRESPONSES_API_KEY "
                "(or point OPENRESPONSES_BASE_URL at a local server)."
            )
        return None

    def stream_response(self, model, input_items, instructions="", stop_event=None, on_retry=None):
        """POST the request and return the open stream once the upstream answered 2xx.

        Retries 429, 502, 503, 504 and connection failures a bounded number of times with
        backoff, honouring Retry-After; nothing is retried once the stream has started.
        `stop_event` ends the waits between tries early.
        """
        body = {"model": model, "input": input_items, "stream": True}
        if instructions:
            body["instructions"] = instructions
        attempt = 0
        while True:
            try:
                return self._open(body)
            except UpstreamError as error:
                if not error.retryable or attempt >= self.retries:
                    if attempt and error.retryable:
                        error.message = f"{error.message.rstrip('.')} (tried {attempt + 1} times)."
                        error.args = (error.message,)
                    raise
                attempt += 1
                wait = error.retry_after if error.retry_after is not None else self.backoff * 2 ** (attempt - 1)
                wait = min(wait, self.max_retry_wait)
                logger.info("Upstream %s; retry %s in %.1fs", error.code, attempt, wait)
                if on_retry:
                    on_retry(attempt, error)
                if stop_event is not None:
                    if stop_event.wait(wait):
                        raise
                else:
                    time.sleep(wait)

    def _open(self, body):
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self.session.post(
                f"{self.base_url}/responses",
                json=body,
                headers=headers,
                stream=True,
                timeout=(self.connect_timeout, self.timeout),
            )
        except requests.ConnectTimeout:
            raise UpstreamError("connect_timeout", f"Timed out connecting to the API at {self._host}.") from None
        except requests.ReadTimeout:
            raise UpstreamError(
                "read_timeout", f"The API did not start answering within {self.timeout:g} seconds."
            ) from None
        except requests.ConnectionError as error:
            raise UpstreamError("connection_error", self._connection_sentence(error)) from None
        except requests.RequestException as error:
            raise UpstreamError("request_error", f"The request to the API failed ({type(error).__name__}).") from None
        if response.status_code >= 400:
            try:
                raise _error_from_http(response)
            finally:
                response.close()
        return ResponseStream(response, self.timeout)

    @property
    def _host(self):
        return urlsplit(self.base_url).netloc

    def _connection_sentence(self, error):
        text = str(error)
        if "NameResolution" in text or "Name or service not known" in text or "nodename nor servname" in text:
            return f"The API's host name could not be resolved ({self._host})."
        if "Connection refused" in text or "ConnectionRefused" in text:
            return f"The API refused the connection ({self._host})."
        return f"Could not connect to the API at {self._host}."


class ResponseStream:
    """An open streamed response: iterate for typed events; `abort()` works from any thread."""

    def __init__(self, response, read_timeout):
        self.response = response
        self.read_timeout = read_timeout
        self.aborted = False
        self._lock = threading.Lock()

    def _chunks(self):
        raw = self.response.raw
        while True:
            chunk = raw.read1(READ_SIZE)
            if not chunk:
                return
            yield chunk

    def __iter__(self):
        try:
            yield from self._events()
        except UnicodeDecodeError:
            raise UpstreamError("invalid_utf8", "The API sent text that is not valid UTF-8.") from None
        except (OSError, requests.RequestException, http.client.HTTPException, urllib3.exceptions.HTTPError) as error:
            if self.aborted:
                return
            if _is_timeout(error):
                raise UpstreamError(
                    "read_timeout", f"The API sent nothing for {self.read_timeout:g} seconds."
                ) from None
            raise UpstreamError("connection_lost", "The connection to the API broke mid-answer.") from None
        finally:
            self.response.close()

    def _events(self):
        for sse in sseclient.SSEClient(self._chunks()).events():
            if sse.data.strip() == "[DONE]":
                return
            try:
                data = json.loads(sse.data)
            except ValueError:
                logger.warning("Skipped an upstream event that is not JSON: %.200r", sse.data)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                logger.warning("Skipped an upstream event without a type: %.200r", sse.data)
                continue
            event = parse_event(data)
            if event is None:
                continue
            yield event
            if isinstance(event, ResponseFinished):
                return
        if not self.aborted:
            raise UpstreamError("stream_truncated", "The API ended the stream before finishing the answer.")

    def abort(self):
        """Close the stream from any thread, waking a read blocked on a silent upstream."""
        with self._lock:
            if self.aborted:
                return
            self.aborted = True
        connection = getattr(self.response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _is_timeout(error):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False
