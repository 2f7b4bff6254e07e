"""The relay: one per server event loop, it hands a conversation's events to the sockets following it.

Answer threads flush several times a second per answer, and every flush is one event per socket of
the conversation. Going through the channel layer for each (a group_send, a receive per socket,
and Channels' dispatch, which hops to the ORM thread to close old connections before every
handler) cost about a millisecond of CPU per delta and serialised all sockets behind one thread
(docs/benchmarks.md). The relay instead

- takes events from any thread (`publish`), wakes the loop once for however many are waiting,
  and calls the handlers of the sockets of this process that follow the conversation directly,
  in order;
- with REDIS_URL set, also hands them to the other processes with a socket following the
  conversation, through Redis: each relay listens on one pub/sub channel of its own (its inbox,
  `inbox_channel`), and a conversation's Redis set (`followers_key`) names the inboxes of the relays
  following it. One command per round (ROUND_SCRIPT) routes the round's events: each inbox named
  for any of its conversations gets one PUBLISH holding all of them, and the relay that published
  the round gets none (its own sockets had them directly). Per-conversation channels, which every
  follower's process subscribed to, made a process hear (receive, read, discard) each of its own
  batches back wherever it had a socket following too, and cost one message per conversation
  and round (docs/benchmarks.md).

In the same atomic command the relay appends the round's deltas to the answers' snapshots
(`read_shared_snapshot`): a relay of another process joins the conversation's set (and Redis
confirms it) before its socket reads the snapshot, so the socket gets every delta after it, and
none twice (seq filters the overlap).

Pub/sub delivers to whoever is connected at the moment: when the inbox's connection breaks, the
relay subscribes again, joins its conversations' sets again, then brings this process's sockets
up to date from the snapshots (`resync`), as a reconnecting browser is. Nothing of a relay is
left in Redis to grow after its process dies: a round whose PUBLISH to an inbox reaches no one
takes that inbox out of the sets it was found in, and a set expires unless a live relay renews
its membership (MEMBERSHIP_TTL).

A socket follows one conversation at a time (`follow` / `unfollow`).

Stop requests cross processes on the same connection: each process listens on a channel of its
own (`stop_channel`, named by its worker's id, which every answer's row names), and whoever asks
for a stop publishes the answer's id there (`publish_stops`, chat/runtime.py). The request is
recorded on the answer's row first, where the generating process's heartbeat finds a publish that
was lost.

The relays of a process, one per event loop, are its runtime's (chat/runtime.py).
"""

import asyncio
import collections
import contextlib
import heapq
import itertools
import json
import logging
import threading
import time
import uuid

from django.conf import settings

from chat import protocol
from chat.models import Message

logger = logging.getLogger(__name__)

SNAPSHOT_TTL = 3600  # an answer streaming longer than an hour without a delta is long dead
FINISHED_SNAPSHOT_TTL = 60
INBOX_PREFIX = "chatsite:inbox:"  # then a relay's origin: the rounds routed to that relay
# A conversation's set of the inboxes following it lives this long unless renewed; each relay
# renews its own memberships four times as often (a socket may follow a quiet conversation for
# days). A relay that died is in no set an hour later.
MEMBERSHIP_TTL = 3600
MEMBERSHIP_RENEWAL = MEMBERSHIP_TTL / 4
SUBSCRIBE_TIMEOUT = 10  # seconds for Redis to confirm a relay's inbox subscription


def inbox_channel(origin):
    """The pub/sub channel the relay whose origin is `origin` hears the other processes' rounds on."""
    return f"{INBOX_PREFIX}{origin}"


def followers_key(group):
    """The Redis set of the origins of the relays with a socket following `group`."""
    return f"chatsite:followers:{group}"


def snapshot_keys(message_id):
    """Redis keys of an answer's snapshot: its seq, then one string per stream (appended to)."""
    base = f"chatsite:snapshot:{message_id}"
    return [f"{base}:seq", *(f"{base}:{name}" for name in protocol.STREAM_NAMES)]


def read_shared_snapshot(client, message_id):
    """The snapshot of an answer streaming in any process, read with the synchronous Redis
    `client` (the runtime's), or None."""
    seq, *texts = client.mget(snapshot_keys(message_id))  # one command: a consistent read
    if seq is None:
        return None
    texts = {name: (text or b"").decode() for name, text in zip(protocol.STREAM_NAMES, texts, strict=True)}
    return protocol.Snapshot.of_texts(int(seq), Message.Status.STREAMING, texts)


def stop_channel(worker_id):
    """The Redis channel the process whose worker is `worker_id` hears its stops on."""
    return f"chatsite:stops:{worker_id}"


def publish_stops(client, message_ids_by_worker):
    """Tell each generating process to stop its answers among these, with the synchronous Redis
    `client`, from any thread: {worker id: [message ids]}. One PUBLISH per process, all in one
    round trip (a deactivated user's answers may be on every process)."""
    pipeline = client.pipeline(transaction=False)
    for worker_id, message_ids in message_ids_by_worker.items():
        pipeline.publish(stop_channel(worker_id), json.dumps({"stop": [str(pk) for pk in message_ids]}))
    pipeline.execute()


# One round's writes as one command. Redis runs a script atomically, so a reader's MGET sees a
# snapshot whose texts and seq agree, and a relay joins a conversation's set either before a round
# (and hears it) or after (and finds it in the snapshot); the client packs one command and reads one
# reply per round, where a MULTI/EXEC read two per command (docs/benchmarks.md). KEYS: the stream
# keys appended to, the seq keys set, the keys of answers that finished, then one followers set per
# conversation of the round. ARGV: those three counts, the two lives, the publishing relay's
# origin, the texts appended, the seqs, then one section (`encode_section`) per conversation.
# Each inbox named in the sets, but the publisher's, gets its sections in one PUBLISH; an inbox
# that nobody hears any more (its process died) is taken out of the sets it was found in.
ROUND_SCRIPT = (
    """
local appended, seqs, finished = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, appended do
  redis.call('APPEND', KEYS[i], ARGV[6 + i])
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
for i = appended + 1, appended + seqs do
  redis.call('SET', KEYS[i], ARGV[6 + i], 'EX', ARGV[4])
end
for i = appended + seqs + 1, appended + seqs + finished do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
local inboxes, order = {}, {}
for i = appended + seqs + finished + 1, #KEYS do
  local section = ARGV[6 + i - finished]
  for _, origin in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if origin ~= ARGV[6] then
      local routed = inboxes[origin]
      if routed == nil then
        routed = {sections = {}, sets = {}}
        inboxes[origin] = routed
        order[#order + 1] = origin
      end
      routed.sections[#routed.sections + 1] = section
      routed.sets[#routed.sets + 1] = KEYS[i]
    end
  end
end
for _, origin in ipairs(order) do
  local routed = inboxes[origin]
  if redis.call('PUBLISH', '"""
    + INBOX_PREFIX
    + """' .. origin, table.concat(routed.sections, '\\n')) == 0 then
    for _, key in ipairs(routed.sets) do
      redis.call('SREM', key, origin)
    end
  end
end
return 0
"""
)

# What of an event travels in its section's fields: the stream, the delta and a continued
# answer's start are for the snapshot only (`Round.add`), and the frame goes as it was encoded.
LEFT_OUT = ("frame", "stream", "delta", "start")


def encode_section(group, events):
    """One conversation's part of a published message: the group, then the events' own fields as
    one JSON list, then each event's frame as it was encoded once, one per line (neither a group
    name nor JSON has a raw newline), so that no frame is encoded again and a receiver decodes
    one JSON document per conversation however many events it carries. The round script joins
    an inbox's sections with newlines."""
    fields = [{key: value for key, value in event.items() if key not in LEFT_OUT} for event in events]
    return "\n".join((group, json.dumps(fields), *(event["frame"] for event in events)))


def decode_inbox(data):
    """[(group, events)] of a message the round script published to an inbox (bytes)."""
    lines = data.decode().split("\n")
    sections, at = [], 0
    while at < len(lines):
        group, events = lines[at], json.loads(lines[at + 1])
        for event, frame in zip(events, lines[at + 2 : at + 2 + len(events)], strict=True):
            event["frame"] = frame
        sections.append((group, events))
        at += 2 + len(events)
    return sections


class Round:
    """What one publishing round writes to Redis, gathered from its events in order (pure): per
    answer that streamed its new text per stream and its last seq, the answers that finished,
    and per conversation the events to route."""

    def __init__(self):
        self.snapshots = {}  # message id -> [last seq, {stream: [deltas]}], in order of arrival
        self.finished = []
        self.by_group = {}

    def add(self, group, event):
        stream = event.get("stream")
        if event.get("start"):
            # A continued answer, claimed: its snapshot starts as the text it goes on from
            # (seq 0), and its deltas append to it, as in the answer's own process.
            kept = self.snapshots.setdefault(event["message"], [0, {}])
            for name, text in event["start"].items():
                kept[1].setdefault(name, []).append(text)
        elif stream is not None:
            kept = self.snapshots.setdefault(event["message"], [0, {}])
            kept[0] = event["seq"]
            kept[1].setdefault(stream, []).append(event["delta"])
        elif event["type"] == protocol.MESSAGE_DONE:
            self.finished.append(event["message"])
        self.by_group.setdefault(group, []).append(event)

    def script_arguments(self, origin):
        """(keys, args) of ROUND_SCRIPT for this round, published by the relay `origin`, as bytes:
        redis-py's encoder passes bytes through at once, where it checks a str or an int against
        five types first, which for a round's several arguments per answer cost more than the
        encoding itself (docs/benchmarks.md)."""
        appended, texts, seq_keys, seqs = [], [], [], []
        for message_id, (seq, streams) in self.snapshots.items():
            seq_key, *stream_keys = snapshot_keys(message_id)
            for stream, deltas in streams.items():
                appended.append(stream_keys[protocol.STREAM_NAMES.index(stream)].encode())
                texts.append("".join(deltas).encode())
            seq_keys.append(seq_key.encode())
            seqs.append(b"%d" % seq)
        # The database has a finished answer's final state now; readers look there first.
        finished = [key.encode() for message_id in self.finished for key in snapshot_keys(message_id)]
        sets = [followers_key(group).encode() for group in self.by_group]
        sections = [encode_section(group, events).encode() for group, events in self.by_group.items()]
        counts = [b"%d" % count for count in (len(appended), len(seq_keys), len(finished))]
        lives = [b"%d" % SNAPSHOT_TTL, b"%d" % FINISHED_SNAPSHOT_TTL, origin.encode()]
        return [*appended, *seq_keys, *finished, *sets], [*counts, *lives, *texts, *seqs, *sections]


class Relay:
    def __init__(self, loop):
        self.loop = loop
        self.cross_process = bool(settings.REDIS_URL)
        self.origin = uuid.uuid4().hex
        self.channel = inbox_channel(self.origin)  # where the other processes' rounds reach it
        self.followers = collections.defaultdict(dict)  # group -> {follower: None}, in joining order

        self._lock = threading.Lock()
        self._inbox = collections.deque()  # (group, event), from any thread
        self._wake_pending = False
        # The answers' coalescing windows that end later (`flush_at`): one loop timer for all of
        # them, at the earliest, rather than a wake-up and a timer handle per answer and window.
        self._windows = []  # heap of (monotonic deadline, tie-breaker, callback), from any thread
        self._order = itertools.count()
        self._window_timer = None  # (deadline, TimerHandle) armed on the loop
        self._outgoing = []  # (group, event) still to publish to the other processes
        self._sender = None

        self._redis = None
        self._pubsub = None
        self._round_script = None
        self._listener = None
        self._renewer = None
        self._inbox_open = False
        self._joined = set()  # the groups whose followers set names this relay
        self._membership = asyncio.Lock()
        self._stops = None  # (channel, callback) once this process hears its stops here

    # --- following, on the loop -------------------------------------------------------------

    async def follow(self, group, follower):
        """Hand the group's events to `follower` (a chat.follower.Follower) from now on."""
        self.followers[group][follower] = None
        if self.cross_process and group not in self._joined:
            async with self._membership:
                if group in self.followers and group not in self._joined:
                    await self._open_inbox()
                    # Awaited: once Redis has it, every round of the group reaches this relay,
                    # and what came before is in the snapshot the socket reads next.
                    await self._join(group)
                    self._joined.add(group)
                    self._keep_listening()

    def _keep_listening(self):
        if self._listener is None or self._listener.done():
            self._listener = self.loop.create_task(self._listen())
        if self._renewer is None or self._renewer.done():
            self._renewer = self.loop.create_task(self._renew_memberships())

    # --- stops for this process, from the other processes ------------------------------------

    def listen_for_stops(self, worker_id, on_stop):
        """Hear the stops other processes publish for this process's answers (`publish_stops`) and
        hand their ids to `on_stop`, on the loop; callable from any thread. Nothing without
        REDIS_URL: there the one process tells its own worker directly."""
        if not self.cross_process:
            return
        try:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._hear_stops(worker_id, on_stop)))
        except RuntimeError:
            logger.debug("Event loop closed; no stops heard through it")

    async def _hear_stops(self, worker_id, on_stop):
        channel = stop_channel(worker_id)
        try:
            async with self._membership:
                await self._open_inbox()  # first: nothing reads the subscription before it
                await self._pubsub.subscribe(channel)
                self._stops = (channel.encode(), on_stop)
                self._keep_listening()
        except Exception:
            # The stop requests are on the rows: the maintenance loop's heartbeat still finds them.
            logger.exception("Could not subscribe to this process's stops; the heartbeat finds them")

    def _stopped(self, data):
        channel, on_stop = self._stops
        try:
            on_stop(json.loads(data)["stop"])
        except Exception:
            logger.exception("Could not pass on the stops heard on %s", channel.decode())

    async def unfollow(self, group, follower):
        following = self.followers.get(group)
        if following is None:
            return
        following.pop(follower, None)
        if following:
            return
        del self.followers[group]
        if self.cross_process and group in self._joined:
            async with self._membership:
                if group in self.followers or group not in self._joined:
                    return
                self._joined.discard(group)
                try:
                    await self._redis.srem(followers_key(group), self.origin)
                except Exception:
                    logger.warning("Could not leave %s; its rounds reach this relay, which drops them", group)

    # --- publishing, from any thread ----------------------------------------------------------

    def publish(self, group, event):
        """Queue an event for the group's sockets; never blocks, never runs on the caller's thread.
        However many threads publish meanwhile, the loop is woken once for all of them."""
        with self._lock:
            self._inbox.append((group, event))
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake_loop()

    def flush_at(self, deadline, callback):
        """Call `callback()` on the loop at `deadline` (time.monotonic(), the loop's clock), from
        any thread: the end of an answer's coalescing window. The windows of every answer share
        one loop timer, and the events their callbacks publish go out in one round."""
        with self._lock:
            heapq.heappush(self._windows, (deadline, next(self._order), callback))
            armed = self._window_timer
            if (armed is not None and armed[0] <= deadline) or self._wake_pending:
                return  # an earlier timer, or a round about to arm one, covers it
            self._wake_pending = True
        self._wake_loop()

    def _wake_loop(self):
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            logger.debug("Event loop closed; nothing more is delivered through it")

    def _wake(self):
        self.loop.create_task(self._drain())

    def _windows_end(self):
        """The loop timer: every window due runs now, in one round with the events it publishes."""
        due = []
        with self._lock:
            self._window_timer = None
            now = time.monotonic()
            while self._windows and self._windows[0][0] <= now:
                due.append(heapq.heappop(self._windows)[2])
            start_round = not self._wake_pending
            self._wake_pending = True  # the callbacks' publishes wait for the round started here
        for callback in due:
            try:
                callback()
            except Exception:
                logger.exception("A coalescing window could not be flushed")
        if start_round:
            self._wake()  # its round arms the timer for the windows still to come

    def _arm_windows(self):
        """On the loop, under the lock: the timer set for the earliest window still to come.
        Called by every round before it decides it is over, so that a window asked for while a
        round ran (which woke nobody) is never left without a timer."""
        if not self._windows:
            return
        deadline = self._windows[0][0]
        armed = self._window_timer
        if armed is not None:
            if armed[0] <= deadline:
                return
            armed[1].cancel()
        self._window_timer = (deadline, self.loop.call_at(deadline, self._windows_end))

    async def _drain(self):
        while True:
            with self._lock:
                self._arm_windows()
                if not self._inbox:
                    self._wake_pending = False
                    return
                batch = list(self._inbox)
                self._inbox.clear()
            for group, event in batch:
                await self.deliver(group, event)
            if self.cross_process:
                self._outgoing.extend(batch)
                if self._sender is None or self._sender.done():
                    self._sender = self.loop.create_task(self._publish_to_other_processes())

    async def deliver(self, group, event):
        """Hand one event to this process's sockets following `group`."""
        for follower in tuple(self.followers.get(group, ())):
            try:
                await follower.deliver(event)
            except Exception:
                logger.exception("A socket could not take %s", event["type"])

    # --- other processes ----------------------------------------------------------------------

    async def _connect(self):
        if self._redis is None:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=5, socket_keepalive=True
            )
            self._round_script = self._redis.register_script(ROUND_SCRIPT)
            # The inbox waits for messages as long as the conversations are quiet: no read
            # timeout, but TCP keepalive, so that a dead connection is still noticed. No retry:
            # redis-py would reconnect and subscribe again without a word, and the rounds of the
            # gap (and this relay's memberships, which they took away) would be lost unnoticed;
            # the listener does it instead, and brings the sockets up to date (`_resubscribe`).
            subscriber = redis.asyncio.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=None,
                socket_connect_timeout=5,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
            )
            self._pubsub = subscriber.pubsub()

    async def _open_inbox(self):
        """Subscribe to this relay's inbox (once, under the membership lock, before any listener
        reads the subscription) and wait for Redis to confirm it: a round that names this relay
        after it joins a set must reach it."""
        await self._connect()
        if not self._inbox_open:
            await self._pubsub.subscribe(self.channel)
            await self._confirmed()
            self._inbox_open = True

    async def _confirmed(self):
        """Wait for the confirmation of the inbox's subscription (the first channel subscribed)."""
        deadline = self.loop.time() + SUBSCRIBE_TIMEOUT
        while self.loop.time() < deadline:
            message = await self._pubsub.get_message(timeout=deadline - self.loop.time())
            if message and message["type"] == "subscribe" and message["channel"] == self.channel.encode():
                return
        raise TimeoutError(f"Redis did not confirm the subscription to {self.channel}")

    async def _join(self, *groups):
        """Name this relay in the followers sets of `groups`, each to live MEMBERSHIP_TTL."""
        pipeline = self._redis.pipeline(transaction=False)
        for group in groups:
            pipeline.sadd(followers_key(group), self.origin)
            pipeline.expire(followers_key(group), MEMBERSHIP_TTL)
        await pipeline.execute()

    async def _renew_memberships(self):
        """Join the sets of the groups followed again, every MEMBERSHIP_RENEWAL: a set lives only
        while a live relay renews it."""
        while True:
            await asyncio.sleep(MEMBERSHIP_RENEWAL)
            async with self._membership:
                groups = [group for group in self._joined if group in self.followers]
                try:
                    if groups:
                        await self._join(*groups)
                except Exception:
                    logger.warning("Could not renew this relay's memberships; trying again later", exc_info=True)

    async def _publish_to_other_processes(self):
        """One command per round for every answer in it (ROUND_SCRIPT): the snapshots brought up
        to date (one APPEND per answer and stream, one seq), then one PUBLISH per other relay
        following any of its conversations. The busier the server, the bigger the rounds and the
        fewer the commands per delta."""
        await self._connect()
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            round_ = Round()
            for group, event in batch:
                round_.add(group, event)
            keys, args = round_.script_arguments(self.origin)
            try:
                await self._round_script(keys=keys, args=args)
            except Exception:
                logger.exception("Could not pass %s events to the other processes", len(batch))

    async def _listen(self):
        """Rounds from the other processes, handed to this process's sockets, and stops."""
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("The relay lost its Redis subscription; subscribing again")
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                await self._resubscribe()
                continue
            failures = 0
            if message is None or message.get("type") != "message":
                continue
            if self._stops is not None and message["channel"] == self._stops[0]:
                self._stopped(message["data"])
                continue
            for group, events in decode_inbox(message["data"]):
                for event in events:
                    await self.deliver(group, event)

    async def _resubscribe(self):
        """After a broken subscription: subscribe again, join the sets again (a round that found
        nobody on the inbox meanwhile took this relay out of them), then bring every socket up to
        date, since whatever was published meanwhile did not reach this process. A failure is
        raised on the listener's next read, which tries again."""
        async with self._membership:
            try:
                await self._pubsub.aclose()
                channels = [self.channel]
                if self._stops is not None:
                    # Stops published meanwhile are on their rows: the next heartbeat finds them.
                    channels.append(self._stops[0].decode())
                await self._pubsub.subscribe(*channels)
                await self._confirmed()
                groups = [group for group in self._joined if group in self.followers]
                if groups:
                    await self._join(*groups)
            except Exception:
                logger.exception("Could not subscribe again; retrying")
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()  # the next read fails, and the listener tries again
                return
        for following in list(self.followers.values()):
            for follower in tuple(following):
                try:
                    await follower.resync()
                except Exception:
                    logger.exception("A socket could not be brought up to date")
