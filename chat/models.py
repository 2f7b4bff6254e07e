import uuid
from collections import defaultdict
from functools import cached_property

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from chat import providers

TITLE_LENGTH = 120
INSTRUCTIONS_LENGTH = 8000


class ConversationBusy(Exception):
    """The conversation already has an answer queued or streaming."""


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)

    def search(self, user, query):
        """A user's conversations whose title or any message's text contains `query`.

        A blank query finds them all. A plain case-insensitive substring match: a full-text index
        would pay off only for far longer histories than one person's chats.
        """
        found = self.owned_by(user)
        query = query.strip()
        if query:
            matching = Message.objects.filter(text__icontains=query).values("conversation_id")
            found = found.filter(Q(title__icontains=query) | Q(pk__in=matching))
        return found

    def idle_for_update(self, conversation_id, model=None):
        """A conversation locked until the transaction ends, with no answer being written.

        Raises ConversationBusy while an answer is queued or streaming: the next answer must see
        the previous one in its input. A `model` becomes the conversation's model.
        """
        conversation = self.select_for_update().get(pk=conversation_id)
        if conversation.messages.unfinished().exists():
            raise ConversationBusy
        if model and model != conversation.model:
            conversation.model = model
            conversation.save(update_fields=["model"])
        return conversation

    @transaction.atomic
    def start_exchange_for(
        self, user, conversation_id, text, *, model=None, client_id="", worker_id=None, parent_id=None
    ):
        """Store a user's message and its queued answer, in a new or an owned conversation.

        The message follows the answer `parent_id` when given (the end of the path the person
        sees), else the conversation's current path. Returns (conversation, created,
        (user_message, answer), is_new); `is_new` is False when `client_id` names a frame already
        stored, whose messages are then returned instead of new ones. Raises
        Conversation.DoesNotExist for an unknown or another user's conversation,
        Message.DoesNotExist for a `parent_id` that is not an answer in it, and ConversationBusy
        while an answer is still being written.
        """
        earlier = Message.objects.sent_with(user, client_id)
        if earlier is not None:
            return earlier[0].conversation, False, earlier, False
        created = conversation_id is None
        if created:
            conversation = self.create(
                owner=user,
                title=Conversation.title_from(text),
                model=model or providers.default_model(),
            )
        else:
            conversation = self.owned_by(user).idle_for_update(conversation_id, model)
        parent = None
        if parent_id is not None:
            parent = conversation.messages.get(pk=parent_id, role=Message.Role.ASSISTANT)
        user_message, answer = conversation.start_exchange(text, client_id=client_id, worker_id=worker_id, after=parent)
        return conversation, created, (user_message, answer), True


class MessageTree:
    """A conversation's messages, loaded in one query, as the tree its versions make.

    A user message's parent is the answer it follows (None for a first message); an answer's
    parent is the user message it answers. Messages with the same parent and role are versions of
    one another: regenerating adds an answer beside the earlier ones, editing a user message adds
    a message beside it. A path runs from a first message down to a leaf.
    """

    def __init__(self, messages):
        self.messages = list(messages)  # by created_at, as Message.Meta.ordering has them
        self.by_id = {message.id: message for message in self.messages}
        self.children = defaultdict(list)
        for message in self.messages:
            self.children[message.parent_id].append(message)
        for message in self.messages:
            message.version_ids = [
                sibling.id for sibling in self.children[message.parent_id] if sibling.role == message.role
            ]

    def ancestors(self, message):
        """The messages before `message` on its path, first message first."""
        found = []
        parent = self.by_id.get(message.parent_id)
        while parent is not None:
            found.append(parent)
            parent = self.by_id.get(parent.parent_id)
        found.reverse()
        return found

    def newest_leaf(self, message):
        """The end of the path through `message` that follows the newest version at each step."""
        while self.children[message.id]:
            message = self.children[message.id][-1]
        return message

    def path(self, leaf):
        """The messages from the first to `leaf`'s newest leaf; [] without a leaf."""
        if leaf is None:
            return []
        leaf = self.by_id[leaf.id]
        end = self.newest_leaf(leaf)
        below = []
        while end.id != leaf.id:
            below.append(end)
            end = self.by_id[end.parent_id]
        return [*self.ancestors(leaf), leaf, *reversed(below)]


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    model = models.CharField(max_length=200)
    instructions = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    # The last message of the path the owner last saw or added to: the page shows the path to it,
    # and a new message follows it. Versions off that path stay stored (see MessageTree).
    current = models.ForeignKey("Message", models.SET_NULL, null=True, blank=True, related_name="+", editable=False)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The sidebar: one user's conversations, most recently active first.
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
        ]

    def __str__(self):
        return self.title or f"Conversation {self.id}"

    @property
    def group_name(self):
        """The channel-layer group of every socket following this conversation."""
        return f"chat.conversation.{self.id.hex}"

    @staticmethod
    def title_from(text):
        first_line = " ".join(text.split())
        if len(first_line) <= 60:
            return first_line
        return first_line[:59].rstrip() + "…"

    def as_frame(self):
        return {
            "id": str(self.id),
            "title": self.title,
            "model": self.model,
            "instructions": self.instructions,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    def touch(self):
        self.updated_at = timezone.now()
        self.save(update_fields=["updated_at"])

    def rename(self, title):
        """Give the conversation a title of the user's choosing; ValueError if it is blank."""
        title = " ".join(title.split())
        if not title:
            raise ValueError("A title cannot be empty.")
        if len(title) > TITLE_LENGTH:
            raise ValueError(f"A title can be at most {TITLE_LENGTH} characters.")
        self.title = title
        self.save(update_fields=["title"])

    def set_instructions(self, instructions):
        """The system prompt sent upstream with every later answer; ValueError if too long."""
        instructions = instructions.strip()
        if len(instructions) > INSTRUCTIONS_LENGTH:
            raise ValueError(f"Instructions can be at most {INSTRUCTIONS_LENGTH} characters.")
        self.instructions = instructions
        self.save(update_fields=["instructions"])

    @transaction.atomic
    def discard(self):
        """Delete the conversation with its messages; ConversationBusy while an answer is written.

        A worker thread generating an answer would lose its row mid-stream, so Stop comes first.
        """
        locked = Conversation.objects.select_for_update().get(pk=self.pk)
        if locked.messages.unfinished().exists():
            raise ConversationBusy
        locked.delete()

    def tree(self):
        return MessageTree(self.messages.all())

    def path(self):
        """The messages of the current path, in order, ready for as_frame()."""
        tree = self.tree()
        # Without a current message (rows saved before versions existed), the newest one ends it.
        leaf = tree.by_id.get(self.current_id) or (tree.messages[-1] if tree.messages else None)
        return tree.path(leaf)

    def upstream_input(self, before):
        """The path to `before` (exclusive) as Open Responses message items.

        Only `before`'s ancestors count: other versions are not part of what the model is
        answering. Assistant turns that produced no text (failed before the first token, queued
        and cancelled) are left out: the model never said them.
        """
        items = []
        for message in self.tree().ancestors(before):
            if not message.text:
                continue
            items.append({"type": "message", "role": message.role, "content": message.text})
        return items

    def move_to(self, leaf, *, touch=True):
        """Make the path to `leaf` the current one."""
        self.current = leaf
        fields = ["current"]
        if touch:
            self.updated_at = timezone.now()
            fields.append("updated_at")
        self.save(update_fields=fields)

    @transaction.atomic
    def start_exchange(self, text, client_id="", worker_id=None, after=None):
        """Store the user's message and the assistant's answer to come, queued on a worker.

        The message follows the answer `after`, else the end of the current path.
        """
        if after is not None:
            after_id = after.id
        else:
            after_id = self.current_id or self.messages.values_list("id", flat=True).last()
        user_message = self.messages.create(
            role=Message.Role.USER, text=text, status=Message.Status.COMPLETED, client_id=client_id, parent_id=after_id
        )
        answer = self.queue_answer(user_message, worker_id=worker_id)
        answer.version_ids = [answer.id]  # the first answer to a new message
        Message.objects.with_versions(user_message)
        return user_message, answer

    def queue_answer(self, question, client_id="", worker_id=None):
        """A queued answer to the user message `question`; the path now ends with it."""
        answer = self.messages.create(
            role=Message.Role.ASSISTANT,
            model=self.model,
            status=Message.Status.QUEUED,
            worker=worker_id,
            parent=question,
            client_id=client_id,
        )
        self.move_to(answer)
        return answer

    @transaction.atomic
    def regenerate(self, answer, *, model=None, client_id="", worker_id=None):
        """A new queued version of `answer`, beside it; the earlier one stays stored.

        Raises ConversationBusy while an answer is being written and ValueError when `answer`
        answers nothing (a row older than versions).
        """
        conversation = Conversation.objects.idle_for_update(self.pk, model)
        if answer.role != Message.Role.ASSISTANT:
            raise ValueError("Only answers can be regenerated.")
        if answer.parent_id is None:
            raise ValueError("That answer has no question to answer again.")
        question = conversation.messages.get(pk=answer.parent_id)
        new_answer = conversation.queue_answer(question, client_id=client_id, worker_id=worker_id)
        return Message.objects.with_versions(new_answer)

    @transaction.atomic
    def edit(self, message, text, *, model=None, client_id="", worker_id=None):
        """A new version of the user message `message` with `text`, beside it, and its queued answer.

        The earlier message and everything after it stay stored. Raises ConversationBusy while an
        answer is being written.
        """
        conversation = Conversation.objects.idle_for_update(self.pk, model)
        if message.role != Message.Role.USER:
            raise ValueError("Only your own messages can be edited.")
        user_message = conversation.messages.create(
            role=Message.Role.USER,
            text=text,
            status=Message.Status.COMPLETED,
            client_id=client_id,
            parent_id=message.parent_id,
        )
        answer = conversation.queue_answer(user_message, worker_id=worker_id)
        return Message.objects.with_versions(user_message, answer)

    @transaction.atomic
    def select(self, message):
        """Show the versions through `message`: the path now ends at its newest leaf.

        Returns that path. Raises ConversationBusy while an answer is being written: the answer
        being written is always on the current path, where the page can show and stop it.
        """
        conversation = Conversation.objects.idle_for_update(self.pk)
        tree = conversation.tree()
        leaf = tree.newest_leaf(tree.by_id[message.id])
        conversation.move_to(leaf, touch=False)
        self.current = leaf
        return tree.path(leaf)


class MessageQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(conversation__owner=user)

    def unfinished(self):
        return self.filter(status__in=Message.UNFINISHED)

    def request_stop(self):
        """Ask the answers among these that are still being written to stop; how many were asked.

        One UPDATE and nothing else: safe from any thread, any process and inside any transaction
        (a rolled-back one asks nothing). The process generating each answer notices the request
        (chat.worker: its maintenance loop polls its own answers' rows) and its answer thread saves
        the answer as cancelled with the text so far; chat.worker.request_stop also tells this
        process's own worker at once.
        """
        return self.unfinished().filter(stop_requested_at__isnull=True).update(stop_requested_at=timezone.now())

    def stop_requested(self):
        """Those asked to stop, or whose owner may no longer use the site.

        The owner check stops the answers of an account deactivated in any way, even by an UPDATE
        that sends no signal (a bulk admin action, raw SQL in a shell).
        """
        return self.filter(Q(stop_requested_at__isnull=False) | Q(conversation__owner__is_active=False))

    def finish_answer(self, message_id, **outcome):
        """The one place an answer's end is written: `outcome` (status, texts, usage, error,
        finished_at...) saved if the answer is still unfinished, in one transaction.

        Returns the saved message, or None when it had already ended elsewhere (reaped, or saved
        by another path). Whatever else an answer's end must record belongs here, inside the same
        transaction, so that a retried call writes all of it or nothing.
        """
        with transaction.atomic():
            saved = self.filter(pk=message_id, status__in=Message.UNFINISHED).update(**outcome)
            if not saved:
                return None
            return self.select_related("conversation").get(pk=message_id)

    def sent_with(self, user, client_id):
        """The messages a user's earlier frame with this client id stored, or None.

        A retried chat.send or chat.edit finds its user message and that message's first answer,
        a retried chat.regenerate its answer: the frame is answered, not repeated.
        """
        if not client_id:
            return None
        earlier = self.owned_by(user).filter(client_id=client_id).select_related("conversation").first()
        if earlier is None:
            return None
        messages = [earlier]
        if earlier.role == Message.Role.USER:
            answer = earlier.children.filter(role=Message.Role.ASSISTANT).order_by("created_at").first()
            if answer is not None:
                messages.append(answer)
        for message in messages:
            message.conversation = earlier.conversation
        return self.with_versions(*messages)

    def with_versions(self, *messages):
        """The messages with their versions loaded for as_frame(), which runs where the ORM may not."""
        for message in messages:
            message.version_ids = message.read_version_ids()
        return messages


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        COMPLETED = "completed"
        INCOMPLETE = "incomplete"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    UNFINISHED = (Status.QUEUED, Status.STREAMING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="messages")
    # What this message follows: a user message the answer before it (None for a first message),
    # an answer its user message. Messages with the same parent and role are versions (MessageTree).
    parent = models.ForeignKey("self", models.CASCADE, null=True, blank=True, related_name="children", editable=False)
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField(blank=True)
    reasoning = models.TextField(blank=True, help_text="The reasoning summary the model streamed.")
    refusal = models.TextField(blank=True, help_text="The model's refusal, when it refused.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED)
    # Set on user messages: a retried send with the same client id is answered, not repeated.
    client_id = models.CharField(max_length=64, blank=True)

    model = models.CharField(max_length=200, blank=True, help_text="The model the upstream used.")
    response_id = models.CharField(max_length=200, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    incomplete_reason = models.CharField(max_length=100, blank=True)

    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)

    # The server process generating this answer; used to tell live answers from orphans.
    worker = models.UUIDField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    checkpointed_at = models.DateTimeField(null=True, blank=True)
    # When someone asked for the answer to stop (Stop, the owner's deactivation), from any process:
    # the process generating it polls for this (MessageQuerySet.request_stop).
    stop_requested_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # A conversation's transcript in order.
            models.Index(fields=["conversation", "created_at"], name="message_conversation_order"),
            # The reaper's scan for answers left queued or streaming.
            models.Index(fields=["status"], name="message_status"),
        ]
        constraints = [
            # A retried chat.send finds the first one by its client id.
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=~models.Q(client_id=""),
                name="message_unique_client_id",
            )
        ]

    def __str__(self):
        return f"{self.role} message {self.id} ({self.status})"

    @property
    def is_finished(self):
        return self.status not in self.UNFINISHED

    @property
    def usage(self):
        if self.total_tokens is None and self.input_tokens is None:
            return None
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @property
    def time_to_first_token(self):
        """Seconds from the worker taking the answer to its first token, if both happened."""
        if self.started_at and self.first_token_at:
            return (self.first_token_at - self.started_at).total_seconds()
        return None

    @property
    def duration(self):
        """Seconds from the worker taking the answer to its end, if it ended."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def error(self):
        if not self.error_code and not self.error_message:
            return None
        return {"code": self.error_code, "message": self.error_message}

    @cached_property
    def version_ids(self):
        """Ids of this message's versions, itself included, oldest first.

        Set in bulk by MessageTree and MessageQuerySet.with_versions; reading it otherwise queries.
        """
        return self.read_version_ids()

    def read_version_ids(self):
        return list(
            Message.objects.filter(
                conversation_id=self.conversation_id, parent_id=self.parent_id, role=self.role
            ).values_list("id", flat=True)
        )

    @property
    def versions(self):
        """`{index, count, ids}`: where this message is among its versions (index from 0)."""
        ids = [str(version) for version in self.version_ids]
        return {"index": ids.index(str(self.id)), "count": len(ids), "ids": ids}

    def as_frame(self):
        """The message as the websocket protocol and the page describe it."""
        return {
            "id": str(self.id),
            "conversation": str(self.conversation_id),
            "parent": str(self.parent_id) if self.parent_id else None,
            "versions": self.versions,
            "role": self.role,
            "text": self.text,
            "reasoning": self.reasoning,
            "refusal": self.refusal,
            "status": self.status,
            "model": self.model,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "first_token_at": self.first_token_at.isoformat() if self.first_token_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "usage": self.usage,
            "error": self.error,
            "incomplete_reason": self.incomplete_reason,
        }

    def claim(self, worker_id):
        """Move a queued answer to streaming for one worker; False if it is no longer queued."""
        now = timezone.now()
        claimed = Message.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.STREAMING, worker=worker_id, started_at=now
        )
        if claimed:
            self.status, self.worker, self.started_at = self.Status.STREAMING, worker_id, now
        return bool(claimed)


class ServerProcess(models.Model):
    """A running server process that may generate answers; it marks itself alive periodically.

    An answer left queued or streaming whose process has stopped marking itself alive lost its
    worker (SIGKILL, power loss) and is marked interrupted by any other live process.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-last_seen_at"]
        verbose_name_plural = "server processes"

    def __str__(self):
        return f"{self.hostname}:{self.pid}"


class AuditEvent(models.Model):
    """A member of staff read or exported a transcript: who, when, which, how."""

    class Action(models.TextChoices):
        VIEWED = "viewed"
        EXPORTED = "exported"

    staff = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    staff_username = models.CharField(max_length=150, help_text="Kept if the account is deleted.")
    action = models.CharField(max_length=16, choices=Action.choices)
    conversation = models.ForeignKey(Conversation, models.SET_NULL, null=True, related_name="audit_events")
    conversation_title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    conversation_owner = models.CharField(max_length=150, blank=True)
    detail = models.CharField(max_length=200, blank=True, help_text="For exports: the format and the means.")
    at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-at"]
        indexes = [
            # "Who read this conversation?" on the transcript page.
            models.Index(fields=["conversation", "-at"], name="audit_conversation_recent"),
        ]

    def __str__(self):
        return f"{self.staff_username} {self.action} {self.conversation_title!r} at {self.at:%Y-%m-%d %H:%M}"

    @classmethod
    def record(cls, staff, action, conversations, detail=""):
        cls.objects.bulk_create(
            cls(
                staff=staff,
                staff_username=staff.get_username(),
                action=action,
                conversation=conversation,
                conversation_title=conversation.title,
                conversation_owner=conversation.owner.get_username(),
                detail=detail,
            )
            for conversation in conversations
        )


class AccountLimits(models.Model):
    """Per-user overrides of the site's limits."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, related_name="chat_limits")
    daily_token_budget = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Tokens this user may spend per day; empty uses the site default (CHAT_DAILY_TOKEN_BUDGET), "
        "0 means unlimited.",
    )

    class Meta:
        verbose_name = "chat limits"
        verbose_name_plural = "chat limits"

    def __str__(self):
        return f"Limits of {self.user}"
