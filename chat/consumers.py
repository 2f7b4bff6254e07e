"""The websocket consumer at /ws/chat/: checks, routes and forwards (docs/protocol.md)."""

import asyncio
import collections
import json
import logging
import random
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from chat import protocol, providers
from chat.authority import session_ending
from chat.models import Conversation, ConversationBusy, Message, SendRefused
from chat.runtime import current

logger = logging.getLogger(__name__)


class ClientError(Exception):
    """A bad or refused frame; answered with one `error` frame, the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


NOT_FOUND = "No such conversation."
NO_SUCH_MESSAGE = "No such message."
BUSY = "An answer is still being written in this conversation: wait for it or press Stop."
INTERNAL_ERROR = "Something went wrong on the server; nothing was done. Try again."


def parse_uuid(value, what="conversation"):
    if not isinstance(value, str):
        raise ClientError("invalid_field", f"`{what}` must be an id string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ClientError("not_found", f"No such {what}.") from None


def require_storable(value, field):
    """Text the database can store. JSON escapes can carry a NUL, which PostgreSQL refuses, and a
    lone surrogate (`\\ud800`), which is not Unicode text and cannot be encoded as UTF-8."""
    if "\x00" in value:
        raise ClientError("invalid_field", f"`{field}` must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("invalid_field", f"`{field}` must be valid Unicode text.") from None
    return value


def clean_text(content):
    """The `text` of a frame that stores a user message, as chat.send and chat.edit take it."""
    text = content.get("text")
    if not isinstance(text, str):
        raise ClientError("invalid_field", "`text` must be a string.")
    if not text.strip():
        raise ClientError("empty_text", "The message is empty.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ClientError("text_too_long", f"The message is {len(text)} characters long; the limit is {limit}.")
    return require_storable(text, "text")


def clean_model(content):
    model = content.get("model")
    offered = providers.model_names()
    if model is not None and (not isinstance(model, str) or model not in offered):
        raise ClientError("unknown_model", f"Unknown model; choose one of: {', '.join(offered)}.")
    return model


def clean_client_id(content):
    client_id = content.get("client_id", "")
    if not isinstance(client_id, str) or len(client_id) > 64:
        raise ClientError("invalid_field", "`client_id` must be a string of at most 64 characters.")
    return require_storable(client_id, "client_id")


class SessionEnded(Exception):
    """The socket's session no longer lets it act; `code` is one of protocol.SESSION_ENDINGS."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def open_sockets():
    """Open sockets per user in this process (the runtime's): a bound per process (docs/security.md).
    A socket holds its place for exactly the life of its consumer (ChatConsumer.__call__), however
    that life ends."""
    return current().open_sockets


def current_loop():
    return asyncio.get_running_loop()


class ChatConsumer(AsyncWebsocketConsumer):
    counted = False  # accepted and counted in open_sockets(); frames of a refused socket are ignored
    ended = False  # its session ended: told so and closing; nothing more goes either way
    group = None
    account_groups = ()
    watcher = None
    # Events of the followed conversation that arrived while its state was being read; None when
    # events go straight out.
    held = None

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
        if open_sockets()[self.user.pk] >= settings.CHAT_MAX_SOCKETS_PER_USER:
            await self.accept()
            await self.send_json(
                {
                    "type": protocol.ERROR,
                    "code": "too_many_sockets",
                    "message": "Too many open tabs for this account: close some and reload.",
                }
            )
            await self.close(code=4429)
            return
        self.sockets = open_sockets()  # the runtime's counter, also should a test swap the runtime
        self.sockets[self.user.pk] += 1
        self.counted = True
        self.relay = current().relay_for(current_loop())
        self.group = None
        self.conversation_id = None
        # message id -> last seq this socket has, for in-flight answers of the followed conversation
        self.seen = {}
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
            self.sockets[self.user.pk] -= 1
            if self.sockets[self.user.pk] <= 0:
                del self.sockets[self.user.pk]

    async def leave(self):
        """Stop following the conversation and leave the account groups (once)."""
        group, self.group = self.group, None
        if group:
            await self.relay.unfollow(group, self)
        groups, self.account_groups = self.account_groups, ()
        for name in groups:
            await self.channel_layer.group_discard(name, self.channel_name)

    # --- the session's authority ------------------------------------------------------------

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
        self.held = None
        await self.send_json(protocol.session_ended_frame(code))
        await self.close(code=protocol.CLOSE_SESSION_ENDED)

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    async def receive(self, text_data=None, bytes_data=None):
        if self.ended or not self.counted:
            return  # refused at connect, or its session ended: closing
        client_id = None
        try:
            # Whatever the frame, it acts only while the session lets it (chat/authority.py).
            await self.check_session()
            content = self.decode(text_data, bytes_data)
            client_id = content.get("client_id") if isinstance(content.get("client_id"), str) else None
            frame_type = content.get("type")
            handler = self.handlers.get(frame_type) if isinstance(frame_type, str) else None
            if handler is None:
                shown = f" {frame_type[:50]!r}" if isinstance(frame_type, str) else ""
                raise ClientError("unknown_type", f"Unknown frame type{shown}.")
            await handler(self, content)
        except SessionEnded as ended:
            await self.end(ended.code)
        except ClientError as error:
            await self.send_error(error.code, error.message, client_id)
        except Exception:
            # A bug or an unavailable database: answered and logged, and the socket lives on.
            logger.exception("A websocket frame failed (user %s)", self.user.pk)
            await self.send_error("internal_error", INTERNAL_ERROR, client_id)
        finally:
            if self.held is not None:
                await self.release_held()  # a handler that failed half way must not keep them

    async def send_error(self, code, message, client_id=None):
        frame = {"type": protocol.ERROR, "code": code, "message": message}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send_json(frame)

    @staticmethod
    def decode(text_data, bytes_data):
        if text_data is None:
            raise ClientError("invalid_frame", "Frames must be JSON text, not binary.")
        if len(text_data) > settings.CHAT_MAX_FRAME_BYTES:
            raise ClientError("frame_too_large", f"Frames are limited to {settings.CHAT_MAX_FRAME_BYTES} bytes.")
        try:
            content = json.loads(text_data)
        except RecursionError:
            raise ClientError("invalid_json", "The frame is nested too deeply.") from None
        except ValueError:  # also integers too long to convert
            raise ClientError("invalid_json", "The frame is not valid JSON.") from None
        if not isinstance(content, dict):
            raise ClientError("invalid_frame", "A frame must be a JSON object with a `type`.")
        return content

    # --- client frames ----------------------------------------------------------------------

    async def chat_send(self, content):
        text = clean_text(content)
        model = clean_model(content)
        client_id = clean_client_id(content)
        raw_conversation = content.get("conversation")
        conversation_id = None if raw_conversation is None else parse_uuid(raw_conversation)
        raw_parent = content.get("parent")
        parent_id = None if raw_parent is None else parse_uuid(raw_parent, "message")
        if parent_id is not None and conversation_id is None:
            raise ClientError("invalid_field", "`parent` needs a `conversation`.")
        worker = await self.ready_worker(model or providers.default_model())

        conversation, created, messages, is_new = await self.start_exchange(
            conversation_id, text, model, client_id, worker.id, parent_id
        )
        if created:
            await self.send_json({"type": protocol.CONVERSATION_CREATED, "conversation": conversation.as_frame()})
        await self.deliver((conversation, messages, is_new), worker)

    async def chat_subscribe(self, content):
        conversation = await self.owned_conversation(parse_uuid(content.get("conversation")))
        await self.join(conversation)
        await self.catch_up(conversation, announce=True)

    async def chat_stop(self, content):
        message_id = parse_uuid(content.get("message"), "message")
        await self.stop_answer(message_id)

    async def chat_regenerate(self, content):
        message_id = parse_uuid(content.get("message"), "message")
        model, client_id = clean_model(content), clean_client_id(content)
        answer = await self.owned_message(message_id, Message.Role.ASSISTANT, "Only answers can be regenerated.")
        conversation = answer.conversation
        worker = await self.ready_worker(model or conversation.model)
        stored = await self.add_version(
            conversation, conversation.regenerate, answer, model=model, client_id=client_id, worker_id=worker.id
        )
        await self.deliver(stored, worker)

    async def chat_edit(self, content):
        message_id = parse_uuid(content.get("message"), "message")
        text = clean_text(content)
        model, client_id = clean_model(content), clean_client_id(content)
        message = await self.owned_message(message_id, Message.Role.USER, "Only your own messages can be edited.")
        conversation = message.conversation
        worker = await self.ready_worker(model or conversation.model)
        stored = await self.add_version(
            conversation, conversation.edit, message, text, model=model, client_id=client_id, worker_id=worker.id
        )
        await self.deliver(stored, worker)

    async def chat_select(self, content):
        message = await self.owned_message(parse_uuid(content.get("message"), "message"))
        await self.join(message.conversation)
        await self.send_json(
            {
                "type": protocol.CONVERSATION_PATH,
                "conversation": str(message.conversation_id),
                "messages": await self.select_version(message),
            }
        )
        await self.release_held()

    handlers = {
        protocol.CHAT_SEND: chat_send,
        protocol.CHAT_SUBSCRIBE: chat_subscribe,
        protocol.CHAT_STOP: chat_stop,
        protocol.CHAT_REGENERATE: chat_regenerate,
        protocol.CHAT_EDIT: chat_edit,
        protocol.CHAT_SELECT: chat_select,
    }

    # --- answering ------------------------------------------------------------------------

    async def ready_worker(self, model):
        """This process's worker (the runtime's, started with the server), once the upstream for
        `model` is configured.

        The session was checked before the frame; the send rate and the budget are checked where
        the answer is stored, in one transaction with it (UsageEntry.objects.reserve)."""
        worker = current().worker
        if worker is None:
            raise ClientError("unavailable", "The server is not taking answers just now: try again in a moment.")
        problem = providers.provider_for(model).configuration_problem()
        if problem:
            raise ClientError("not_configured", problem)
        return worker

    async def deliver(self, stored, worker):
        """Follow the conversation, announce a new version's messages and start its answer.

        `stored` is what add_version returns; a retried frame is answered with the messages the
        first one stored, and nothing goes upstream again.
        """
        conversation, messages, is_new = stored
        await self.join(conversation)
        if not is_new:
            for message in messages:
                if message is not None:
                    await self.send(text_data=protocol.created_event(message)["frame"])
            await self.catch_up(conversation, announce=False)
            return
        await self.release_held()  # nothing was in flight: the conversation was not busy
        for message in messages:
            self.relay.publish(self.group, protocol.created_event(message))
        worker.submit(messages[-1].id, self.group, current_loop())

    # --- following a conversation -----------------------------------------------------------

    async def join(self, conversation):
        """Follow the conversation (leaving the one followed before).

        Its events are held from here until `catch_up` (or `release_held`) has sent what the
        socket must see first: the state read after joining, so that no delta falls between.
        """
        if self.held is None:
            self.held = collections.deque()
        if self.group != conversation.group_name:
            if self.group:
                await self.relay.unfollow(self.group, self)
            self.group = conversation.group_name
            self.conversation_id = str(conversation.id)
            self.seen = {}
            self.held = collections.deque()
            await self.relay.follow(self.group, self)

    async def catch_up(self, conversation, announce):
        """After joining, read the snapshots of answers in flight: no delta falls between."""
        messages, snapshots = await self.conversation_state(conversation)
        for message_id, snapshot in snapshots.items():
            self.seen[message_id] = snapshot["seq"]
        if announce:
            await self.send_json(
                {
                    "type": protocol.CONVERSATION_SUBSCRIBED,
                    "conversation": conversation.as_frame(),
                    "messages": messages,
                }
            )
        for message_id, snapshot in snapshots.items():
            await self.send_json({"type": protocol.MESSAGE_SNAPSHOT, "message": message_id, **snapshot})
        await self.release_held()

    async def resync(self):
        """Bring the socket up to date after events may have been lost on their way to this
        process (chat.relay): the followed conversation's state again, as on chat.subscribe."""
        if self.conversation_id is None:
            return
        try:
            conversation = await self.owned_conversation(uuid.UUID(self.conversation_id))
        except ClientError:
            return  # deleted meanwhile
        if self.held is None:
            self.held = collections.deque()
        await self.catch_up(conversation, announce=True)

    async def release_held(self):
        """Send the events held since `join`, then let the next ones through as they come."""
        while self.held:
            event = self.held.popleft()
            await self.event_handlers[event["type"]](self, event)
        self.held = None

    @database_sync_to_async
    def owned_conversation(self, conversation_id):
        try:
            return Conversation.objects.owned_by(self.user).get(pk=conversation_id)
        except (Conversation.DoesNotExist, ValueError):
            raise ClientError("not_found", NOT_FOUND) from None

    @database_sync_to_async
    def conversation_state(self, conversation):
        conversation.refresh_from_db(fields=["current"])  # another socket may have moved it
        messages = conversation.path()
        snapshots = {}
        for message in messages:
            if message.is_finished:
                continue
            snapshot = current().read_snapshot(message.id)
            if snapshot is None:
                # Nothing flushed yet (or the cache lost it): the checkpoint is all there is.
                snapshot = {
                    "seq": 0,
                    "status": message.status,
                    "text": message.text,
                    "reasoning": message.reasoning,
                    "refusal": message.refusal,
                }
            snapshots[str(message.id)] = snapshot
        return [message.as_frame() for message in messages], snapshots

    @database_sync_to_async
    def start_exchange(self, conversation_id, text, model, client_id, worker_id, parent_id=None):
        try:
            return Conversation.objects.start_exchange_for(
                self.user,
                conversation_id,
                text,
                model=model,
                client_id=client_id,
                worker_id=worker_id,
                parent_id=parent_id,
            )
        except Conversation.DoesNotExist:
            raise ClientError("not_found", NOT_FOUND) from None
        except Message.DoesNotExist:
            raise ClientError("not_found", NO_SUCH_MESSAGE) from None
        except ConversationBusy:
            raise ClientError("busy", BUSY) from None
        except SendRefused as refusal:
            raise ClientError(refusal.code, str(refusal)) from None

    @database_sync_to_async
    def owned_message(self, message_id, role=None, wrong_role=""):
        """The user's message with its conversation; another user's is answered like an unknown one."""
        try:
            message = Message.objects.owned_by(self.user).select_related("conversation").get(pk=message_id)
        except Message.DoesNotExist:
            raise ClientError("not_found", NO_SUCH_MESSAGE) from None
        if role is not None and message.role != role:
            raise ClientError("invalid_field", wrong_role)
        return message

    @database_sync_to_async
    def add_version(self, conversation, store, *args, client_id, **kwargs):
        """Store a new version with `store` (the conversation's regenerate or edit) unless
        `client_id` names one already stored; returns (conversation, messages, is_new)."""
        earlier = Message.objects.sent_with(self.user, client_id)
        if earlier is not None:
            return earlier[0].conversation, earlier, False
        try:
            messages = store(*args, client_id=client_id, **kwargs)
        except ConversationBusy:
            raise ClientError("busy", BUSY) from None
        except SendRefused as refusal:
            raise ClientError(refusal.code, str(refusal)) from None
        except ValueError as error:
            raise ClientError("invalid_field", str(error)) from None
        return conversation, messages, True

    @database_sync_to_async
    def select_version(self, message):
        try:
            return [version.as_frame() for version in message.conversation.select(message)]
        except ConversationBusy:
            raise ClientError("busy", BUSY) from None

    @database_sync_to_async
    def stop_answer(self, message_id):
        """A stop request (chat.runtime.Runtime.request_stop): the answer's own thread, in whichever process
        generates it, saves it as cancelled and tells every tab."""
        try:
            answer = Message.objects.owned_by(self.user).filter(pk=message_id, role=Message.Role.ASSISTANT)
            message = answer.get()
            if message.is_finished:
                raise ClientError("not_running", "That answer has already finished.")
            current().request_stop(answer)
        except Message.DoesNotExist:
            raise ClientError("not_found", "No such message.") from None
        except (DatabaseError, InterfaceError):
            raise ClientError("unavailable", "The stop could not be recorded just now: press Stop again.") from None

    # --- the followed conversation's events (from chat.relay): forward only -----------------

    async def relay_event(self, event):
        if self.ended:
            return
        if self.held is not None:
            self.held.append(event)
            return
        await self.event_handlers[event["type"]](self, event)

    async def message_created(self, event):
        self.seen.setdefault(event["message"], 0)
        await self.send(text_data=event["frame"])

    async def message_status(self, event):
        await self.send(text_data=event["frame"])

    async def message_delta(self, event):
        last = self.seen.get(event["message"])
        if last is not None and event["seq"] <= last:
            return  # already part of the snapshot this socket got
        self.seen[event["message"]] = event["seq"]
        await self.send(text_data=event["frame"])

    async def message_done(self, event):
        self.seen.pop(event["message"], None)
        await self.send(text_data=event["frame"])

    event_handlers = {
        protocol.EVENT_CREATED: message_created,
        protocol.EVENT_STATUS: message_status,
        protocol.EVENT_DELTA: message_delta,
        protocol.EVENT_DONE: message_done,
    }

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
