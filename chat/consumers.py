"""The websocket consumer at /ws/chat/: checks, routes and forwards (docs/protocol.md)."""

import collections
import json
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from chat import limits, protocol, providers
from chat.models import Conversation, ConversationBusy, Message
from chat.relay import relay_for
from chat.worker import current_loop, get_worker, read_snapshot, request_stop

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


def parse_uuid(value, what="conversation"):
    if not isinstance(value, str):
        raise ClientError("invalid_field", f"`{what}` must be an id string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ClientError("not_found", f"No such {what}.") from None


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
    return text


def clean_model(content):
    model = content.get("model")
    offered = providers.model_names()
    if model is not None and model not in offered:
        raise ClientError("unknown_model", f"Unknown model; choose one of: {', '.join(offered)}.")
    return model


def clean_client_id(content):
    client_id = content.get("client_id", "")
    if not isinstance(client_id, str) or len(client_id) > 64:
        raise ClientError("invalid_field", "`client_id` must be a string of at most 64 characters.")
    return client_id


# Open sockets per user in this process: a bound per process (docs/security.md).
OPEN_SOCKETS = collections.Counter()


class ChatConsumer(AsyncWebsocketConsumer):
    counted = False  # accepted and counted in OPEN_SOCKETS; frames of a refused socket are ignored
    group = None
    account_groups = ()
    # Events of the followed conversation that arrived while its state was being read; None when
    # events go straight out.
    held = None

    async def connect(self):
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=4401)
            return
        if OPEN_SOCKETS[self.user.pk] >= settings.CHAT_MAX_SOCKETS_PER_USER:
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
        OPEN_SOCKETS[self.user.pk] += 1
        self.counted = True
        self.relay = relay_for(current_loop())
        self.group = None
        self.conversation_id = None
        # message id -> last seq this socket has, for in-flight answers of the followed conversation
        self.seen = {}
        # Logging out closes the session's sockets; deactivating an account closes all of the user's.
        self.account_groups = [protocol.user_group(self.user.pk)]
        session_key = self.scope["session"].session_key
        if session_key:
            self.account_groups.append(protocol.session_group(session_key))
        for group in self.account_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.counted:
            self.counted = False
            OPEN_SOCKETS[self.user.pk] -= 1
            if OPEN_SOCKETS[self.user.pk] <= 0:
                del OPEN_SOCKETS[self.user.pk]
        if self.group:
            await self.relay.unfollow(self.group, self)
        for group in self.account_groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    @property
    def server_url(self):
        """This server's own address as the socket reached it: where the local model is served."""
        host, port = self.scope.get("server") or ("127.0.0.1", 8000)
        if ":" in host:
            host = f"[{host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    async def receive(self, text_data=None, bytes_data=None):
        if not self.counted:
            return  # refused at connect and closing
        client_id = None
        try:
            content = self.decode(text_data, bytes_data)
            client_id = content.get("client_id") if isinstance(content.get("client_id"), str) else None
            handler = self.handlers.get(content.get("type"))
            if handler is None:
                raise ClientError("unknown_type", f"Unknown frame type {str(content.get('type'))[:50]!r}.")
            await handler(self, content)
        except ClientError as error:
            frame = {"type": protocol.ERROR, "code": error.code, "message": error.message}
            if client_id is not None:
                frame["client_id"] = client_id
            await self.send_json(frame)
        finally:
            if self.held is not None:
                await self.release_held()  # a handler that failed half way must not keep them

    @staticmethod
    def decode(text_data, bytes_data):
        if text_data is None:
            raise ClientError("invalid_frame", "Frames must be JSON text, not binary.")
        if len(text_data) > settings.CHAT_MAX_FRAME_BYTES:
            raise ClientError("frame_too_large", f"Frames are limited to {settings.CHAT_MAX_FRAME_BYTES} bytes.")
        try:
            content = json.loads(text_data)
        except ValueError:
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
        """This process's worker, once the upstream for `model` is configured and limits allow a send."""
        worker = await database_sync_to_async(get_worker)()  # the first call registers the process
        problem = worker.client_for(model, self.server_url).configuration_problem()
        if problem:
            raise ClientError("not_configured", problem)
        await self.check_limits()
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
        worker.submit(messages[-1].id, self.group, current_loop(), self.server_url)

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
    def check_limits(self):
        """The session is still valid, the send rate and today's token budget allow a send."""
        session = self.scope["session"]
        if not session.session_key or not session.exists(session.session_key):
            raise ClientError("session_expired", "Your session has ended: log in again.")
        wait = limits.send_allowed(self.user)
        if wait:
            raise ClientError("rate_limited", f"You are sending messages too fast: wait {wait} seconds.")
        budget = limits.budget_status(self.user)
        if budget["exhausted"]:
            raise ClientError(
                "quota_exceeded",
                f"You have used today's budget of {budget['budget']} tokens; it resets at midnight.",
            )

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
            snapshot = read_snapshot(message.id)
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
        """A stop request (chat.worker.request_stop): the answer's own thread, in whichever process
        generates it, saves it as cancelled and tells every tab."""
        try:
            answer = Message.objects.owned_by(self.user).filter(pk=message_id, role=Message.Role.ASSISTANT)
            message = answer.get()
            if message.is_finished:
                raise ClientError("not_running", "That answer has already finished.")
            request_stop(answer)
        except Message.DoesNotExist:
            raise ClientError("not_found", "No such message.") from None
        except (DatabaseError, InterfaceError):
            raise ClientError("unavailable", "The stop could not be recorded just now: press Stop again.") from None

    # --- the followed conversation's events (from chat.relay): forward only -----------------

    async def relay_event(self, event):
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
        """Logged out, or the account was deactivated: this socket may no longer act."""
        await self.send_json({"type": protocol.ERROR, "code": event["code"], "message": event["message"]})
        await self.close(code=4401)
