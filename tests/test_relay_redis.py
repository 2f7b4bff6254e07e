"""The relay between processes on a real Redis (tests/services.py): relays on one loop stand for
processes. A round of events from many answers reaches the other process whole and in order, the
process that published it does not deliver it twice, and the shared snapshot the round left agrees
with what was delivered (the one command per round, chat/relay.py's ROUND_SCRIPT). Each round goes
once to each other relay following any of its conversations (its inbox), to no other, and nothing
of a relay that is gone stays in Redis."""

import asyncio
import json
import uuid

import pytest
import redis
import redis.asyncio
from asgiref.sync import sync_to_async

from chat import protocol
from chat import relay as relay_module
from chat.follower import Follower, FollowState
from chat.relay import MEMBERSHIP_TTL, Relay, decode_inbox, followers_key, read_shared_snapshot, snapshot_keys
from tests.services import redis_server  # noqa: F401  (a fixture, used by name)


@pytest.fixture
def redis_url(request, settings):
    settings.REDIS_URL = request.getfixturevalue("redis_server").url
    return settings.REDIS_URL


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class Tab:
    """A socket following one conversation through one relay: the frames it was sent."""

    def __init__(self, relay):
        self.frames = []
        self.follower = Follower(relay, self.send, self.read_state)

    async def read_state(self, conversation_id):
        """The conversation as the follower reads it again after a broken subscription."""
        return FollowState({"id": conversation_id}, [], ())

    async def send(self, text):
        self.frames.append(json.loads(text))

    async def follow(self, group):
        await self.follower.join(group, uuid.uuid4())
        await self.follower.release()

    def deltas(self, message_id):
        return [
            (frame["type"], frame["seq"], frame["delta"])
            for frame in self.frames
            if frame.get("message") == message_id and "seq" in frame
        ]


async def until(condition, what, timeout=10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def followed(client, *relays, groups):
    """Each relay is named in the followers set of each group once its follow returned."""
    for group in groups:
        assert client.smembers(followers_key(group)) == {relay.origin.encode() for relay in relays}


def done_event(message_id):
    return protocol.frame_event(
        message_id, {"type": protocol.MESSAGE_DONE, "message": message_id, "status": "completed"}
    )


def piece(number, seq):
    # Newlines, quotes and tabs in the text: a batch's lines hold encoded frames only.
    return f'{number}\n"{seq}"\t '


@pytest.mark.asyncio
async def test_a_round_of_many_answers_reaches_the_other_process_in_order_with_snapshots_that_agree(client):
    loop = asyncio.get_running_loop()
    here, there = Relay(loop), Relay(loop)
    groups = [f"chat.conversation.{uuid.uuid4()}" for _ in range(2)]
    answers = [str(uuid.uuid4()) for _ in range(3)]
    group_of = {answers[0]: 0, answers[1]: 0, answers[2]: 1}  # two answers in one conversation
    tabs_here, tabs_there = [Tab(here) for _ in groups], [Tab(there) for _ in groups]
    for group, tab_here, tab_there in zip(groups, tabs_here, tabs_there, strict=True):
        await tab_here.follow(group)  # the sender's tab: this process hears its own batches back
        await tab_there.follow(group)
    followed(client, here, there, groups=groups)

    sent = {message_id: [] for message_id in answers}
    for seq in range(1, 31):
        for number, message_id in enumerate(answers):
            stream = "reasoning" if number == 1 and seq <= 10 else "text"
            here.publish(
                groups[group_of[message_id]], protocol.DeltaEvents(message_id).event(seq, stream, piece(number, seq))
            )
            kind = "message.reasoning.delta" if stream == "reasoning" else "message.delta"
            sent[message_id].append((kind, seq, piece(number, seq)))
        if seq % 7 == 0:
            await asyncio.sleep(0)  # rounds of different sizes
    here.publish(groups[1], done_event(answers[2]))
    await until(lambda: sum(len(tab.frames) for tab in tabs_there) == 3 * 30 + 1, "not all delivered")
    await asyncio.sleep(0.2)  # time for anything delivered twice to arrive

    for tabs in (tabs_here, tabs_there):
        assert sum(len(tab.frames) for tab in tabs) == 3 * 30 + 1, "each event once"
        for message_id in answers:
            assert tabs[group_of[message_id]].deltas(message_id) == sent[message_id], "in order"
        assert tabs[1].frames[-1]["type"] == protocol.MESSAGE_DONE

    for number, message_id in enumerate(answers[:2]):
        shared = await sync_to_async(read_shared_snapshot)(client, message_id)
        assert shared.seq == 30
        assert shared.reasoning == ("".join(piece(1, seq) for seq in range(1, 11)) if number == 1 else "")
        assert shared.text == "".join(piece(number, seq) for seq in range(11 if number == 1 else 1, 31))
    lives = [client.ttl(key) for key in snapshot_keys(answers[2]) if client.exists(key)]
    assert lives and all(0 < life <= 60 for life in lives), "a finished answer's snapshot lives a minute"
    assert 60 < client.ttl(snapshot_keys(answers[0])[0]) <= 3600
    for tab in tabs_here + tabs_there:
        await tab.follower.close()


@pytest.mark.asyncio
async def test_a_redis_that_forgot_the_round_script_still_gets_every_round(client):
    """A restarted (or flushed) Redis has no script cached: the round loads it again and goes out."""
    loop = asyncio.get_running_loop()
    here, there = Relay(loop), Relay(loop)
    group, message_id = f"chat.conversation.{uuid.uuid4()}", str(uuid.uuid4())
    tab_here, tab_there = Tab(here), Tab(there)
    await tab_here.follow(group)
    await tab_there.follow(group)
    followed(client, here, there, groups=[group])
    deltas = protocol.DeltaEvents(message_id)
    for seq in (1, 2):
        if seq == 2:
            client.script_flush()
        here.publish(group, deltas.event(seq, "text", f"part {seq} "))
        await until(lambda seq=seq: len(tab_there.frames) == seq, f"round {seq} not delivered")
    assert [frame["seq"] for frame in tab_there.frames] == [1, 2]
    shared = await sync_to_async(read_shared_snapshot)(client, message_id)
    assert (shared.seq, shared.text) == (2, "part 1 part 2 ")
    await tab_here.follower.close()
    await tab_there.follower.close()


class Inbox:
    """What Redis publishes to one relay's inbox, heard beside the relay itself."""

    def __init__(self, url, relay):
        self.client = redis.asyncio.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.channel = relay.channel
        self.messages = []

    async def __aenter__(self):
        await self.pubsub.subscribe(self.channel)
        while (await self.pubsub.get_message(timeout=5))["type"] != "subscribe":
            pass
        return self

    async def __aexit__(self, *exc_info):
        await self.pubsub.aclose()
        await self.client.aclose()

    async def heard(self, quiet=0.3):
        """The messages published to the inbox until it has been quiet for `quiet` seconds."""
        while (message := await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet)) is not None:
            self.messages.append(decode_inbox(message["data"]))
        return self.messages


@pytest.mark.asyncio
async def test_a_round_reaches_each_other_process_once_and_only_with_the_conversations_it_follows(client, redis_url):
    loop = asyncio.get_running_loop()
    here, there, elsewhere = Relay(loop), Relay(loop), Relay(loop)
    groups = [f"chat.conversation.{uuid.uuid4()}" for _ in range(2)]
    tabs = {relay: [Tab(relay) for _ in groups] for relay in (here, there, elsewhere)}
    for relay in (here, there):
        for group, tab in zip(groups, tabs[relay], strict=True):
            await tab.follow(group)
    await tabs[elsewhere][0].follow(groups[0])
    answers = [str(uuid.uuid4()) for _ in groups]

    async with Inbox(redis_url, here) as inbox_here, Inbox(redis_url, there) as inbox_there:
        async with Inbox(redis_url, elsewhere) as inbox_elsewhere:
            for seq in (1, 2, 3):  # one round: nothing awaited between the publishes
                for group, message_id in zip(groups, answers, strict=True):
                    here.publish(group, protocol.DeltaEvents(message_id).event(seq, "text", f"{seq} "))
            await until(lambda: [len(tab.frames) for tab in tabs[there]] == [3, 3], "not delivered there")
            await until(lambda: len(tabs[elsewhere][0].frames) == 3, "not delivered elsewhere")
            heard = [await inbox.heard() for inbox in (inbox_here, inbox_there, inbox_elsewhere)]

    assert heard[0] == [], "the publishing process hears none of its own rounds"
    assert [[(group, len(events)) for group, events in message] for message in heard[1]] == [
        [(groups[0], 3), (groups[1], 3)]
    ], "one message for the round, with both conversations"
    assert [[(group, len(events)) for group, events in message] for message in heard[2]] == [[(groups[0], 3)]]
    assert tabs[elsewhere][1].frames == []
    for relay in (here, there):
        assert [tab.deltas(message_id) for tab, message_id in zip(tabs[relay], answers, strict=True)] == [
            [("message.delta", seq, f"{seq} ") for seq in (1, 2, 3)]
        ] * 2
    for relay_tabs in tabs.values():
        for tab in relay_tabs:
            await tab.follower.close()


@pytest.mark.asyncio
async def test_nothing_of_a_relay_that_is_gone_stays_in_redis(client):
    """A process that died never left its conversations' sets: the first round that finds its
    inbox unheard takes it out, the sets expire unless renewed, and leaving empties them."""
    loop = asyncio.get_running_loop()
    here, there = Relay(loop), Relay(loop)
    group, message_id = f"chat.conversation.{uuid.uuid4()}", str(uuid.uuid4())
    tab_here, tab_there = Tab(here), Tab(there)
    await tab_here.follow(group)
    await tab_there.follow(group)
    client.sadd(followers_key(group), uuid.uuid4().hex)  # a relay whose process was killed

    here.publish(group, protocol.DeltaEvents(message_id).event(1, "text", "one "))
    await until(lambda: len(tab_there.frames) == 1, "not delivered")
    followed(client, here, there, groups=[group])
    assert 0 < client.ttl(followers_key(group)) <= MEMBERSHIP_TTL

    await tab_there.follower.close()
    followed(client, here, groups=[group])
    await tab_here.follower.close()
    assert not client.exists(followers_key(group))


@pytest.mark.asyncio
async def test_a_relay_renews_its_memberships_while_it_follows(client, monkeypatch):
    monkeypatch.setattr(relay_module, "MEMBERSHIP_RENEWAL", 0.05)
    relay = Relay(asyncio.get_running_loop())
    group = f"chat.conversation.{uuid.uuid4()}"
    tab = Tab(relay)
    await tab.follow(group)
    client.delete(followers_key(group))  # as if it had expired
    await until(lambda: client.smembers(followers_key(group)) == {relay.origin.encode()}, "not renewed")
    assert 0 < client.ttl(followers_key(group)) <= MEMBERSHIP_TTL
    await tab.follower.close()


@pytest.mark.asyncio
async def test_a_relay_whose_inbox_connection_broke_joins_again_and_brings_its_sockets_up_to_date(client):
    loop = asyncio.get_running_loop()
    here, there = Relay(loop), Relay(loop)
    group, message_id = f"chat.conversation.{uuid.uuid4()}", str(uuid.uuid4())
    tab_here, tab_there = Tab(here), Tab(there)
    await tab_here.follow(group)
    await tab_there.follow(group)
    client.srem(followers_key(group), there.origin)  # as a round that found its inbox unheard does
    assert client.client_kill_filter(_type="pubsub") >= 2

    await until(lambda: client.smembers(followers_key(group)) == {here.origin.encode(), there.origin.encode()}, "")
    await until(lambda: [frame["type"] for frame in tab_there.frames] == ["conversation.subscribed"], "no resync")
    here.publish(group, protocol.DeltaEvents(message_id).event(1, "text", "after "))
    await until(lambda: tab_there.deltas(message_id) == [("message.delta", 1, "after ")], "not delivered after")
    await tab_here.follower.close()
    await tab_there.follower.close()
