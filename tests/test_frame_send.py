"""A socket's text frames go straight to the server's send (chat.consumers.FrameSend), past the
session middleware's wrapper, which only ever acts on HTTP responses; everything else (accept,
close) still goes through Channels' chain, and the session still governs the socket."""

import pytest
from channels.sessions import InstanceSessionWrapper
from django.test import AsyncClient
from django.urls import reverse

from chat import protocol
from tests.upstream import answer
from tests.websocket import connect, cookie_of, receive, receive_close, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def wrapped(monkeypatch):
    """The types of the messages that went through the session middleware's send."""
    seen = []
    original = InstanceSessionWrapper.send

    async def send(self, message):
        seen.append(message["type"])
        return await original(self, message)

    monkeypatch.setattr(InstanceSessionWrapper, "send", send)
    return seen


async def test_an_answers_frames_skip_the_session_wrapper_and_all_arrive(alice, upstream, worker, wrapped):
    upstream.queue(answer(["one ", "two ", "three"], pause=0.05))
    communicator, connected, _ = await connect(alice)
    assert connected
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "c1"})
    frames = await receive_until(communicator, "message.done")
    assert "".join(frame["delta"] for frame in frames if frame["type"] == "message.delta") == "one two three"
    assert frames[-1]["text"] == "one two three"
    await communicator.send_to(text_data="not json")  # an error frame, sent the same way
    assert (await receive(communicator))["type"] == "error"
    await communicator.disconnect()
    assert wrapped == ["websocket.accept"]


async def test_a_socket_whose_session_ends_is_still_told_and_closed(alice, worker, wrapped):
    web = AsyncClient()
    response = await web.post(reverse("login"), {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 302
    communicator, connected, _ = await connect(cookie=cookie_of(web))
    assert connected
    await web.post(reverse("logout"))
    code, frames = await receive_close(communicator, timeout=10)
    assert code == protocol.CLOSE_SESSION_ENDED and frames[-1]["code"] == "logged_out"
    await communicator.disconnect()
    assert "websocket.send" not in wrapped and "websocket.close" in wrapped
