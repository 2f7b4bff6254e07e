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


@database_sync_to_async
def session_cookie(user):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()


async def connect(user=None, origin=ORIGIN):
    headers = [origin] if origin else []
    if user is not None:
        headers.append((b"cookie", await session_cookie(user)))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


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
