import asyncio

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

from chat.layers import InMemoryChannelLayer

pytestmark = pytest.mark.asyncio


async def test_expired_messages_are_still_swept_once_the_interval_has_passed():
    layer = InMemoryChannelLayer(expiry=0.05)
    layer.sweep_interval = 0.1
    await layer.send("a.channel", {"type": "old"})
    layer._last_sweep = 0.0
    await asyncio.sleep(0.2)
    await layer.group_send("a.group", {"type": "new"})  # group sends sweep, once per interval at most
    assert "a.channel" not in layer.channels or layer.channels["a.channel"].empty()


async def test_between_sweeps_sends_do_not_walk_every_queue(monkeypatch):
    sweeps = []
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired", lambda layer: sweeps.append(layer))
    layer = InMemoryChannelLayer()
    await layer.group_add("a.group", "a.channel")
    for _ in range(50):
        await layer.group_send("a.group", {"type": "x"})
    assert len(sweeps) == 1
