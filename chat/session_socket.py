"""A websocket that acts only while the session it was opened with lets it (chat/authority.py;
docs/protocol.md, "The session's end").

The socket joins two channel-layer groups, so that its end is prompt: logout tells the session's
sockets, account changes all of the user's (chat/signals.py), across processes. What nothing
announces (expiry, a row deleted by `clearsessions` or in another process) a periodic check finds.
"""

import asyncio
import logging
import random

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from django.conf import settings

from chat import protocol
from chat.authority import session_ending

logger = logging.getLogger(__name__)


class SessionEnded(Exception):
    """The socket's session no longer lets it act; `code` is one of protocol.SESSION_ENDINGS."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


class SessionBoundMixin:
    """For an AsyncWebsocketConsumer. The consumer sets `counted` once it accepted the socket and
    implements `closing()`, which gives back what the socket holds, once."""

    counted = False  # accepted: its frames and checks count
    ended = False  # its session ended: told so and closing; nothing more goes either way
    account_groups = ()
    watcher = None

    async def join_account_groups(self):
        self.session_key = self.scope["session"].session_key
        self.account_groups = [protocol.user_group(self.user.pk), protocol.session_group(self.session_key)]
        for group in self.account_groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def leave_account_groups(self):
        groups, self.account_groups = self.account_groups, ()
        for name in groups:
            await self.channel_layer.group_discard(name, self.channel_name)

    def start_watching(self):
        self.watcher = asyncio.get_running_loop().create_task(self.watch_session())

    def stop_watching(self):
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    async def watch_session(self):
        """Ask for a check of the session every CHAT_SESSION_CHECK_INTERVAL seconds, so that a
        socket that only listens ends with its session too. The check goes through the socket's
        own channel, so it runs in turn with frames and events, never in the middle of one."""
        interval = settings.CHAT_SESSION_CHECK_INTERVAL
        # Sockets opened together (every tab reconnecting after a restart) spread their checks.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.channel_layer.send(self.channel_name, protocol.session_check_event())
            except Exception:
                logger.warning("Could not schedule a session check; trying again later", exc_info=True)
            await asyncio.sleep(interval)

    # The executor of the session checks' database work; None: the ORM's one thread.
    database_executor = None

    async def check_session(self):
        if self.database_executor is None:
            check = database_sync_to_async(self.session_lets_act)
        else:
            check = DatabaseSyncToAsync(self.session_lets_act, thread_sensitive=False, executor=self.database_executor)
        await check()

    def session_lets_act(self):
        """Raise SessionEnded unless the socket's session still lets it act; on a thread that may
        use the database (check_session's, or the one a frame's work runs on already)."""
        code = session_ending(self.session_key, self.user.pk)
        if code is not None:
            raise SessionEnded(code)

    async def end(self, code):
        """Tell the browser why its session ended and close."""
        if self.ended:
            return
        self.ended = True
        await self.closing()
        await self.send_json(protocol.session_ended_frame(code))
        await self.close(code=protocol.CLOSE_SESSION_ENDED)

    # --- account events, through the channel layer ------------------------------------------

    async def account_closed(self, event):
        """Logged out: this socket may no longer act."""
        await self.end(event["code"])

    async def session_check(self, event):
        """The account changed, or the periodic check is due (watch_session)."""
        if self.ended or not self.counted:
            return
        try:
            await self.check_session()
        except SessionEnded as ended:
            await self.end(ended.code)
        except Exception:
            # The database is unavailable for a while: the next check, or the next frame, decides.
            logger.warning("Could not check a socket's session (user %s)", self.user.pk, exc_info=True)
