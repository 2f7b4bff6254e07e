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

Pub/sub delivers to whoever is connected at the moment: when the subscription connection breaks,
the sockets of this process are brought up to date again from the snapshots (`resync`), as a
reconnecting browser is.

A socket follows one conversation at a time (`follow` / `unfollow`).
"""

import asyncio
import collections
import json
import logging
import threading
import uuid
import weakref

from django.conf import settings

logger = logging.getLogger(__name__)


class Relay:
    def __init__(self, loop):
        self.loop = loop
        self.cross_process = bool(settings.REDIS_URL)
        self.origin = uuid.uuid4().hex
        self.followers = collections.defaultdict(dict)  # group -> {consumer: None}, in joining order

        self._lock = threading.Lock()
        self._inbox = collections.deque()  # (group, event), from any thread
        self._wake_pending = False
        self._outgoing = []  # (group, event) still to publish to the other processes
        self._sender = None

        self._redis = None
        self._pubsub = None
        self._listener = None
        self._subscribed = set()
        self._membership = asyncio.Lock()

    # --- following, on the loop -------------------------------------------------------------

    async def follow(self, group, consumer):
        self.followers[group][consumer] = None
        if self.cross_process and group not in self._subscribed:
            async with self._membership:
                if group in self.followers and group not in self._subscribed:
                    await self._connect()
                    await self._pubsub.subscribe(self._channel(group))
                    self._subscribed.add(group)
                    if self._listener is None or self._listener.done():
                        self._listener = self.loop.create_task(self._listen())

    async def unfollow(self, group, consumer):
        following = self.followers.get(group)
        if following is None:
            return
        following.pop(consumer, None)
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
        """Queue an event for the group's sockets; never blocks, never runs on the caller's thread."""
        with self._lock:
            self._inbox.append((group, event))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            logger.debug("Event loop closed; dropped %s", event["type"])

    def _wake(self):
        self.loop.create_task(self._drain())

    async def _drain(self):
        while True:
            with self._lock:
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
        for consumer in tuple(self.followers.get(group, ())):
            try:
                await consumer.relay_event(event)
            except Exception:
                logger.exception("A socket could not take %s", event["type"])

    # --- other processes ----------------------------------------------------------------------

    @staticmethod
    def _channel(group):
        return f"chatsite:relay:{group}"

    async def _connect(self):
        if self._redis is None:
            import redis.asyncio

            # The subscription waits for messages as long as a conversation is quiet: no read
            # timeout, but TCP keepalive, so that a dead connection is still noticed.
            self._redis = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=5, socket_keepalive=True
            )
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)

    async def _publish_to_other_processes(self):
        """One PUBLISH per conversation per round: the busier the server, the bigger the batches."""
        await self._connect()
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            by_group = {}
            for group, event in batch:
                by_group.setdefault(group, []).append(event)
            for group, events in by_group.items():
                payload = json.dumps({"origin": self.origin, "group": group, "events": events})
                try:
                    await self._redis.publish(self._channel(group), payload)
                except Exception:
                    logger.exception("Could not pass %s events of %s to the other processes", len(events), group)

    async def _listen(self):
        """Batches from the other processes, handed to this process's sockets."""
        failures = 0
        while self._subscribed:
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
            batch = json.loads(message["data"])
            if batch["origin"] == self.origin:
                continue  # this process delivered them already
            for event in batch["events"]:
                await self.deliver(batch["group"], event)

    async def _resubscribe(self):
        """After a broken subscription: subscribe again, then bring every socket up to date, since
        whatever was published meanwhile did not reach this process."""
        async with self._membership:
            try:
                await self._pubsub.reset()
                groups = [group for group in self._subscribed if group in self.followers]
                if groups:
                    await self._pubsub.subscribe(*(self._channel(group) for group in groups))
            except Exception:
                logger.exception("Could not subscribe again; retrying")
                return
        for following in list(self.followers.values()):
            for consumer in tuple(following):
                try:
                    await consumer.resync()
                except Exception:
                    logger.exception("A socket could not be brought up to date")


_relays = weakref.WeakKeyDictionary()
_relays_lock = threading.Lock()


def relay_for(loop):
    """The relay of an event loop (daphne has one; tests have one per test), from any thread."""
    with _relays_lock:
        relay = _relays.get(loop)
        if relay is None:
            relay = _relays[loop] = Relay(loop)
        return relay
