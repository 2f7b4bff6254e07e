"""The websocket consumer at /ws/chat/: checks, routes and forwards (docs/protocol.md).

Frames are parsed by chat/frames.py, acted on by one model verb each (chat/models.py, returning
frames; an answering frame's verb runs with its session check in one call on the runtime's
database pool), refused through chat/errors.py; the followed conversation's events reach the
socket through its chat/follower.py Follower, which the relay calls directly.
"""

import asyncio
import json
import logging

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from chat import frames, protocol, providers, socket_writes
from chat.errors import INTERNAL_ERROR, ClientError, answered, answered_on
from chat.follower import Follower, FollowState
from chat.models import Conversation, Message
from chat.runtime import current
from chat.session_socket import SessionBoundMixin, SessionEnded

logger = logging.getLogger(__name__)


def take_socket_place(user_id):
    """One more of the user's sockets in this process (the runtime's counter: a bound per process,
    docs/security.md); False when every place is taken. A socket holds its place for exactly the
    life of its consumer (ChatConsumer.__call__), however that life ends."""
    sockets = current().open_sockets
    if sockets[user_id] >= settings.CHAT_MAX_SOCKETS_PER_USER:
        return False
    sockets[user_id] += 1
    return True


def give_back_socket_place(user_id):
    sockets = current().open_sockets
    sockets[user_id] -= 1
    if sockets[user_id] <= 0:
        del sockets[user_id]


def current_loop():
    return asyncio.get_running_loop()


# The frames that answer: their session check runs in the same call on the database pool as
# their work, right before it (ChatConsumer.answer), one hop to the pool for the frame instead
# of two; every other frame is checked on its own before it is handled.
ANSWERING_FRAMES = frozenset({protocol.CHAT_SEND, protocol.CHAT_REGENERATE, protocol.CHAT_EDIT, protocol.CHAT_CONTINUE})


def ready_worker(model):
    """This process's worker (the runtime's, started with the server), once the upstream for
    `model` is configured. The session was checked before; the send rate and the budget are
    checked where the answer is stored, in one transaction with it."""
    worker = current().worker
    if worker is None:
        raise ClientError("unavailable", "The server is not taking answers just now: try again in a moment.")
    problem = providers.provider_for(model).configuration_problem()
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
        (frame["id"], current().read_snapshot(frame["id"]) or protocol.Snapshot.of_texts(0, frame["status"], frame))
        for frame in messages
        if frame["status"] in Message.UNFINISHED
    )
    return FollowState(conversation.as_frame(), messages, snapshots)


@answered
def stop_answer(user, message_id):
    """A stop request (chat.runtime.Runtime.request_stop): the answer's own thread, in whichever process
    generates it, saves it as cancelled and tells every tab."""
    try:
        answer = Message.objects.owned_by(user).filter(pk=message_id, role=Message.Role.ASSISTANT)
        finished = answer.get().is_finished
        if not finished:
            current().request_stop(answer)
    except (DatabaseError, InterfaceError):
        raise ClientError("unavailable", "The stop could not be recorded just now: press Stop again.") from None
    if finished:
        raise ClientError("not_running", "That answer has already finished.")


FRAME_SEND = "chat.frame_send"


class FrameSend:
    """Keep the server's own `send` in the scope (`FRAME_SEND`), for the frames a socket is sent.

    Channels' session middleware wraps `send` to save the session on `http.response.start`,
    which a websocket never sends; its check ran for every frame of every socket (its lazy
    session's attributes, a setting read: ~2 % of a loaded server's samples, docs/benchmarks.md).
    Outside AuthMiddlewareStack in chatsite/asgi.py; the consumer sends its text frames through
    it (ChatConsumer.send_text), everything else through Channels' chain as before.

    Under daphne those text frames are framed and written to the socket at once, and so are
    the connection's other bytes (chat.socket_writes), rather than on the reactor's next turn.
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        return await self.inner({**scope, FRAME_SEND: socket_writes.text_sender(send)}, receive, send)


class ChatConsumer(SessionBoundMixin, AsyncWebsocketConsumer):
    # `counted`: accepted and counted in the runtime's open sockets; the frames of a refused socket are ignored.
    follower = None

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # disconnect() is not reached when a handler raised or the task was cancelled: the
            # place, the timer and the groups are given back here, whatever ended the socket.
            try:
                await self.closing()
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
        self.relay = current().relay_for(current_loop())
        # Sends and session checks: on the runtime's database pool, not behind every socket's reads.
        self.database_executor = current().database_pool()
        self.follower = Follower(self.relay, self.send_text, self.read_state)
        await self.join_account_groups()  # it acts for as long as its session lets it
        await self.accept()
        self.start_watching()

    async def dispatch(self, message):
        """Channels' dispatch without its hop to the ORM's one thread before every message
        (`aclose_old_connections`): each database call of this consumer closes its thread's old
        connections before and after itself (channels' database_sync_to_async, and
        chat.errors.answered_on on the database pool), and the hop queued every frame of every
        socket, sends included, behind all the others' database calls."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code):
        await self.closing()

    async def closing(self):
        """Give back the place, the timer and the groups (once, however the socket ends)."""
        self.stop_watching()
        if self.counted:
            self.counted = False
            give_back_socket_place(self.user.pk)
        if self.follower is not None:
            await self.follower.close()
        await self.leave_account_groups()

    async def send_text(self, text):
        # What AsyncWebsocketConsumer.send(text_data=) does, two coroutines fewer: this runs for
        # every socket and every flush of every answer it follows. Past the session middleware's
        # wrapper where the server's send is at hand (chat.routing.FrameSend).
        await self.scope.get(FRAME_SEND, self.base_send)({"type": "websocket.send", "text": text})

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
            # Whatever the frame, it acts, and is answered, only while the session lets it
            # (chat/authority.py); parsing it reads nothing and changes nothing.
            try:
                content = frames.decode(text_data, bytes_data)
                client_id = frames.client_id_of(content)
                frame = frames.parse(content)
            except Exception:
                await self.check_session()
                raise
            if content["type"] not in ANSWERING_FRAMES:
                await self.check_session()
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
        await self.answer(
            frame,
            lambda: frame.model or providers.default_model(),
            Conversation.objects.send,
            frame.conversation,
            frame.text,
            parent_id=frame.parent,
            attachments=frame.attachments or (),
        )

    async def chat_subscribe(self, frame):
        located = await answered(Conversation.objects.locate)(self.user, frame.conversation)
        await self.follower.join(located.group, located.conversation)
        await self.follower.catch_up(await self.read_state(located.conversation), announce=True)

    async def chat_stop(self, frame):
        await stop_answer(self.user, frame.message)

    async def chat_regenerate(self, frame):
        await self.answer_message(frame, Message.Role.ASSISTANT, Conversation.objects.regenerate)

    async def chat_edit(self, frame):
        await self.answer_message(
            frame, Message.Role.USER, Conversation.objects.edit, frame.text, attachments=frame.attachments
        )

    async def chat_continue(self, frame):
        # No role here: the verb refuses a user message with a sentence about continuing.
        await self.answer_message(frame, None, Conversation.objects.continue_answer)

    async def answer_message(self, frame, role, verb, *arguments, **keywords):
        """`answer` for a verb on the user's message `frame.message` (of `role`, when given): the
        model is the frame's, else the one that message's conversation answers with."""

        def model_of():
            return frame.model or Message.objects.locate(self.user, frame.message, role).model

        await self.answer(frame, model_of, verb, frame.message, *arguments, **keywords)

    async def answer(self, frame, model_of, verb, *arguments, **keywords):
        """The path every answering frame takes: its work in one call on the database pool
        (`store_frame`), then `deliver`. `model_of()` is the model to answer with (it may read);
        `arguments` and `keywords` are the verb's own, after the user."""
        stored, worker = await answered_on(self.database_executor, self.store_frame)(
            frame, model_of, verb, arguments, keywords
        )
        await self.deliver(stored, worker)

    def store_frame(self, frame, model_of, verb, arguments, keywords):
        """`answer`'s work, on a thread of the database pool: the session check, the worker
        ready for the model, and the verb (a Conversation.objects verb) storing the frame for
        that worker; (the verb's models.Stored, the worker)."""
        self.session_lets_act()
        worker = ready_worker(model_of())
        stored = verb(
            self.user, *arguments, model=frame.model, client_id=frame.client_id, worker_id=worker.id, **keywords
        )
        return stored, worker

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
        worker.submit(stored.answer, stored.group, current_loop(), stored.answer_input)

    async def conversation_updated(self, event):
        """A conversation of the owner was pinned, archived or restored (chat/signals.py): an
        account event through the channel layer, forwarded as it is."""
        if self.ended or not self.counted:
            return
        await self.send_text(event["frame"])
