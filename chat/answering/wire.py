"""What the worker hands the relay: the stream kinds and the events built from a flush.

Kept apart and small on purpose: the one description of an answer on the wire (chat/protocol.py)
takes these over.
"""

import json

from chat import protocol

# Which frame each kind of streamed text goes out as, in the order a flush sends them.
STREAMS = (
    ("reasoning", protocol.MESSAGE_REASONING_DELTA),
    ("refusal", protocol.MESSAGE_REFUSAL_DELTA),
    ("text", protocol.MESSAGE_DELTA),
)
STREAM_NAMES = tuple(name for name, _ in STREAMS)
FRAME_TYPES = dict(STREAMS)


def delta_event(message_id, chunk):
    """The relay event of one flushed chunk; `stream` and `delta` let the relay keep the snapshot
    other processes resume from."""
    frame = {"type": FRAME_TYPES[chunk.stream], "message": message_id, "seq": chunk.seq, "delta": chunk.delta}
    return {
        "type": protocol.EVENT_DELTA,
        "message": message_id,
        "seq": chunk.seq,
        "frame": json.dumps(frame),
        "stream": chunk.stream,
        "delta": chunk.delta,
    }


def snapshot(seq, status, texts):
    """`{seq, status, text, reasoning, refusal}`: where a socket that joins mid-answer starts."""
    return {"seq": seq, "status": status, **texts}
