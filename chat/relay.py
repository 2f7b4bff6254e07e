"""The relay: one per server event loop, it hands a conversation's events to the sockets following it.

Answer threads flush several times a second per answer, and every flush is one event per socket of
the conversation. Going through the channel layer for each (a group_send, a receive per socket,
and Channels' dispatch, which hops to the ORM thread to close old connections before every
handler) cost about a millisecond of CPU per delta and serialised all sockets behind one thread
(docs/benchmarks.md). The relay instead

- takes events from any thread (`publish`), wakes the loop once for however many are waiting,
  and calls the handlers of the sockets of this process that follow the conversation directly,
  in order;
- when the channel layer spans processes (Redis), also sends them, batched per conversation, to
  the conversation's group, whose members are the relays of the other processes (one per process,
  not one per socket): each of those receives the batch once and hands it to its own sockets.

A socket follows one conversation at a time (`follow` / `unfollow`); the group is joined while at
least one socket of this process follows it.
"""

import asyncio
import collections
import logging
import threading
import time
import uuid
import weakref

from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

BATCH_EVENT = "relay.events"
# Group membership in the channel layer expires (a day in channels_redis): renewed well before.
GROUP_RENEWAL = 3600.0


class Relay:
    def __init__(self, loop):
        self.loop = loop
        self.layer = get_channel_layer()
        self.cross_process = self.layer is not None and not isinstance(self.layer, InMemoryChannelLayer)
        self.origin = uuid.uuid4().hex
        self.followers = collections.defaultdict(dict)  # group -> {consumer: None}, in joining order
        self.joined = {}  # group -> when this process's channel last joined it
        self.channel_name = None
        self._receiver = None
        self._renewal = None  # the timer renewing this process's group memberships
        self._membership = asyncio.Lock() if self.cross_process else None

        self._lock = threading.Lock()
        self._inbox = collections.deque()  # (group, event), from any thread
        self._wake_pending = False
        self._outgoing = []  # (group, event) still to send to the other processes
        self._sender = None

    # --- following, on the loop -------------------------------------------------------------

    async def follow(self, group, consumer):
        self.followers[group][consumer] = None
        if self.cross_process:
            async with self._membership:
                if self.channel_name is None:
                    # channels_redis pops all of a process's channels from one Redis list per
                    # prefix, one list at a time: a prefix of our own would wait behind the others.
                    self.channel_name = await self.layer.new_channel()
                if time.monotonic() - self.joined.get(group, -GROUP_RENEWAL) >= GROUP_RENEWAL:
                    await self.layer.group_add(group, self.channel_name)
                    self.joined[group] = time.monotonic()
                    self._schedule_renewal()
                if self._receiver is None or self._receiver.done():
                    self._receiver = self.loop.create_task(self._receive())

    async def unfollow(self, group, consumer):
        following = self.followers.get(group)
        if following is None:
            return
        following.pop(consumer, None)
        if following:
            return
        del self.followers[group]
        if self.cross_process:
            async with self._membership:
                if group in self.followers or group not in self.joined:
                    return
                del self.joined[group]
                await self.layer.group_discard(group, self.channel_name)
                if not self.followers and self._receiver is not None:
                    self._receiver.cancel()
                    self._receiver = None

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
                    self._sender = self.loop.create_task(self._send_to_other_processes())

    async def deliver(self, group, event):
        """Hand one event to this process's sockets following `group`."""
        for consumer in tuple(self.followers.get(group, ())):
            try:
                await consumer.relay_event(event)
            except Exception:
                logger.exception("A socket could not take %s", event["type"])

    # --- other processes ----------------------------------------------------------------------

    async def _send_to_other_processes(self):
        """One group_send per conversation per round: the busier the server, the bigger the batches."""
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            by_group = {}
            for group, event in batch:
                by_group.setdefault(group, []).append(event)
            for group, events in by_group.items():
                try:
                    await self.layer.group_send(
                        group, {"type": BATCH_EVENT, "origin": self.origin, "group": group, "events": events}
                    )
                except Exception:
                    logger.exception("Could not pass %s events of %s to the other processes", len(events), group)

    async def _receive(self):
        """Batches from the other processes, handed to this process's sockets."""
        failures = 0
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("The relay could not read from the channel layer; trying again")
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                continue
            if message.get("type") == BATCH_EVENT and message.get("origin") != self.origin:
                # A group this process has just left may still have had a batch on the way:
                # deliver() finds no follower for it then.
                for event in message["events"]:
                    await self.deliver(message["group"], event)

    def _schedule_renewal(self):
        if self._renewal is None and self.joined:
            self._renewal = self.loop.call_later(GROUP_RENEWAL / 6, self._renew_soon)

    def _renew_soon(self):
        self._renewal = None
        self.loop.create_task(self._renew_groups())

    async def _renew_groups(self):
        now = time.monotonic()
        async with self._membership:
            for group, joined in list(self.joined.items()):
                if now - joined >= GROUP_RENEWAL and group in self.followers:
                    self.joined[group] = now
                    await self.layer.group_add(group, self.channel_name)
        self._schedule_renewal()


_relays = weakref.WeakKeyDictionary()
_relays_lock = threading.Lock()


def relay_for(loop):
    """The relay of an event loop (daphne has one; tests have one per test), from any thread."""
    with _relays_lock:
        relay = _relays.get(loop)
        if relay is None:
            relay = _relays[loop] = Relay(loop)
        return relay
