"""Helpers for consumer tests: a logged-in WebsocketCommunicator and frame collection."""

import asyncio
import json

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from chatsite.asgi import application

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
# The Host a browser sends with ORIGIN's page: the origin check compares the two.
HOST = (b"host", b"127.0.0.1:8000")


@database_sync_to_async
def session_cookie(user):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()


def cookie_of(client):
    """The session cookie header of a logged-in Django test client."""
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def connect(user=None, origin=ORIGIN, host=HOST, cookie=None, headers=(), scope=None):
    """A socket through the real ASGI application. `user` gets a fresh session of their own;
    `cookie` rides on an existing one (see cookie_of); `headers` are added as given, `scope` keys
    (e.g. {"scheme": "wss"}) set on the handshake's scope."""
    all_headers = [header for header in (origin, host) if header]
    if user is not None:
        all_headers.append((b"cookie", await session_cookie(user)))
    if cookie is not None:
        all_headers.append((b"cookie", cookie))
    all_headers.extend(headers)
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=all_headers)
    # The application has not run yet: it reads this scope when connect() first awaits.
    communicator.scope.update(scope or {})
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def receive_close(communicator, timeout=5):
    """The close code of a socket the server closes next (after any frames, which are returned)."""
    frames = []
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output.get("code"), frames
        frames.append(json.loads(output["text"]))


async def receive(communicator, timeout=5):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def receive_until(communicator, frame_type, timeout=10, message=None):
    """Collect frames until one of `frame_type` (for `message`, if given); returns them all."""
    frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await receive(communicator, timeout=max(0.1, deadline - loop.time()))
        frames.append(frame)
        if frame["type"] == frame_type and (message is None or frame.get("message") == message):
            return frames


def assert_no_groups_left():
    """No socket is left in any channel-layer group: every consumer discarded the groups it joined.

    The in-memory layer keeps its groups in `layer.groups`. The Redis layer keeps each group as a
    sorted set at `<prefix>:group:<name>`, and Redis deletes a sorted set with its last member, so
    the same check there is that no such key is left on any of the layer's Redis servers.
    """
    layer = get_channel_layer()
    if hasattr(layer, "groups"):
        assert layer.groups == {}
        return
    import redis

    left = []
    for host in layer.hosts:
        client = redis.Redis.from_url(host["address"])
        try:
            left += [key.decode() for key in client.scan_iter(match=f"{layer.prefix}:group:*")]
        finally:
            client.close()
    assert left == []
