"""The client for the Open Responses API: the only code in the project that speaks HTTP upstream.

`UpstreamClient.stream_response()` posts `{base}/responses` with `stream: true` and returns a
`ResponseStream`, an iterator of the typed events of `events.py`, framed by `sse.py`. Every
expected failure (HTTP errors before the stream, network errors, a stream that breaks off) is
raised as one `UpstreamError` with a code and a sentence a person can read. The API key goes into
the Authorization header and nowhere else: every string the upstream sends is scrubbed of it in
one place (`Scrubber`, applied to each decoded event and to HTTP error bodies) before any of it is
stored, sent or logged.
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
import urllib3.exceptions

from chat.upstream.events import ResponseFinished, Scrubber, _code, _dict, _string, parse_event
from chat.upstream.sse import sse_data

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
READ_SIZE = 64 * 1024


class UpstreamError(Exception):
    """An expected failure talking to the upstream, with a readable message."""

    def __init__(self, code, message, *, status=None, retry_after=None, retryable=False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable

    def amend(self, note):
        """Add a parenthesised note to the sentence: "… (tried 3 times)."."""
        self.message = f"{self.message.removesuffix('.')} ({note})."
        self.args = (self.message,)


# --- HTTP errors ----------------------------------------------------------------------------

JSON_TYPES = frozenset({"application/json", "application/problem+json"})
# What urllib3 decodes as the stream is read ("br" only with the brotli package, not installed).
DECODABLE_ENCODINGS = frozenset({"identity", "", "gzip", "x-gzip", "deflate"})

HTTP_SENTENCES = {
    400: "The API rejected the request as invalid",
    401: "The API key was rejected: check OPENRESPONSES_API_KEY",
    403: "The API key is not allowed to use this model or endpoint",
    404: "The API has no such model or endpoint: check the model name and OPENRESPONSES_BASE_URL",
    408: "The API timed out waiting for the request",
    409: "The API reported a conflict with another request",
    413: "The request is too large for the API: the conversation may be too long",
    422: "The API could not process the request",
    429: "The API is rate limiting requests: try again in a moment",
    500: "The API had an internal error",
    502: "The API's gateway could not reach the model (bad gateway)",
    503: "The API is unavailable right now",
    504: "The API's gateway timed out waiting for the model",
}
# The API's own detail is shown for these: it says what in the request to change. Other statuses
# concern the operator (keys, quotas, outages), and their details go to the log only.
STATUSES_WITH_DETAIL = frozenset({400, 404, 409, 413, 422})
DETAIL_LENGTH = 300
# OpenAI answers 429 both for "slow down" and for "out of credit"; only the first passes by waiting.
QUOTA_CODES = frozenset({"insufficient_quota"})


def _error_from_http(response, scrubber):
    status = response.status_code
    try:
        body = scrubber.text(response.content[: 64 * 1024].decode("utf-8", errors="replace"))
    except requests.RequestException:
        body = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = (_dict(data.get("error")) or data) if isinstance(data, dict) else {}
    detail = " ".join(_string(error.get("message")).split())
    code, kind = _code(error.get("code")), _string(error.get("type"))
    logger.warning("The API answered HTTP %s (%s): %.300s", status, code or kind or "no code", detail or body)
    if QUOTA_CODES & {code, kind}:
        return UpstreamError(code or kind, "The API account has run out of credit or quota.", status=status)
    # The body's code says what the status would have when the status says nothing we know (a
    # 200 with an error body, a 520 from a CDN): "500", "internal_server_error", "overloaded_error".
    meant = _status_meant(code, kind)
    effective = meant if meant and status not in HTTP_SENTENCES else status
    if effective < 400:
        sentence = "The API answered with an error instead of the answer"
    else:
        sentence = HTTP_SENTENCES.get(effective) or f"The API answered with HTTP status {status}"
    if (effective in STATUSES_WITH_DETAIL or effective < 400) and detail:
        if len(detail) > DETAIL_LENGTH:
            detail = detail[:DETAIL_LENGTH].rstrip() + "…"
        sentence = f"{sentence}. It said: {detail}"
    if not sentence.endswith("."):
        sentence += "."
    return UpstreamError(
        code or kind or f"http_{status}",
        sentence,
        status=status,
        retry_after=_retry_after(response),
        retryable=effective in RETRYABLE_STATUSES,
    )


# Error codes and types servers put in bodies, mapped to the HTTP status they stand for: numeric
# codes ("500"), OpenAI's and Anthropic's types, and the names proxies such as LiteLLM pass on.
CODE_STATUSES = {
    "invalid_request_error": 400,
    "bad_request": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "permission_denied": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    "context_length_exceeded": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "internal_server_error": 500,
    "internal_error": 500,
    "api_error": 500,
    "bad_gateway": 502,
    "service_unavailable": 503,
    "overloaded_error": 503,
    "overloaded": 503,
    "gateway_timeout": 504,
    "timeout": 504,
}


def _status_meant(code, kind):
    """The HTTP status an error body's code or type stands for, or None."""
    for value in (code, kind):
        value = value.strip().lower()
        if value.isdigit() and int(value) in HTTP_SENTENCES:
            return int(value)
        if value in CODE_STATUSES:
            return CODE_STATUSES[value]
    return None


def _is_json(response):
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() in JSON_TYPES


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


def _causes(error):
    """The error and every exception it wraps (requests wraps urllib3, which wraps socket errors)."""
    pending, seen = [error], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        pending += [error.__cause__, error.__context__, getattr(error, "reason", None)]
        pending += [arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]


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
    # Sent with every request when set (the local model's; remote models keep their defaults).
    temperature: float | None = None
    # Sent as `truncation: "auto"` when the API takes it: what the fitted input still holds beyond
    # the context is then dropped by the API rather than failing the answer.
    truncation: bool = False

    def __repr__(self):
        # Never show the key, even in a traceback's locals.
        return f"UpstreamClient(base_url={self.base_url!r})"

    def stream_response(self, model, input_items, instructions="", stop_event=None, max_output_tokens=None):
        """POST the request and return the open stream once the upstream answered 2xx.

        `max_output_tokens`, when given, bounds what the model writes (reasoning included); the
        upstream then ends the answer as incomplete with that reason.

        Retries 429, 502, 503, 504 and refused connections a bounded number of times with
        backoff, honouring Retry-After; nothing is retried once the stream has started.
        `stop_event` ends the waits between tries early.
        """
        body = {"model": model, "input": input_items, "stream": True}
        if instructions:
            body["instructions"] = instructions
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.truncation:
            body["truncation"] = "auto"
        if max_output_tokens is not None:
            body["max_output_tokens"] = max_output_tokens
        tries = 0
        while True:
            tries += 1
            try:
                return self._open(body)
            except UpstreamError as error:
                wait = self._retry_wait(error, tries)
                if wait is None:
                    if tries > 1:
                        error.amend(f"tried {tries} times")
                    raise
                logger.info("Upstream %s; try %s in %.1fs", error.code, tries + 1, wait)
                if stop_event is not None:
                    if stop_event.wait(wait):
                        raise
                else:
                    time.sleep(wait)

    def _retry_wait(self, error, tries):
        """Seconds to wait before trying again, or None to give up."""
        if not error.retryable or tries > self.retries:
            return None
        if error.retry_after is None:
            return self.backoff * 2 ** (tries - 1)
        if error.retry_after > self.max_retry_wait:
            # Holding a worker thread that long helps nobody: fail now and say what the API asked.
            error.amend(f"it asked to wait {error.retry_after:g} seconds")
            return None
        return error.retry_after

    def _open(self, body):
        if self._hostname == "invalid" or self._hostname.endswith(".invalid"):
            # RFC 6761 §6.4: resolvers should fail such names at once; some only do after a DNS
            # round trip, or a timeout when offline.
            raise UpstreamError("unknown_host", f"The API's host name {self._hostname} could not be found.")
        # Identity asked for: a compressing proxy may hold text back to fill its buffers. Whatever
        # the server chooses anyway is decoded (ResponseStream), as nginx's `gzip on` does.
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}
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
            # Not retried: one timeout already kept the person waiting for connect_timeout seconds.
            raise UpstreamError("connect_timeout", f"Timed out connecting to the API at {self._host}.") from None
        except requests.ReadTimeout:
            # Not retried either: the upstream may be generating the answer already.
            raise UpstreamError(
                "read_timeout", f"The API did not start answering within {self.timeout:g} seconds."
            ) from None
        except requests.exceptions.SSLError:
            # Not retried: a certificate or protocol mismatch does not pass by waiting.
            raise UpstreamError(
                "tls_error", f"A secure (TLS) connection to the API at {self._host} could not be set up."
            ) from None
        except requests.ConnectionError as error:
            raise self._connection_error(error) from None
        except requests.RequestException as error:
            raise UpstreamError("request_error", f"The request to the API failed ({type(error).__name__}).") from None
        if response.status_code >= 400 or _is_json(response):
            # A JSON body where a stream was asked for is an error too, whatever the status says:
            # some proxies answer 200 with `{"error": …}`.
            try:
                raise _error_from_http(response, Scrubber(self.api_key))
            finally:
                response.close()
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in DECODABLE_ENCODINGS:
            response.close()
            # Not retried: the server will choose the same encoding again.
            raise UpstreamError(
                "unsupported_encoding", f"The API compressed its answer with {encoding!r}, which this site cannot read."
            )
        return ResponseStream(response, self.timeout, Scrubber(self.api_key))

    @property
    def _hostname(self):
        return (urlsplit(self.base_url).hostname or "").lower()

    @property
    def _host(self):
        """Host and port for messages; never the user:password part of the URL."""
        parts = urlsplit(self.base_url)
        return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or self.base_url)

    def _connection_error(self, error):
        causes = list(_causes(error))
        if any(isinstance(cause, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for cause in causes):
            # Not retried: a wrong host name stays wrong.
            return UpstreamError("unknown_host", f"The API's host name {self._hostname} could not be found.")
        if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
            return UpstreamError(
                "connection_refused", f"The API at {self._host} refused the connection.", retryable=True
            )
        return UpstreamError("connection_error", f"Could not connect to the API at {self._host}.", retryable=True)


# --- The body -------------------------------------------------------------------------------

# As http.client: a chunk's size line longer than this is no HTTP.
MAX_SIZE_LINE = 65536


class ChunkedBody:
    """The chunked transfer coding (RFC 9112 §7.1) undone on the bytes of each read, wherever the
    reads break: `feed(data)` returns the body bytes that `data` carries, `done` says the last
    chunk came. Chunk extensions and trailers are ignored, as http.client ignores them.

    This is what urllib3's `read1` does through http.client, a size line read, a chunk read and
    its CRLF read per event, each through two layers of Python (16 % of a loaded server's samples,
    docs/benchmarks.md); here one read of the socket takes however many events have arrived.
    """

    def __init__(self):
        self.pending = b""  # the start of a size line that the next read ends
        self.left = 0  # data bytes of the current chunk still to come
        self.skip = 0  # bytes of the CRLF after a chunk's data still to come
        self.done = False

    def feed(self, data):
        buffer, self.pending = (self.pending + data if self.pending else data), b""
        body, position, size = [], 0, len(buffer)
        while position < size and not self.done:
            if self.left:
                end = min(size, position + self.left)
                body.append(buffer[position:end])
                self.left -= end - position
                self.skip = 0 if self.left else 2
                position = end
            elif self.skip:
                step = min(self.skip, size - position)
                self.skip -= step
                position += step
            else:
                line_end = buffer.find(b"\n", position)
                if line_end == -1:
                    if size - position > MAX_SIZE_LINE:
                        raise http.client.LineTooLong("chunk size")
                    self.pending = buffer[position:]
                    break
                self.left = _chunk_size(buffer[position:line_end])
                self.done = not self.left
                position = line_end + 1
        return body[0] if len(body) == 1 else b"".join(body)


def _chunk_size(line):
    try:
        size = int(line.split(b";", 1)[0], 16)
    except ValueError:
        size = -1
    if size < 0:
        raise http.client.IncompleteRead(b"")  # as http.client: the framing is lost
    return size


def _socket_file(raw):
    """The socket's buffered file under urllib3's `raw` response when its body is chunked and not
    compressed, to be read straight off (ChunkedBody); None where urllib3 reads it (compressed,
    delimited by its length or the connection's end, or a body read in-process)."""
    response = getattr(raw, "_fp", None)
    if not isinstance(response, http.client.HTTPResponse) or not response.chunked or response.fp is None:
        return None
    if response.chunk_left is not None or raw.headers.get("Content-Encoding", "").strip().lower() not in (
        "",
        "identity",
    ):
        return None
    return response.fp


def _dechunked(file):
    """The body bytes of each read of `file` that carries some; a connection that ends before the
    last chunk raises IncompleteRead, as http.client does. The caller closes the connection (it
    was read past http.client's own framing: ResponseStream.close)."""
    body = ChunkedBody()
    while not body.done:
        data = file.read1(READ_SIZE)
        if not data:
            raise http.client.IncompleteRead(b"")
        if data := body.feed(data):
            yield data


# --- The stream -----------------------------------------------------------------------------


class ResponseStream:
    """An open streamed response: iterate for typed events; `abort()` works from any thread."""

    def __init__(self, response, read_timeout, scrubber=None):
        self.response = response
        self.read_timeout = read_timeout
        self.scrubber = scrubber or Scrubber("")
        self.aborted = False
        self._lock = threading.Lock()

    def _chunks(self):
        raw = self.response.raw
        file = _socket_file(raw)
        if file is not None:
            reads = _dechunked(file)
        else:
            # Decoded as it arrives: a compressed stream flushed per event yields each event at once.
            reads = iter(lambda: raw.read1(READ_SIZE, decode_content=True), b"")
        while not self.aborted:
            chunk = next(reads, b"")
            if not chunk:
                return
            yield chunk

    def __iter__(self):
        try:
            yield from self._events()
        except UnicodeDecodeError:
            yield from self.scrubber.flush()
            raise UpstreamError("invalid_utf8", "The API sent text that is not valid UTF-8.") from None
        except UpstreamError:
            yield from self.scrubber.flush()
            raise
        except (OSError, requests.RequestException, http.client.HTTPException, urllib3.exceptions.HTTPError) as error:
            if self.aborted:
                return
            yield from self.scrubber.flush()  # the text received before the break is kept
            if any(
                isinstance(cause, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError))
                for cause in _causes(error)
            ):
                raise UpstreamError(
                    "read_timeout", f"The API sent nothing for {self.read_timeout:g} seconds."
                ) from None
            raise UpstreamError(
                "connection_lost", "The connection to the API broke off in the middle of the answer."
            ) from None
        finally:
            self.close()

    def _events(self):
        for data in sse_data(self._chunks()):
            if self.aborted:
                return  # nothing more after abort(), not even what was already received
            try:
                decoded = self.scrubber.decoded(data)
            except ValueError:
                logger.warning("Skipped an upstream event that is not JSON: %.200r", self.scrubber.text(data))
                continue
            if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
                logger.warning("Skipped an upstream event without a type: %.200r", self.scrubber.text(data))
                continue
            event = parse_event(decoded)
            if event is None:
                continue
            yield from self.scrubber.events(event)
            if isinstance(event, ResponseFinished):
                return
        # The body or its `[DONE]` marker ended before any terminal event.
        if not self.aborted:
            raise UpstreamError("stream_truncated", "The API ended the stream before finishing the answer.")

    def abort(self):
        """Close the stream from any thread, waking a read blocked on a silent upstream."""
        with self._lock:
            if self.aborted:
                return
            self.aborted = True
        interrupt = getattr(self.response.raw, "interrupt", None)
        if interrupt is not None:  # a body read in-process (chat/localmodel/transport.py)
            interrupt()
            return
        # shutdown() rather than close(): it is safe while another thread is inside recv() and
        # makes that recv() return at once; the reading thread then closes the response.
        connection = getattr(self.response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        """Release the connection; call from the reading thread (or when never read)."""
        self.response.close()
