"""The in-memory channel layer (one process), with its housekeeping made periodic.

channels' InMemoryChannelLayer sweeps expired messages and group members on every send and
every receive, walking every queue and every member of every group: a cost per delta that grows
with every connected socket (about a fifth of the server's time at 50 answers, docs/benchmarks.md).
Expiry is counted in seconds, so sweeping at most once a second keeps its meaning.
"""

import time

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    sweep_interval = 1.0
    _last_sweep = 0.0

    def _clean_expired(self):
        now = time.monotonic()
        if now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            super()._clean_expired()
