"""A websocket's bytes written to its TCP socket at once, under daphne (docs/benchmarks.md, "The
write path").

Twisted's `FileDescriptor.write` never writes: it appends the bytes to the transport's buffer and
registers the socket for writing with the reactor (an `epoll_ctl`), the reactor's next turn finds
it writable (an `epoll_wait` result, a callback through Twisted's logging context), sends, and
unregisters it (another `epoll_ctl`). For a server that sends every socket a frame several times a
second, that was most of what a frame cost between the relay and the socket. `DirectWrites`
wraps one connection's transport (`install`, once per websocket, from the ASGI app's send) and
sends the bytes with the transport's own `writeSomeData` when nothing is waiting in its buffer;
whatever the socket does not take (a slow reader, a full kernel buffer) and every write after it
go to Twisted's buffer as before, so

- the order of the bytes is kept: they go out directly only when nothing written earlier is
  still waiting;
- a slow socket is held exactly as before: its backlog is Twisted's buffer, which only what this
  socket's conversation says can grow (deltas only), and its producer and close logic are
  Twisted's, untouched;
- an error (a reset connection) is left to Twisted: the bytes go to its buffer, its next write
  finds the error and closes the connection as it always did.

A text frame itself (`TextFrames`) is built here too, for the frames the consumer sends: a
server's frame is a two-to-ten-byte header and the payload (RFC 6455: no mask from a server), and
building it through daphne's reply (a coroutine, a lookup of the connection by its protocol's
Python `__hash__`) and autobahn's `sendMessage` (its asserts, counters, and a debug log line whose
arguments are formatted with colours for every frame, logged or not) cost about three times what
the write itself costs. Whenever autobahn could frame differently (an extension negotiated, a
fragment size, masking, a frame over its size limit, the socket not open), the frame goes through
daphne's send as before.

Only a plain TCP connection is written to directly: over TLS (`daphne -e ssl:...`) the bytes
must go through the TLS layer, and anything that is not a Twisted TCP connection (Channels'
test communicator, another server) keeps its own transport.
"""

import functools
import logging
import struct

from twisted.internet import tcp

logger = logging.getLogger(__name__)


def unsent_bytes(transport):
    """How many bytes the Twisted TCP `transport` holds that the socket has not taken yet.

    Twisted keeps them in two buffers of `FileDescriptor` (abstract.py): `dataBuffer` from
    `offset` on, and a list of later writes counted in `_tempDataLen`. No public call tells
    this; tests/unit/test_socket_writes.py pins it against a real connection filled past the
    kernel's buffer, and a Twisted that renamed them reads as "bytes waiting": writes go through
    its buffer, as they did before this module."""
    return (len(transport.dataBuffer) - transport.offset) + getattr(transport, "_tempDataLen", 1)


class DirectWrites:
    """A connection's transport that sends at once when it can (see the module's docstring);
    everything but `write` and `writeSequence` is the transport's own."""

    def __init__(self, transport):
        self.transport = transport
        self.direct = 0  # writes sent whole at once, for tests and benchmarks
        self.buffered = 0  # writes (or their rest) left to Twisted's buffer

    def __getattr__(self, name):
        return getattr(self.transport, name)

    def write(self, data):
        transport = self.transport
        if (
            data
            and transport.connected
            and not transport.disconnecting
            and not transport.TLS
            and not unsent_bytes(transport)
        ):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    self.direct += 1
                    return
                data = data[sent:]
            # else the connection is lost: Twisted's own write finds it and closes as before.
        self.buffered += 1
        transport.write(data)

    def writeSequence(self, data):
        self.write(b"".join(data))


def daphne_protocol(send):
    """The Twisted protocol behind an ASGI `send` that daphne made (`partial(Server.handle_reply,
    protocol)`, daphne/server.py), or None for any other server."""
    if isinstance(send, functools.partial) and len(send.args) == 1:
        protocol = send.args[0]
        if isinstance(getattr(protocol, "transport", None), (tcp.Connection, DirectWrites)):
            return protocol
    return None


def install(send):
    """Wrap the transport of the connection behind `send` in DirectWrites, once; the wrapper, or
    None when `send` is not daphne's or the connection is not plain TCP."""
    protocol = daphne_protocol(send)
    if protocol is None:
        return None
    transport = protocol.transport
    if isinstance(transport, DirectWrites):
        return transport
    wrapper = DirectWrites(transport)
    protocol.transport = wrapper
    return wrapper


class TextFrames:
    """The text frames of one daphne websocket, framed here and written through its transport
    (see the module's docstring); `send(text)` is False when daphne's own path must send it."""

    def __init__(self, protocol):
        self.protocol = protocol

    def send(self, text):
        protocol = self.protocol
        payload = text.encode()
        size = len(payload)
        if (
            protocol.state != protocol.STATE_OPEN
            or protocol.send_state != protocol.SEND_STATE_GROUND
            or protocol.send_queue
            or protocol.websocket_extensions_in_use
            or protocol.maskServerFrames
            or protocol.autoFragmentSize
            or 0 < protocol.maxMessagePayloadSize < size
        ):
            return False
        protocol.transport.write(frame_header(size) + payload)
        return True


def frame_header(size):
    """The header of a final, unmasked text frame of `size` bytes (RFC 6455, section 5.2)."""
    if size <= 125:
        return bytes((0x81, size))
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


def text_sender(send):
    """The ASGI `send` of a websocket, sending its text frames through TextFrames under daphne
    (with its transport wrapped in DirectWrites) and everything else, and every frame under any
    other server, through `send` itself."""
    protocol = daphne_protocol(send)
    if protocol is None:
        return send
    install(send)
    frames = TextFrames(protocol)

    async def send_text_first(message):
        text = message.get("text")
        if message["type"] == "websocket.send" and text and not message.get("bytes") and frames.send(text):
            return
        await send(message)

    return send_text_first
