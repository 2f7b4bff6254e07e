"""The websocket consumer at /ws/chat/: checks, routes and forwards (docs/protocol.md).

Frames are parsed by chat/frames.py, acted on by one model verb each (chat/models.py, in the ORM's
thread, returning frames), refused through chat/errors.py; the followed conversation's events
reach the socket through its chat/follower.py Follower, which the relay calls directly.
"""

import asyncio
import collections
import json
import logging
import random

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from chat import frames, protocol, providers
from chat.authority import session_ending
from chat.errors import INTERNAL_ERROR, ClientError, answered
from chat.follower import Follower, FollowState
from chat.models import Conversation, Message
from chat.relay import relay_for
from chat.worker import current_loop, get_worker, read_snapshot, request_stop

logger = logging.getLogger(__name__)


class SessionEnded(Exception):
    """The socket's session no longer lets it act; `code` is one of protocol.SESSION_ENDINGS."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


# Open sockets per user in this process: a bound per process (docs/security.md). A socket holds its
# place for exactly the life of its consumer (ChatConsumer.__call__), however that life ends.
OPEN_SOCKETS = collections.Counter()


def take_socket_place(user_id):
    """One more of the user's sockets in this process; False when every place is taken."""
    if OPEN_SOCKETS[user_id] >= settings.CHAT_MAX_SOCKETS_PER_USER:
        return False
    OPEN_SOCKETS[user_id] += 1
    return True


def give_back_socket_place(user_id):
    OPEN_SOCKETS[user_id] -= 1
    if OPEN_SOCKETS[user_id] <= 0:
        del OPEN_SOCKETS[user_id]


async def ready_worker(model):
    """This process's worker, once the upstream for `model` is configured; the first call starts
    it and registers the process. The session was checked before the frame; the send rate and the
    budget are checked where the answer is stored, in one transaction with it."""
    worker = await database_sync_to_async(get_worker)()
    problem = worker.client_for(model).configuration_problem()
    if problem:
        raise ClientError("not_configured", problem)
    return worker


@answered
def conversation_state(user, conversation_id):
    """The user's conversation as a socket starting to follow it gets it; read after joining."""
    conversation = Conversation.objects.owned_by(user).get(pk=conversation_id)
    messages = conversation.path_frames()
    snapshots = tuple(
        # Nothing flushed yet (or the cache lost it): the checkpoint is all there is.
        (frame["id"], read_snapshot(frame["id"]) or protocol.Snapshot.of_texts(0, frame["status"], frame))
        for frame in messages
        if frame["status"] in Message.UNFINISHED
    )
    return FollowState(conversation.as_frame(), messages, snapshots)


@answered
def stop_answer(user, message_id):
    """A stop request (chat.worker.request_stop): the answer's own thread, in whichever process
    generates it, saves it as cancelled and tells every tab."""
    try:
        answer = Message.objects.owned_by(user).filter(pk=message_id, role=Message.Role.ASSISTANT)
        finished = answer.get().is_finished
        if not finished:
            request_stop(answer)
    except (DatabaseError, InterfaceError):
        raise ClientError("unavailable", "The stop could not be recorded just now: press Stop again.") from None
    if finished:
        raise ClientError("not_running", "That answer has already finished.")


class ChatConsumer(AsyncWebsocketConsumer):
    counted = False  # accepted and counted in OPEN_SOCKETS; frames of a refused socket are ignored
    ended = False  # its session ended: told so and closing; nothing more goes either way
    account_groups = ()
    watcher = None
    follower = None

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # disconnect() is not reached when a handler raised or the task was cancelled: the
            # place, the timer and the groups are given back here, whatever ended the socket.
            self.give_back_place()
            try:
                await self.leave()
            except Exception:
                logger.warning("A closed socket could not leave its groups", exc_info=True)

    async def connect(self):
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=protocol.CLOSE_SESSION_ENDED)
            return
        if not take_socket_place(self.user.pk):
            await self.accept()
            await self.send_json(
                protocol.error_frame("too_many_sockets", "Too many open tabs for this account: close some and reload.")
            )
            await self.close(code=4429)
            return
        self.counted = True
        self.relay = relay_for(current_loop())
        self.follower = Follower(self.relay, self.send_text, self.read_state)
        # The socket acts for as long as this session lets it (chat/authority.py). The groups make
        # its end prompt: logout tells the session's sockets, account changes all of the user's.
        self.session_key = self.scope["session"].session_key
        self.account_groups = [protocol.user_group(self.user.pk), protocol.session_group(self.session_key)]
        for group in self.account_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.watcher = asyncio.get_running_loop().create_task(self.watch_session())

    async def disconnect(self, code):
        self.give_back_place()
        await self.leave()

    def give_back_place(self):
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.counted:
            self.counted = False
            give_back_socket_place(self.user.pk)

    async def leave(self):
        """Stop following the conversation and leave the account groups (once)."""
        if self.follower is not None:
            await self.follower.close()
        groups, self.account_groups = self.account_groups, ()
        for name in groups:
            await self.channel_layer.group_discard(name, self.channel_name)

    async def send_text(self, text):
        await self.send(text_data=text)

    async def send_json(self, content):
        await self.send_text(json.dumps(content))

    async def read_state(self, conversation_id):
        return await conversation_state(self.user, conversation_id)

    # --- client frames ----------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.ended or not self.counted:
            return  # refused at connect, or its session ended: closing
        client_id = None
        try:
            # Whatever the frame, it acts only while the session lets it (chat/authority.py).
            await self.check_session()
            content = frames.decode(text_data, bytes_data)
            client_id = frames.client_id_of(content)
            frame = frames.parse(content)
            await getattr(self, content["type"].replace(".", "_"))(frame)
        except SessionEnded as ended:
            await self.end(ended.code)
        except ClientError as error:
            await self.send_json(protocol.error_frame(error.code, error.message, client_id))
        except Exception:
            # A bug or an unavailable database: answered and logged, and the socket lives on.
            logger.exception("A websocket frame failed (user %s)", self.user.pk)
            await self.send_json(protocol.error_frame("internal_error", INTERNAL_ERROR, client_id))
        finally:
            await self.follower.release()  # a handler that failed half way must not keep them

    async def chat_send(self, frame):
        worker = await ready_worker(frame.model or providers.default_model())
        stored = await answered(Conversation.objects.send)(
            self.user,
            frame.conversation,
            frame.text,
            model=frame.model,
            client_id=frame.client_id,
            worker_id=worker.id,
            parent_id=frame.parent,
        )
        await self.deliver(stored, worker)

    async def chat_subscribe(self, frame):
        located = await answered(Conversation.objects.locate)(self.user, frame.conversation)
        await self.follower.join(located.group, located.conversation)
        await self.follower.catch_up(await self.read_state(located.conversation), announce=True)

    async def chat_stop(self, frame):
        await stop_answer(self.user, frame.message)

    async def chat_regenerate(self, frame):
        located = await answered(Message.objects.locate)(self.user, frame.message, Message.Role.ASSISTANT)
        worker = await ready_worker(frame.model or located.model)
        stored = await answered(Conversation.objects.regenerate)(
            self.user, frame.message, model=frame.model, client_id=frame.client_id, worker_id=worker.id
        )
        await self.deliver(stored, worker)

    async def chat_edit(self, frame):
        located = await answered(Message.objects.locate)(self.user, frame.message, Message.Role.USER)
        worker = await ready_worker(frame.model or located.model)
        stored = await answered(Conversation.objects.edit)(
            self.user, frame.message, frame.text, model=frame.model, client_id=frame.client_id, worker_id=worker.id
        )
        await self.deliver(stored, worker)

    async def chat_select(self, frame):
        located = await answered(Message.objects.locate)(self.user, frame.message)
        await self.follower.join(located.group, located.conversation)
        await self.send_json(await answered(Conversation.objects.select)(self.user, frame.message))

    async def deliver(self, stored, worker):
        """Follow the conversation, announce what `stored` (a models.Stored) stored and start its
        answer; a retried frame is answered with what the first one stored, and nothing goes
        upstream again."""
        if stored.created_conversation is not None:
            await self.send_json({"type": protocol.CONVERSATION_CREATED, "conversation": stored.created_conversation})
        await self.follower.join(stored.group, stored.conversation_id)
        if stored.answer is None:
            for event in stored.created:
                await self.send_text(event["frame"])
            await self.follower.catch_up(await self.read_state(stored.conversation_id), announce=False)
            return
        await self.follower.release()  # nothing was in flight: the conversation was not busy
        for event in stored.created:
            self.relay.publish(stored.group, event)
        worker.submit(stored.answer, stored.group, current_loop())

    # --- the session's authority, and account events through the channel layer -------------

    async def watch_session(self):
        """Ask for a check of the session every CHAT_SESSION_CHECK_INTERVAL seconds, so that a
        socket that only listens ends with its session too (expiry, a row deleted by
        `clearsessions` or in another process: nothing announces those). The check goes through the
        socket's own channel, so it runs in turn with frames and events, never in the middle of one."""
        interval = settings.CHAT_SESSION_CHECK_INTERVAL
        # Sockets opened together (every tab reconnecting after a restart) spread their checks.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.channel_layer.send(self.channel_name, protocol.session_check_event())
            except Exception:
                logger.warning("Could not schedule a session check; trying again later", exc_info=True)
            await asyncio.sleep(interval)

    async def check_session(self):
        code = await database_sync_to_async(session_ending)(self.session_key, self.user.pk)
        if code is not None:
            raise SessionEnded(code)

    async def end(self, code):
        """Tell the browser why its session ended and close (docs/protocol.md, "The session's end")."""
        if self.ended:
            return
        self.ended = True
        self.give_back_place()
        await self.leave()
        await self.send_json(protocol.session_ended_frame(code))
        await self.close(code=protocol.CLOSE_SESSION_ENDED)

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
