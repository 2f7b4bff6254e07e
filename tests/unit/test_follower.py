"""The follow protocol (`chat.follower.Follower`) with a fake relay and a fake send: events held
while the state is read, deltas a snapshot holds dropped, the rest sent once, in order."""

import asyncio
import json

from chat import protocol
from chat.errors import ClientError
from chat.follower import Follower, FollowState

ANSWER = "a1"
TEXT = protocol.STREAMS[-1]


class FakeRelay:
    def __init__(self):
        self.followers = {}
        self.calls = []

    async def follow(self, group, follower):
        self.calls.append(("follow", group))
        self.followers.setdefault(group, []).append(follower)

    async def unfollow(self, group, follower):
        self.calls.append(("unfollow", group))
        self.followers[group].remove(follower)


class Socket:
    """A follower with a fake send, and the state it reads (or the error reading it raises)."""

    def __init__(self, state=None):
        self.relay = FakeRelay()
        self.sent = []
        self.state = state
        self.reads = 0
        self.follower = Follower(self.relay, self.send, self.read_state)

    async def send(self, text):
        self.sent.append(json.loads(text))

    async def read_state(self, conversation_id):
        self.reads += 1
        if isinstance(self.state, Exception):
            raise self.state
        return self.state

    def sent_summary(self):
        return [(frame["type"], frame.get("seq"), frame.get("delta") or frame.get("text")) for frame in self.sent]


def delta(seq, text, message=ANSWER):
    return protocol.delta_event(message, seq, TEXT, text)


def state(seq=2, text="ab"):
    snapshot = protocol.Snapshot(seq, "streaming", text=text)
    return FollowState({"id": "c1"}, [{"id": ANSWER}], ((ANSWER, snapshot),))


def done(message=ANSWER):
    return protocol.frame_event(message, {"type": protocol.MESSAGE_DONE, "message": message})


def test_events_that_arrive_while_the_state_is_read_are_held_then_filtered_by_the_snapshot():
    socket = Socket()

    async def scenario():
        await socket.follower.join("g1", "c1")
        assert socket.relay.followers["g1"] == [socket.follower]
        # Flushes 2 and 3 reach the relay while the snapshot (seq 2) is being read.
        await socket.follower.deliver(delta(2, "b"))
        await socket.follower.deliver(delta(3, "c"))
        assert socket.sent == [], "nothing goes out before the state"
        await socket.follower.catch_up(state(), announce=True)
        await socket.follower.deliver(delta(3, "c"))  # the relay repeating itself changes nothing
        await socket.follower.deliver(delta(4, "d"))

    asyncio.run(scenario())
    assert socket.sent_summary() == [
        ("conversation.subscribed", None, None),
        ("message.snapshot", 2, "ab"),
        ("message.delta", 3, "c"),
        ("message.delta", 4, "d"),
    ]
    assert socket.sent[0] == {
        "type": "conversation.subscribed",
        "conversation": {"id": "c1"},
        "messages": [{"id": ANSWER}],
    }
    assert socket.follower.held is None


def test_a_new_answer_is_followed_from_its_first_delta_and_forgotten_when_done():
    socket = Socket()

    async def scenario():
        await socket.follower.join("g1", "c1")
        await socket.follower.release()
        created = protocol.created_event({"id": "a2", "conversation": "c1"})
        await socket.follower.deliver(created)
        await socket.follower.deliver(protocol.status_event("a2", "streaming"))
        await socket.follower.deliver(delta(1, "x", "a2"))
        await socket.follower.deliver(delta(1, "x", "a2"))
        await socket.follower.deliver(done("a2"))
        # A delta of an answer this socket knows nothing of goes out: nothing says it has it.
        await socket.follower.deliver(delta(5, "y", "a3"))

    asyncio.run(scenario())
    assert socket.sent_summary() == [
        ("message.created", None, None),
        ("message.status", None, None),
        ("message.delta", 1, "x"),
        ("message.done", None, None),
        ("message.delta", 5, "y"),
    ]
    assert socket.follower.seen == {"a3": 5}


def test_joining_another_conversation_leaves_the_first_and_forgets_what_it_had_seen():
    socket = Socket()

    async def scenario():
        await socket.follower.join("g1", "c1")
        await socket.follower.catch_up(state(), announce=False)
        await socket.follower.join("g1", "c1")  # the same conversation: still followed once
        await socket.follower.release()
        await socket.follower.join("g2", "c2")
        await socket.follower.release()

    asyncio.run(scenario())
    assert socket.relay.calls == [("follow", "g1"), ("unfollow", "g1"), ("follow", "g2")]
    assert socket.follower.seen == {} and socket.follower.conversation_id == "c2"
    assert socket.sent_summary() == [("message.snapshot", 2, "ab")], "announce=False: no conversation.subscribed"


def test_resync_reads_the_state_again_and_holds_what_arrives_meanwhile():
    socket = Socket(state(seq=5, text="abcde"))

    async def scenario():
        await socket.follower.resync()  # following nothing: nothing to read
        assert socket.reads == 0
        await socket.follower.join("g1", "c1")
        await socket.follower.catch_up(state(), announce=True)
        socket.sent.clear()

        real_read = socket.read_state

        async def read_while_deltas_arrive(conversation_id):
            await socket.follower.deliver(delta(5, "e"))
            await socket.follower.deliver(delta(6, "f"))
            return await real_read(conversation_id)

        socket.follower.read_state = read_while_deltas_arrive
        await socket.follower.resync()

    asyncio.run(scenario())
    assert socket.sent_summary() == [
        ("conversation.subscribed", None, None),
        ("message.snapshot", 5, "abcde"),
        ("message.delta", 6, "f"),
    ]


def test_resync_of_a_conversation_deleted_meanwhile_sends_nothing_and_holds_nothing():
    socket = Socket(ClientError("not_found", "No such conversation."))

    async def scenario():
        await socket.follower.join("g1", "c1")
        await socket.follower.release()
        await socket.follower.resync()
        await socket.follower.deliver(done())

    asyncio.run(scenario())
    assert socket.reads == 1
    assert socket.sent_summary() == [("message.done", None, None)]
    assert socket.follower.held is None


def test_a_closed_follower_sends_nothing_more_and_leaves_its_group_once():
    socket = Socket(state())

    async def scenario():
        await socket.follower.join("g1", "c1")
        await socket.follower.deliver(delta(3, "c"))
        await socket.follower.close()
        await socket.follower.close()
        await socket.follower.deliver(delta(4, "d"))
        await socket.follower.release()
        await socket.follower.resync()

    asyncio.run(scenario())
    assert socket.sent == [] and socket.reads == 0
    assert socket.relay.calls == [("follow", "g1"), ("unfollow", "g1")]
