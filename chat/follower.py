"""One socket following one conversation, gap-free and duplicate-free (docs/protocol.md,
"Sequence numbers, snapshots and resume").

The relay (chat/relay.py) calls `deliver` for every event of the followed conversation and
`resync` after events may have been lost on their way to this process. Between `join` and the end
of `catch_up` (or `release`) events are held: the socket first gets the state read after joining,
then what came meanwhile, each delta only when its seq is above what the socket already has.
"""

import collections
import dataclasses
import json

from chat import protocol
from chat.errors import ClientError


@dataclasses.dataclass(frozen=True)
class FollowState:
    """A conversation as a socket that starts following it is sent it."""

    conversation: dict  # its frame
    messages: list  # the frames of its current path
    snapshots: tuple  # (message id, protocol.Snapshot) of each answer in flight on that path

    def subscribed_frame(self):
        return {"type": protocol.CONVERSATION_SUBSCRIBED, "conversation": self.conversation, "messages": self.messages}


class Follower:
    """`send(text)` sends one encoded frame to the socket; `read_state(conversation_id)` reads the
    FollowState of the followed conversation again (or raises ClientError once it is gone)."""

    def __init__(self, relay, send, read_state):
        self.relay = relay
        self.send = send
        self.read_state = read_state
        self.group = None
        self.conversation_id = None
        self.seen = {}  # message id -> the last seq this socket has, for answers in flight
        self.held = None  # events that arrived while the state was being read; None: straight out
        self.closed = False

    async def join(self, group, conversation_id):
        """Follow the conversation (leaving the one followed before), holding its events from
        here until `catch_up` or `release`."""
        if self.held is None:
            self.held = collections.deque()
        if self.group == group:
            return
        await self.leave()
        self.group, self.conversation_id = group, str(conversation_id)
        self.seen = {}
        self.held = collections.deque()
        await self.relay.follow(group, self)

    async def catch_up(self, state, announce):
        """Send the state read after joining (as `conversation.subscribed` when `announce`) and
        the snapshots of answers in flight, then what was held meanwhile."""
        for message_id, snapshot in state.snapshots:
            self.seen[message_id] = snapshot.seq
        if announce:
            await self.send_frame(state.subscribed_frame())
        for message_id, snapshot in state.snapshots:
            await self.send_frame(snapshot.frame(message_id))
        await self.release()

    async def release(self):
        """Send the events held since `join`, then let the next ones through as they come."""
        while self.held:
            await self.forward(self.held.popleft())
        self.held = None

    async def deliver(self, event):
        """One event of the followed conversation, from the relay (for every socket and every
        flush: the frame goes straight out, encoded once for all sockets)."""
        if self.closed:
            return
        if self.held is not None:
            self.held.append(event)
            return
        if self.admits(event):
            await self.send(event["frame"])

    async def forward(self, event):
        if self.admits(event):
            await self.send(event["frame"])

    def admits(self, event):
        """Whether the socket is to get `event`: a delta only once, and only past its snapshot."""
        message_id, kind = event["message"], event["type"]
        if kind == protocol.MESSAGE_DELTA:
            last = self.seen.get(message_id)
            if last is not None and event["seq"] <= last:
                return False  # already part of the snapshot this socket got
            self.seen[message_id] = event["seq"]
        elif kind == protocol.MESSAGE_CREATED:
            self.seen.setdefault(message_id, 0)
        elif kind == protocol.MESSAGE_DONE:
            self.seen.pop(message_id, None)
        return True

    async def resync(self):
        """Bring the socket up to date after events were lost on their way to this process: the
        conversation's state again, as on chat.subscribe."""
        if self.closed or self.conversation_id is None:
            return
        if self.held is None:
            self.held = collections.deque()
        try:
            state = await self.read_state(self.conversation_id)
        except ClientError:
            await self.release()  # deleted meanwhile
            return
        await self.catch_up(state, announce=True)

    async def send_frame(self, frame):
        await self.send(json.dumps(frame))

    async def leave(self):
        """Stop following (once)."""
        group, self.group = self.group, None
        if group:
            await self.relay.unfollow(group, self)

    async def close(self):
        """The socket is closing: nothing more goes out, nothing is held."""
        self.closed = True
        self.held = None
        await self.leave()
