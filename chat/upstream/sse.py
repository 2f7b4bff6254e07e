"""Server-sent events framing: the `data` of each event of a byte stream, however it is chunked.

No I/O here: `sse_data()` takes any iterable of byte chunks (the client passes the body as it
arrives) and yields each event's data as text, as the specification's parsing rules say.
"""

# The end marker of the Open Responses specification: the data of a stream's last event. A
# terminal event should have come before it; whatever follows it is not read.
DONE = "[DONE]"


def _lines(chunks):
    """The lines of a byte stream ending in LF, CR or CRLF, wherever the chunks break."""
    pending = []  # pieces of a line not ended yet: joined once, so a huge line costs linear time
    after_cr = False
    for chunk in chunks:
        if not chunk:
            continue  # it neither ends a line nor separates a CR from its LF
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two chunks
        pieces = chunk.splitlines(keepends=True)
        after_cr = bool(pieces) and pieces[-1].endswith(b"\r")
        for piece in pieces:
            pending.append(piece)
            if piece.endswith((b"\n", b"\r")):
                yield b"".join(pending).rstrip(b"\r\n")
                pending.clear()
    if pending:
        yield b"".join(pending)
    yield b""  # EOF ends the last event even without its blank line


def sse_data(chunks):
    """The `data` of each server-sent event: `:` comments skipped, multi-line data joined by LF.

    The events end at the end of the chunks or at a `[DONE]` event, which is not yielded; nothing
    after it is read, so a server that keeps the connection open does not keep the reader waiting.
    Only `data` matters: events are dispatched on the JSON `type`, which the specification requires
    to equal the `event:` line. Decoding is per line, after a character split across chunks has been
    put back together; invalid UTF-8 raises UnicodeDecodeError.
    """
    data = []
    for line in _lines(chunks):
        if not line:
            if data:
                text = "\n".join(data)
                if text.strip() == DONE:
                    return
                yield text
                data = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value.removeprefix(b" ").decode("utf-8"))
