"""Server-sent events framing: the `data` of each event of a byte stream, however it is chunked.

No I/O here: `sse_data()` takes any iterable of byte chunks (the client passes the body as it
arrives) and yields each event's data as text, as the specification's parsing rules say.

This runs once per upstream event of every answer, so it works on whole chunks rather than byte
by byte or line by line: line endings are made LF first (a CR at a chunk's end is remembered, in
case the next chunk starts with the LF of its CRLF), then a chunk is cut at the blank lines that
end events with one `split`, and an event of one `data:` line (the usual case) costs a slice and
a decode.
"""

# The end marker of the Open Responses specification: the data of a stream's last event. A
# terminal event should have come before it; whatever follows it is not read.
DONE = "[DONE]"


def _lf_chunks(chunks):
    """The chunks with every line ending (LF, CR or CRLF, wherever the chunks break) made LF."""
    after_cr = False
    for chunk in chunks:
        if not chunk:
            continue  # it neither ends a line nor separates a CR from its LF
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two chunks
            after_cr = False
            if not chunk:
                continue
        after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        yield chunk


def _blocks(chunks):
    """The events of the stream, each as the bytes between two blank lines (LF endings only)."""
    pending = []  # pieces of an event not ended yet: joined once, so a huge event costs linear time
    ends_with_lf = False
    for chunk in _lf_chunks(chunks):
        if ends_with_lf and chunk.startswith(b"\n"):
            yield b"".join(pending)  # the blank line's LF came in this chunk
            pending.clear()
            chunk = chunk[1:]
        parts = chunk.split(b"\n\n")
        if len(parts) > 1:
            pending.append(parts[0])
            yield b"".join(pending)
            pending.clear()
            yield from parts[1:-1]
        last = parts[-1]
        if last:
            pending.append(last)
            ends_with_lf = last.endswith(b"\n")
        else:
            ends_with_lf = False
    if pending:
        yield b"".join(pending)  # EOF ends the last event even without its blank line


def _data_of(block):
    """An event's data: its `data` lines joined by LF; None when it has none (comments, ids)."""
    # The usual event: one data line, last, maybe after an `event:` line. The first "data:" of
    # the block starts a line and no LF follows it: no other line names data.
    start = block.find(b"data:")
    if start != -1 and (start == 0 or block[start - 1] == 10) and block.find(b"\n", start) == -1:
        return block[start + 5 :].removeprefix(b" ").decode("utf-8")
    data = []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value.removeprefix(b" ").decode("utf-8"))
    return "\n".join(data) if data else None


def sse_data(chunks):
    """The `data` of each server-sent event: `:` comments skipped, multi-line data joined by LF.

    The events end at the end of the chunks or at a `[DONE]` event, which is not yielded; nothing
    after it is read, so a server that keeps the connection open does not keep the reader waiting.
    Only `data` matters: events are dispatched on the JSON `type`, which the specification requires
    to equal the `event:` line. Decoding is per line, after a character split across chunks has been
    put back together; invalid UTF-8 raises UnicodeDecodeError.
    """
    for block in _blocks(chunks):
        text = _data_of(block)
        if text is None:
            continue
        if text.strip() == DONE:
            return
        yield text
