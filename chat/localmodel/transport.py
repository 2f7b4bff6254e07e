"""How the site's own worker reaches the local model: in-process, through a requests adapter.

The worker's client (chat/upstream/client.py) posts to `BASE_URL/responses` as it would to any
API; the adapter mounted for `BASE_URL` on its session answers from this process's local model service
instead of the network. No HTTP server stands in between, so the answer does not depend on the
host the site is served under (ALLOWED_HOSTS), on HTTPS redirects, on proxies, or on the address
the server listens on; and the body is the very SSE the HTTP endpoint streams (endpoint.EventWriter),
so chat/upstream/ parses one format by one path.

The scheme is not one requests can send over the network: without the adapter mounted, a request
fails at once rather than leaving the machine.
"""

import io
import json
import queue

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from chat.localmodel import request as local_request
from chat.localmodel.endpoint import EventWriter, read_request

BASE_URL = "in-process://local-model/v1"


def mount(session, runtime):
    """Let `session` reach the local model of `runtime` (chat/runtime.py) at BASE_URL."""
    session.mount(BASE_URL, LocalModelAdapter(runtime))


class LocalModelAdapter(BaseAdapter):
    def __init__(self, runtime):
        super().__init__()
        # The runtime, not its service: a test may swap the service the runtime holds.
        self.runtime = runtime

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        read_timeout = timeout[1] if isinstance(timeout, tuple) else timeout
        try:
            parsed = read_request(request.headers.get("Authorization"), request.body or b"")
            if not parsed.stream:
                raise local_request.RequestError(400, "The in-process transport only streams.", param="stream")
        except local_request.RequestError as error:
            return self._response(request, error.status, io.BytesIO(json.dumps(error.as_json()).encode()))
        items = queue.SimpleQueue()
        # Not bounded by LOCAL_MODEL_QUEUE: the worker's pool bounds the site's own answers.
        generation = self.runtime.local_model.submit(parsed, items.put, bounded=False)
        body = GenerationBody(generation, EventWriter(parsed), items, read_timeout)
        return self._response(request, 200, body, "text/event-stream; charset=utf-8")

    def _response(self, request, status, body, content_type="application/json"):
        response = requests.Response()
        response.status_code = status
        response.reason = "OK" if status < 400 else "Error"
        response.headers = CaseInsensitiveDict({"Content-Type": content_type})
        response.raw = body
        response.url = request.url
        response.request = request
        response.connection = self
        response.encoding = "utf-8"
        return response

    def close(self):
        pass


class GenerationBody(io.RawIOBase):
    """The streamed body of one generation, as `response.raw`: reads wait for the model thread."""

    def __init__(self, generation, writer, items, read_timeout):
        super().__init__()
        self.generation = generation
        self.writer = writer
        self.items = items
        self.read_timeout = read_timeout
        self.pending = b""
        self.ended = False

    def readable(self):
        return True

    def read1(self, size=-1, decode_content=True):  # the signature of urllib3's, which the stream reads
        while not self.pending and not self.ended:
            try:
                kind, value = self.items.get(timeout=self.read_timeout)
            except queue.Empty:
                raise TimeoutError(f"The local model sent nothing for {self.read_timeout} seconds.") from None
            if kind == "interrupted":
                self.ended = True
                break
            self.pending += self.writer.write(kind, value)
            self.ended = self.writer.finished
        size = len(self.pending) if size is None or size < 0 else size
        chunk, self.pending = self.pending[:size], self.pending[size:]
        return chunk

    def readinto(self, buffer):
        chunk = self.read1(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def interrupt(self):
        """Called from any thread (ResponseStream.abort): wake a waiting read, free the model."""
        self.generation.cancel()
        self.items.put(("interrupted", None))

    def close(self):
        self.generation.cancel()
        super().close()

    def release_conn(self):
        pass
