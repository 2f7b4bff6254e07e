"""chat.socket_writes on real Twisted TCP connections (a socket pair, no reactor running: the
reactor's part, calling doWrite when the socket is writable, is played by the test) and a real
autobahn server protocol after a real handshake."""

import asyncio
import functools
import socket

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import address, main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from chat.socket_writes import DirectWrites, TextFrames, install, text_sender, unsent_bytes

HANDSHAKE = (
    b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RecordingReactor:
    """The IReactorFDSet part of a reactor: which descriptors asked to be told they can write."""

    def __init__(self):
        self.writers, self.readers = set(), set()

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)


class Accepted(tcp.Connection):
    """A TCP connection as tcp.Server makes one for an accepted socket (connected, with its
    addresses), on a socket pair."""

    def __init__(self, sock, protocol, reactor):
        super().__init__(sock, protocol, reactor=reactor)
        self.connected = 1

    def getPeer(self):
        return address.IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self):
        return address.IPv4Address("TCP", "127.0.0.1", 9000)


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    reactor = RecordingReactor()
    transport = Accepted(ours, Protocol(), reactor)
    yield DirectWrites(transport), peer, reactor
    ours.close()
    peer.close()


def received(peer):
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_write_reaches_the_socket_at_once_without_asking_the_reactor(pair):
    writes, peer, reactor = pair
    for data in (b"one ", b"two ", b"three"):
        writes.write(data)
        assert received(peer) == data  # no reactor turn in between
    assert writes.direct == 3 and writes.buffered == 0
    assert reactor.writers == set() and unsent_bytes(writes.transport) == 0


def test_what_the_socket_does_not_take_waits_in_twisteds_buffer_and_all_arrives_in_order(pair):
    writes, peer, reactor = pair
    sent = []
    for number in range(2000):  # far past what a socket pair's kernel buffers hold
        sent.append(number.to_bytes(4, "big") * 16384)
        writes.write(sent[-1])
        if unsent_bytes(writes.transport):
            break
    assert unsent_bytes(writes.transport) > 0, "the kernel took everything: nothing was left to buffer"
    assert reactor.writers == {writes.transport}  # Twisted's own write path, as before
    direct = writes.direct
    for number in range(5):  # behind the bytes waiting, never before them
        sent.append(f"later {number}".encode())
        writes.write(sent[-1])
    assert writes.direct == direct and writes.buffered == 6
    arrived = []
    while reactor.writers:  # the reactor's part: the peer reads, the socket is writable again
        arrived.append(received(peer))
        assert writes.transport.doWrite() is None
    arrived.append(received(peer))
    assert b"".join(arrived) == b"".join(sent)
    assert unsent_bytes(writes.transport) == 0
    writes.write(b"again")  # drained: straight to the socket again
    assert received(peer) == b"again" and writes.direct == direct + 1 and reactor.writers == set()


def test_a_connection_that_is_closing_or_lost_is_left_to_twisted(pair):
    writes, peer, reactor = pair
    peer.close()
    writes.write(b"into a closed socket")
    assert writes.buffered == 1 and writes.direct == 0
    assert reactor.writers == {writes.transport}
    assert writes.transport.doWrite() is main.CONNECTION_LOST  # what the reactor closes it on

    ours, other = socket.socketpair()
    closing = DirectWrites(Accepted(ours, Protocol(), RecordingReactor()))
    closing.transport.loseConnection()
    closing.write(b"after loseConnection")
    assert closing.buffered == 1 and closing.direct == 0
    ours.close()
    other.close()


def open_protocol(transport):
    factory = WebSocketServerFactory("ws://127.0.0.1:9000")
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE)
    assert protocol.state == protocol.STATE_OPEN
    return protocol


TEXTS = ["", "a", "é" * 62 + "x", "a" * 125, "a" * 126, "a" * 65535, "a" * 65536, '{"delta": "\\u00e9 ☃"}']


@pytest.mark.parametrize("text", TEXTS, ids=lambda text: f"{len(text.encode())}-bytes")
def test_a_text_frame_is_the_bytes_autobahn_would_send(text):
    transport = StringTransport()
    protocol = open_protocol(transport)
    transport.clear()
    protocol.sendMessage(text.encode())
    expected = transport.value()
    transport.clear()
    assert TextFrames(protocol).send(text) is True
    assert transport.value() == expected


@pytest.mark.parametrize(
    "change",
    [
        lambda protocol: setattr(protocol, "state", protocol.STATE_CLOSING),
        lambda protocol: protocol.websocket_extensions_in_use.append("permessage-deflate"),
        lambda protocol: setattr(protocol, "autoFragmentSize", 10),
        lambda protocol: setattr(protocol, "maskServerFrames", True),
        lambda protocol: setattr(protocol, "maxMessagePayloadSize", 3),
        lambda protocol: protocol.send_queue.append((b"queued", True)),
        lambda protocol: setattr(protocol, "send_state", protocol.SEND_STATE_INSIDE_MESSAGE),
    ],
    ids=["closing", "extension", "fragments", "masking", "over-size-limit", "queued", "inside-a-message"],
)
def test_whatever_autobahn_would_frame_differently_is_left_to_it(change):
    transport = StringTransport()
    protocol = open_protocol(transport)
    change(protocol)
    transport.clear()
    assert TextFrames(protocol).send("four") is False
    assert transport.value() == b""


def test_under_daphne_text_frames_go_out_at_once_and_everything_else_through_daphnes_send(pair):
    writes, peer, _ = pair
    transport = writes.transport
    protocol = open_protocol(transport)  # its answer waits in Twisted's buffer, unwrapped
    transport.doWrite()
    assert received(peer).startswith(b"HTTP/1.1 101 ")
    through_daphne = []

    async def handle_reply(protocol, message):  # the shape of daphne's send: Server.handle_reply
        through_daphne.append(message["type"])

    async def scenario():
        send = text_sender(functools.partial(handle_reply, protocol))
        assert isinstance(protocol.transport, DirectWrites)
        await send({"type": "websocket.send", "text": "hi"})
        assert received(peer) == b"\x81\x02hi"
        await send({"type": "websocket.send", "bytes": b"\x00"})
        await send({"type": "websocket.close", "code": 4401})
        protocol.state = protocol.STATE_CLOSING
        await send({"type": "websocket.send", "text": "too late"})

    asyncio.run(scenario())
    assert through_daphne == ["websocket.send", "websocket.close", "websocket.send"]
    assert install(functools.partial(handle_reply, protocol)) is protocol.transport  # once per connection


def test_any_other_servers_send_is_left_as_it_is():
    async def send(message):
        pass

    assert text_sender(send) is send
    bare = functools.partial(send)
    assert text_sender(bare) is bare
    not_a_protocol = functools.partial(lambda protocol, message: None, object())
    assert text_sender(not_a_protocol) is not_a_protocol and install(not_a_protocol) is None
