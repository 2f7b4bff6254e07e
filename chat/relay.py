"""The relay: one per server event loop, it hands a conversation's events to the sockets following it.

Answer threads flush several times a second per answer, and every flush is one event per socket of
the conversation. Going through the channel layer for each (a group_send, a receive per socket,
and Channels' dispatch, which hops to the ORM thread to close old connections before every
handler) cost about a millisecond of CPU per delta and serialised all sockets behind one thread
(docs/benchmarks.md). The relay instead

- takes events from any thread (`publish`), wakes the loop once for however many are waiting,
  and calls the handlers of the sockets of this process that follow the conversation directly,
  in order;
- with REDIS_URL set, also publishes them, batched per conversation, on a Redis pub/sub channel
  of the conversation, to which every process with a socket following it is subscribed (one
  subscription per process, not per socket). One PUBLISH per batch: channels_redis' group_send
  and receive cost a dozen round trips per message, which at ten answers already saturated the
  processes (docs/benchmarks.md).

In the same atomic command as each round's published batches (ROUND_SCRIPT, one per round for
all its answers), the relay appends their deltas to the answers' snapshots (`read_shared_snapshot`):
a socket of another process that subscribes and then reads the snapshot gets every delta after it,
and none twice (seq filters the overlap).

Pub/sub delivers to whoever is connected at the moment: when the subscription connection breaks,
the sockets of this process are brought up to date again from the snapshots (`resync`), as a
reconnecting browser is.

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
CHANNEL_PREFIX = b"chatsite:relay:"  # then the group: a conversation's events


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


# One round's writes as one command. Redis runs a script atomically, as it ran the transaction
# it replaces (MULTI, an APPEND and an EXPIRE per answer and stream, a SET per answer, a PUBLISH
# per conversation, EXEC), so a reader's MGET still sees a snapshot whose texts and seq agree; but
# the client packs one command and reads one reply per round, not two replies per command (its
# QUEUED and its result), which cost more of the process's CPU than the commands themselves
# (docs/benchmarks.md). KEYS: the stream keys appended to, the seq keys set, the keys of answers
# that finished. ARGV: those three counts, the two lives, the texts appended, the seqs, then
# (channel, message) pairs to publish.
ROUND_SCRIPT = """
local appended, seqs, finished = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, appended do
  redis.call('APPEND', KEYS[i], ARGV[5 + i])
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
for i = appended + 1, appended + seqs do
  redis.call('SET', KEYS[i], ARGV[5 + i], 'EX', ARGV[4])
end
for i = appended + seqs + 1, appended + seqs + finished do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
for i = 6 + appended + seqs, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return 0
"""

# What of an event travels in its batch's first line: the stream, the delta and a continued
# answer's start are for the snapshot only (`Round.add`), and the frame goes as it was encoded.
LEFT_OUT = ("frame", "stream", "delta", "start")


def encode_batch(origin, events):
    """One published message: the publishing relay's origin (32 hex digits), then the events'
    own fields as one JSON list, then each event's frame as it was encoded once, one per line
    (JSON has no raw newline), so that no frame is encoded again and a receiver decodes one JSON
    document per message however many events it carries."""
    fields = [{key: value for key, value in event.items() if key not in LEFT_OUT} for event in events]
    return "\n".join((origin, json.dumps(fields), *(event["frame"] for event in events)))


def decode_batch(data):
    """The events of a message `encode_batch` made (bytes), its origin line left out."""
    _, fields, *frames = data.decode().split("\n")
    events = json.loads(fields)
    for event, frame in zip(events, frames, strict=True):
        event["frame"] = frame
    return events


class Round:
    """What one publishing round writes to Redis, gathered from its events in order (pure): per
    answer that streamed its new text per stream and its last seq, the answers that finished,
    and per conversation the events to publish."""

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

    def script_arguments(self, origin, channel_of):
        """(keys, args) of ROUND_SCRIPT for this round."""
        appended, texts, seq_keys, seqs = [], [], [], []
        for message_id, (seq, streams) in self.snapshots.items():
            seq_key, *stream_keys = snapshot_keys(message_id)
            for stream, deltas in streams.items():
                appended.append(stream_keys[protocol.STREAM_NAMES.index(stream)])
                texts.append("".join(deltas))
            seq_keys.append(seq_key)
            seqs.append(seq)
        # The database has a finished answer's final state now; readers look there first.
        finished = [key for message_id in self.finished for key in snapshot_keys(message_id)]
        publishes = []
        for group, events in self.by_group.items():
            publishes += (channel_of(group), encode_batch(origin, events))
        counts = (len(appended), len(seq_keys), len(finished), SNAPSHOT_TTL, FINISHED_SNAPSHOT_TTL)
        return [*appended, *seq_keys, *finished], [*counts, *texts, *seqs, *publishes]


class Relay:
    def __init__(self, loop):
        self.loop = loop
        self.cross_process = bool(settings.REDIS_URL)
        self.origin = uuid.uuid4().hex
        self._own_batches = f"{self.origin}\n".encode()
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
        self._subscribed = set()
        self._membership = asyncio.Lock()
        self._stops = None  # (channel, callback) once this process hears its stops here

    # --- following, on the loop -------------------------------------------------------------

    async def follow(self, group, follower):
        """Hand the group's events to `follower` (a chat.follower.Follower) from now on."""
        self.followers[group][follower] = None
        if self.cross_process and group not in self._subscribed:
            async with self._membership:
                if group in self.followers and group not in self._subscribed:
                    await self._connect()
                    await self._pubsub.subscribe(self._channel(group))
                    self._subscribed.add(group)
                    self._keep_listening()

    def _keep_listening(self):
        if self._listener is None or self._listener.done():
            self._listener = self.loop.create_task(self._listen())

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
                await self._connect()
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
        if self.cross_process and group in self._subscribed:
            async with self._membership:
                if group in self.followers or group not in self._subscribed:
                    return
                self._subscribed.discard(group)
                try:
                    await self._pubsub.unsubscribe(self._channel(group))
                except Exception:
                    logger.warning("Could not unsubscribe from %s; its messages will be dropped", group)

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

    @staticmethod
    def _channel(group):
        return f"{CHANNEL_PREFIX.decode()}{group}"

    async def _connect(self):
        if self._redis is None:
            import redis.asyncio

            # The subscription waits for messages as long as a conversation is quiet: no read
            # timeout, but TCP keepalive, so that a dead connection is still noticed.
            self._redis = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=5, socket_keepalive=True
            )
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._round_script = self._redis.register_script(ROUND_SCRIPT)

    async def _publish_to_other_processes(self):
        """One command per round for every answer in it (ROUND_SCRIPT): the snapshots brought up
        to date (one APPEND per answer and stream, one seq), then one PUBLISH per conversation.
        The busier the server, the bigger the rounds and the fewer the commands per delta."""
        await self._connect()
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            round_ = Round()
            for group, event in batch:
                round_.add(group, event)
            keys, args = round_.script_arguments(self.origin, self._channel)
            try:
                await self._round_script(keys=keys, args=args)
            except Exception:
                logger.exception("Could not pass %s events to the other processes", len(batch))

    async def _listen(self):
        """Batches from the other processes, handed to this process's sockets."""
        failures = 0
        while self._subscribed or self._stops:
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
            data = message["data"]
            if data.startswith(self._own_batches):
                # This process delivered them already: it hears its own batches back wherever
                # a socket of its own follows the conversation too (the sender's tab, say).
                continue
            group = message["channel"][len(CHANNEL_PREFIX) :].decode()
            for event in decode_batch(data):
                await self.deliver(group, event)

    async def _resubscribe(self):
        """After a broken subscription: subscribe again, then bring every socket up to date, since
        whatever was published meanwhile did not reach this process."""
        async with self._membership:
            try:
                await self._pubsub.reset()
                groups = [group for group in self._subscribed if group in self.followers]
                channels = [self._channel(group) for group in groups]
                if self._stops is not None:
                    # Stops published meanwhile are on their rows: the next heartbeat finds them.
                    channels.append(self._stops[0].decode())
                if channels:
                    await self._pubsub.subscribe(*channels)
            except Exception:
                logger.exception("Could not subscribe again; retrying")
                return
        for following in list(self.followers.values()):
            for follower in tuple(following):
                try:
                    await follower.resync()
                except Exception:
                    logger.exception("A socket could not be brought up to date")
