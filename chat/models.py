import dataclasses
import datetime
import logging
import math
import re
import secrets
import uuid
from collections import defaultdict

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, models, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from chat import content, protocol, providers
from chat.answering import context

logger = logging.getLogger(__name__)

TITLE_LENGTH = 120
# Conversations a user may hold that have no message yet (made with instructions before the first
# message, POST /c/new/).
EMPTY_CONVERSATIONS_LIMIT = 20
INSTRUCTIONS_LENGTH = 8000


# About four characters make a token of English text for the tokenizers of common models. Used
# where the upstream reported no usage (an answer stopped, failed, or from a lenient server) and
# for the input part of a send's reservation; code and other scripts run denser, so wherever such
# a figure is shown it is marked as an estimate.
CHARS_PER_TOKEN = 4
# The send rate limit (CHAT_SENDS_PER_MINUTE) counts the sends of the last this many seconds.
SEND_RATE_WINDOW = 60
# The smallest max_output_tokens the API takes (OpenAI's floor, and the local model's): a smaller
# rest of a budget is sent as this much.
MIN_OUTPUT_TOKENS = 16
# A title request whose entry is still open after this long was lost with its process: the
# reaper records what it held (UsageEntryQuerySet.record_ended).
TITLE_ABANDONED_AFTER = datetime.timedelta(minutes=30)


def tokens_for(characters):
    return math.ceil(characters / CHARS_PER_TOKEN)


class ConversationBusy(Exception):
    """The conversation already has an answer queued or streaming."""


class WrongMessage(ValueError):
    """The message a frame names cannot take that action (regenerating a user message...)."""


class CannotContinue(Exception):
    """An answer Continue cannot go on from; `code` names the error frame, the text says why."""

    def __init__(self, code, sentence):
        super().__init__(sentence)
        self.code = code


class SendRefused(Exception):
    """A send its owner's limits do not admit now; `code` names the error frame, the text says why."""

    code = "refused"


class SendRateExceeded(SendRefused):
    code = "rate_limited"

    def __init__(self, wait):
        super().__init__(f"You are sending messages too fast: wait {wait} second{'' if wait == 1 else 's'}.")
        self.wait = wait


class BudgetSpent(SendRefused):
    code = "quota_exceeded"

    def __init__(self, budget, spent):
        if spent >= budget:
            sentence = f"You have used today's budget of {budget} tokens; it resets at midnight."
        else:
            sentence = (
                f"The answers being written may use the rest of today's budget of {budget} tokens: "
                "wait for them to finish."
            )
        super().__init__(sentence)
        self.budget = budget


# A search result's snippet: this many characters of context before and after the match.
SNIPPET_BEFORE = 40
SNIPPET_AFTER = 80


def snippet_around(text, query):
    """{before, match, after} around the first case-insensitive occurrence of `query` in `text`,
    whitespace collapsed and cuts marked with "…"; None when it does not occur (the database's
    case folding can differ from Python's)."""
    found = re.search(re.escape(query), text, re.IGNORECASE)
    if found is None:
        return None
    start, end = found.span()

    def tidy(part):
        # Runs of whitespace (line breaks among them) read as one space, kept at the edges.
        return re.sub(r"\s+", " ", part)

    before = tidy(text[max(0, start - SNIPPET_BEFORE) : start]).lstrip()
    after = tidy(text[end : end + SNIPPET_AFTER]).rstrip()
    return {
        "before": ("…" if start > SNIPPET_BEFORE else "") + before,
        "match": found.group(),
        "after": after + ("…" if end + SNIPPET_AFTER < len(text) else ""),
    }


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

    def in_sidebar(self):
        """The conversations the sidebar lists: not archived, pinned ones first (last pinned
        first), then the most recently active."""
        return self.filter(archived_at=None).order_by(F("pinned_at").desc(nulls_last=True), "-updated_at")

    def archived(self):
        return self.exclude(archived_at=None).order_by("-archived_at")

    def search_snippets(self, conversation_ids, query):
        """{conversation id: {before, match, after}}: where `query` first occurs in the messages
        of each conversation, for the sidebar's search results. One query for them all;
        conversations found by their title only have none."""
        query = query.strip()
        if not query:
            return {}
        snippets = {}
        texts = (
            Message.objects.filter(conversation_id__in=conversation_ids, text__icontains=query)
            .order_by("conversation_id", "created_at")
            .values_list("conversation_id", "text")
        )
        for conversation_id, text in texts.iterator():
            if conversation_id not in snippets:
                found = snippet_around(text, query)
                if found is not None:
                    snippets[conversation_id] = found
        return snippets

    def locked_with_tree(self, which, model=None, *, missing=None, idle=True):
        """(the conversation `which` (a Q) names, locked until the transaction ends, its
        MessageTree); `missing` (Conversation.DoesNotExist when not given) when no conversation
        matches. With `idle`, Conversation.hold_for_answer: ConversationBusy while an answer is
        queued or streaming, and a `model` becomes the conversation's model.

        The tree is read after the lock, in a statement of its own, so that it holds every
        answer committed before (under PostgreSQL's READ COMMITTED a waiting lock re-reads only
        the locked row): the verbs take the busy check, the messages they act on, the path and
        the versions' rows from it, with no query of their own.
        """
        try:
            # of=self: a conversation found through its messages locks the conversation's row only.
            conversation = self.select_for_update(of=("self",)).get(which)
        except Conversation.DoesNotExist:
            raise (missing or Conversation.DoesNotExist)() from None
        tree = conversation.tree()
        if idle:
            conversation.hold_for_answer(tree, model)
        return conversation, tree

    # --- the client's actions: one verb each (chat.consumers calls them on the database pool) --
    #
    # Each locks the owner's row and reads what admits a send (UsageEntryQuerySet.admit: the
    # idempotency check, the send rate, the budget), locks the conversation and reads its tree
    # once, writes, in one transaction, and returns frames built here: no model instance crosses
    # to the event loop. They raise Conversation.DoesNotExist or Message.DoesNotExist for what
    # is unknown or another user's, WrongMessage, ConversationBusy while an answer is being
    # written, and SendRefused when the owner's limits do not admit the send (chat/errors.py
    # names each for the client). Every verb takes the owner's lock first, then the
    # conversation's: one order for all, so that two of them never wait for each other.

    @transaction.atomic
    def send(
        self, user, conversation_id, text, *, model=None, client_id="", worker_id=None, parent_id=None, attachments=()
    ):
        """Store a user's message and its queued answer, in a new or an owned conversation.

        The message follows the answer `parent_id` when given (the end of the path the person
        sees), else the conversation's current path. `attachments` are ids of the user's unsent
        uploads (Attachment.DoesNotExist for any other).
        """
        created = conversation_id is None
        admission = UsageEntry.objects.admit(user.pk, client_id, new_conversation=created)
        if admission.replayed:
            return Stored.replayed(user, client_id)
        attached = Attachment.objects.for_message(user, attachments)
        if created:
            conversation = self.create(
                owner=user,
                # A message of files alone is named after its first file until the model names it.
                title=Conversation.title_from(text if text.strip() else attached[0].name),
                model=model or providers.default_model(),
                instructions=admission.default_instructions,
            )
            tree = MessageTree(())  # nothing to read
        else:
            conversation, tree = self.owned_by(user).locked_with_tree(Q(pk=conversation_id), model)
        parent = None
        if parent_id is not None:
            parent = tree.message(parent_id)
            if parent.role != Message.Role.ASSISTANT:
                raise Message.DoesNotExist("A message follows an answer.")
        messages = conversation.start_exchange(
            text,
            client_id=client_id,
            worker_id=worker_id,
            after=parent,
            attachments=attached,
            tree=tree,
            admission=admission,
        )
        return Stored.of(conversation, messages, created=created)

    def locked_for(self, user, message_id, role=None):
        """(the conversation of the user's message `message_id`, locked, its tree, the
        message's row in it), as `locked_with_tree` without the busy check, which the verb makes
        after its own; Message.DoesNotExist for another user's message, WrongMessage for one not
        of `role` (when given)."""
        conversation, tree = self.owned_by(user).locked_with_tree(
            Q(messages__pk=message_id), missing=Message.DoesNotExist, idle=False
        )
        message = tree.message(message_id)
        if role is not None and message.role != role:
            raise WrongMessage(WRONG_ROLE[role])
        return conversation, tree, message

    @transaction.atomic
    def regenerate(self, user, answer_id, *, model=None, client_id="", worker_id=None):
        """A new queued version of the user's answer `answer_id`, beside it."""
        admission = UsageEntry.objects.admit(user.pk, client_id)
        if admission.replayed:
            return Stored.replayed(user, client_id)
        conversation, tree, answer = self.locked_for(user, answer_id, Message.Role.ASSISTANT)
        messages = conversation.regenerate(
            answer, model=model, client_id=client_id, worker_id=worker_id, tree=tree, admission=admission
        )
        return Stored.of(conversation, messages)

    @transaction.atomic
    def continue_answer(self, user, answer_id, *, model=None, client_id="", worker_id=None):
        """A new queued version of the user's stopped or cut-short answer `answer_id`, beside it,
        that goes on from its text (Conversation.continue_answer)."""
        admission = UsageEntry.objects.admit(user.pk, client_id)
        if admission.replayed:
            return Stored.replayed(user, client_id)
        conversation, tree, answer = self.locked_for(user, answer_id)
        messages = conversation.continue_answer(
            answer, model=model, client_id=client_id, worker_id=worker_id, tree=tree, admission=admission
        )
        return Stored.of(conversation, messages)

    @transaction.atomic
    def edit(self, user, message_id, text, *, model=None, client_id="", worker_id=None, attachments=None):
        """A new version of the user's message `message_id` with `text`, and its queued answer.

        `attachments` None keeps the message's attachments; a list of ids is exactly the new
        version's: ids of the message's own attachments or of the user's unsent uploads.
        """
        admission = UsageEntry.objects.admit(user.pk, client_id)
        if admission.replayed:
            return Stored.replayed(user, client_id)
        conversation, tree, message = self.locked_for(user, message_id, Message.Role.USER)
        kept = Conversation.attachments_of([message]).get(message.id, [])
        attached = kept if attachments is None else Attachment.objects.for_message(user, attachments, kept=kept)
        stored = conversation.edit(
            message,
            text,
            model=model,
            client_id=client_id,
            worker_id=worker_id,
            attachments=attached,
            tree=tree,
            admission=admission,
        )
        return Stored.of(conversation, stored)

    @transaction.atomic
    def select(self, user, message_id):
        """Make the versions through the user's message `message_id` the current path; returns
        the `conversation.path` frame."""
        message = Message.objects.target(user, message_id)
        conversation = message.conversation
        return {
            "type": protocol.CONVERSATION_PATH,
            "conversation": str(conversation.id),
            "messages": conversation.select(message),
        }

    def locate(self, user, conversation_id):
        """Where the user's conversation is (Conversation.DoesNotExist for another user's)."""
        return Located.of(self.owned_by(user).get(pk=conversation_id))

    def start_empty(self, user, *, instructions, model=None, first_message=""):
        """A conversation with no message yet, for instructions given before the first message:
        the first answer then follows them. `first_message`, about to be sent to it, names it as
        it names a conversation a chat.send starts. ValueError when the instructions are too long
        or the model is not offered."""
        if model and model not in providers.model_names():
            raise ValueError("That model is not offered.")
        with transaction.atomic():
            # Under the user's row lock, so that parallel requests cannot all pass: a POST makes a
            # row without a send, so the send rate does not bound these; this does.
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").get()
            empty = self.owned_by(user).filter(messages__isnull=True).count()
            if empty >= EMPTY_CONVERSATIONS_LIMIT:
                raise ValueError(
                    f"You have {empty} new chats with nothing sent yet: send a message in one of them "
                    "or delete one first."
                )
            return self.create(
                owner=user,
                title=Conversation.title_from(first_message),
                model=model or providers.default_model(),
                instructions=Conversation.clean_instructions(instructions),
            )


@dataclasses.dataclass(frozen=True)
class Located:
    """A conversation a frame names, as the consumer needs it on the event loop."""

    conversation: str  # its id
    group: str  # the relay group of its sockets
    model: str

    @classmethod
    def of(cls, conversation):
        return cls(str(conversation.id), conversation.group_name, conversation.model)


@dataclasses.dataclass(frozen=True)
class Stored:
    """What a send, regenerate or edit stored, as the frames that announce it."""

    conversation_id: str
    group: str  # the relay group of the conversation's sockets
    created_conversation: dict | None  # the conversation's frame, when the send started it
    created: tuple  # the message.created relay events, in order
    answer: str | None  # the answer to generate; None when a retried frame was answered
    # What the worker claims and sends the answer with (read in the same transaction), or None.
    answer_input: "AnswerInput | None" = None

    @classmethod
    def of(cls, conversation, messages, *, created=False, replayed=False):
        # The tree the verb read under its lock, with what it stored (queue_answer); a replay's
        # versions are read.
        tree = MessageTree.versions_of(conversation, messages) if replayed else messages[-1].queued_tree
        return cls(
            conversation_id=str(conversation.id),
            group=conversation.group_name,
            created_conversation=conversation.as_frame() if created else None,
            created=tuple(protocol.created_event(frame) for frame in tree.frames(messages)),
            answer=None if replayed else str(messages[-1].id),
            # Set by the queue_answer that made it (never on a replay: that answer is not sent again).
            answer_input=None if replayed else messages[-1].queued_input,
        )

    @classmethod
    def replayed(cls, user, client_id):
        """What the user's earlier frame with this client id stored, or None.

        A retried chat.send or chat.edit finds its user message and that message's first answer,
        a retried chat.regenerate its answer: the frame is answered, not repeated.
        """
        earlier = Message.objects.sent_with(user, client_id)
        if earlier is None:
            return None
        return cls.of(earlier[0].conversation, earlier, replayed=True)


@dataclasses.dataclass(frozen=True)
class AnswerInput:
    """What an answer is sent and claimed with, as plain data: the path before it, the
    conversation's instructions, the token rate its fitting is calibrated with, and the
    max_output_tokens its reservation decided.

    The verb that queues the answer has all of it in hand in its transaction (queue_answer), so
    the worker's claim is one conditional UPDATE (MessageQuerySet.claim) and reads nothing; an
    answer queued without one in hand (submitted again, a claim retried after a lost
    connection) reads it back (MessageQuerySet.answer_input). It travels with the job through
    the event loop, hence plain values only: rows are rebuilt from them where the job runs.
    """

    message_id: str
    model: str
    instructions: str
    # [{id, role, text, attachments: [ATTACHMENT_FIELDS values]}]: the path before the answer.
    turns: list
    continuation: list  # Message.continuation_input() of the answer
    continued_text: str
    token_rate: float
    max_output_tokens: int | None = None

    # What rebuilds an attachment's row for reading its stored file, with no query.
    ATTACHMENT_FIELDS = ("id", "file", "name", "content_type", "kind")

    @classmethod
    def of(cls, conversation, answer, path, attached, token_rate, max_output_tokens=None):
        """The input of `answer`, whose `path` (its ancestors, rows) has `attached` attachments."""

        def files(message):
            return [
                {name: str(getattr(found, name)) for name in cls.ATTACHMENT_FIELDS}
                for found in attached.get(message.id, ())
            ]

        return cls(
            message_id=str(answer.id),
            model=answer.model or conversation.model,
            instructions=conversation.instructions,
            turns=[
                {"id": str(message.id), "role": message.role, "text": message.text, "attachments": files(message)}
                for message in path
            ],
            continuation=answer.continuation_input(),
            continued_text=answer.continued_text,
            token_rate=token_rate,
            max_output_tokens=max_output_tokens,
        )

    def attachments(self):
        """{turn id: its attachments} of the turns that have some, rebuilt as rows (no query)."""
        return {
            turn["id"]: [Attachment(**fields) for fields in turn["attachments"]]
            for turn in self.turns
            if turn["attachments"]
        }

    def pairs(self, attached=None, files_content=content.input_content):
        """(message id, Open Responses message item) of the path, then the continuation.

        Assistant turns that produced no text (failed before the first token, queued and
        cancelled) are left out: the model never said them. A user message with attachments
        (`attached`, by turn id; every turn's when not given) has a list of content parts: its
        text, then its files as `files_content` makes them: content.input_content reads the
        stored files (AttachmentUnreadable when it cannot), content.least_input_content reads
        none.
        """
        attached = self.attachments() if attached is None else attached
        pairs = [
            (turn["id"], self.item(turn, attached.get(turn["id"]), files_content))
            for turn in self.turns
            if turn["text"] or attached.get(turn["id"])
        ]
        # A continued answer goes on from its text so far: part of the newest turn, attributed
        # to the answer itself.
        pairs.extend((self.message_id, item) for item in self.continuation)
        return pairs

    def item(self, turn, files, files_content=content.input_content):
        """The message item of one turn of the path, its `files` made content parts."""
        parts = turn["text"]
        if files:
            # Its text (none for a message of files alone), then its files.
            text = [{"type": "input_text", "text": turn["text"]}] if turn["text"] else []
            parts = [*text, *files_content(files, self.model)]
        return {"type": "message", "role": turn["role"], "content": parts}

    def fit(self, pairs):
        """context.fit of the items of (message id, item) `pairs` to the model's context, with
        the instructions; a continued answer's own items (the text so far and the ask to go on)
        go with the question they answer."""
        follow_up = sum(message_id == self.message_id for message_id, _ in pairs)
        window = providers.provider_for(self.model).window()
        items = [item for _, item in pairs]
        return context.fit(items, self.instructions, window, self.token_rate, follow_up=follow_up)

    def characters(self):
        """The characters of text sent upstream, by the estimate: the instructions and the turns
        that fit the model's context with each file at its least. No file is read for an
        estimate (the send's transaction is no place to read a store): the files' tokens count
        through the usage the upstream reports when the answer ends."""
        return self.fit(self.pairs(files_content=content.least_input_content)).characters

    def fitted(self):
        """What is sent: (Fitted, the id of the first message sent when older ones were left
        out, else None); the input fitted to the model's context (chat/answering/context.py).
        Reads the attachments' stored files, never the database (ModelCannotRead when the
        model cannot take them).

        Fitted twice: first with each file at its least (content.least_input_content), which
        reads nothing; the turns left out then are left out whatever their files hold, and only
        the files of the turns that may be sent are read for the second fitting, of those turns.
        A long chat's old uploads are not read again for every answer."""
        attached = self.attachments()
        content.check_model_takes(self.model, [found for files in attached.values() for found in files])
        least = self.pairs(attached, content.least_input_content)
        unread = self.fit(least).dropped
        turns = {turn["id"]: turn for turn in self.turns}
        may_send = [
            (message_id, self.item(turns[message_id], attached[message_id]) if message_id in attached else item)
            for message_id, item in least[unread:]
        ]
        fitted = self.fit(may_send)
        first_sent = may_send[fitted.dropped][0] if unread + fitted.dropped and fitted.items else None
        fitted = dataclasses.replace(fitted, dropped=unread + fitted.dropped)
        if first_sent is not None:
            logger.info(
                "Answer %s is sent the newest %s of %s messages, about %s tokens, to fit %s",
                self.message_id,
                len(fitted.items),
                len(least),
                fitted.estimated_tokens,
                providers.provider_for(self.model).window(),
            )
        return fitted, first_sent


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

    def message(self, message_id):
        """This tree's row of the message `message_id`; Message.DoesNotExist when it has none."""
        try:
            return self.by_id[message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(str(message_id))]
        except (KeyError, ValueError):
            raise Message.DoesNotExist(f"No message {message_id} in this conversation.") from None

    def add(self, message):
        """`message`, just stored (the newest of its conversation), joins the tree."""
        self.messages.append(message)
        self.by_id[message.id] = message
        self.children[message.parent_id].append(message)

    @classmethod
    def versions_of(cls, conversation, messages):
        """A tree of `messages`' versions only (one query): enough for their frames."""
        parents = {message.parent_id for message in messages}
        beside = Q(parent__in=[parent for parent in parents if parent is not None])
        if None in parents:
            beside |= Q(parent__isnull=True)
        # conversation_id too: the related manager reads it on every row it returns, and a
        # deferred field is one more query per message.
        fields = ("id", "conversation_id", "parent_id", "role", "created_at")
        return cls(conversation.messages.filter(beside).only(*fields))

    def token_rate(self):
        """Tokens per character of the newest answer (any version) whose input the upstream
        counted, which chat/answering/context.py calibrates the next fitting with; the default
        without one. From the rows loaded: the send has them in hand (queue_answer)."""
        for message in reversed(self.messages):
            measured = message.input_tokens or 0, message.input_characters or 0
            if measured[0] > 0 and measured[1] >= context.MIN_CALIBRATION_CHARACTERS:
                return context.calibrated_rate(*measured)
        return context.DEFAULT_TOKENS_PER_CHARACTER

    def version_ids(self, message):
        """Ids of `message`'s versions, itself included, oldest first."""
        return [sibling.id for sibling in self.children[message.parent_id] if sibling.role == message.role]

    def frames(self, messages):
        """The frames of `messages` (of this tree's conversation), with their versions and
        attachments (one query for all of them)."""
        attached = Conversation.attachments_of(messages)
        return [message.as_frame(self.version_ids(message), attached.get(message.id, ())) for message in messages]

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
    class TitleSource(models.TextChoices):
        """Who gave the conversation its title: a model's title replaces the first words only,
        and nothing replaces a title its owner chose or one it came with."""

        FIRST_WORDS = "first_words", "the first words of the first message"
        MODEL = "model", "the model, after the first answer"
        OWNER = "owner", "the owner (renamed)"
        COPIED = "copied", "copied with it (imported, or from a shared link)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    title_source = models.CharField(
        max_length=16, choices=TitleSource.choices, default=TitleSource.FIRST_WORDS, editable=False
    )
    model = models.CharField(max_length=200)
    instructions = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    # The last message of the path the owner last saw or added to: the page shows the path to it,
    # and a new message follows it. Versions off that path stay stored (see MessageTree).
    current = models.ForeignKey("Message", models.SET_NULL, null=True, blank=True, related_name="+", editable=False)

    # The owner's organising: pinned to the top of the sidebar, or archived out of it (listed
    # under "Archived", still searchable). Never both: each clears the other.
    pinned_at = models.DateTimeField(null=True, blank=True, editable=False)
    archived_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Brought in from a file (chat/importers.py) rather than chatted here: no answer of it went
    # upstream from this site, so none is in the usage ledger. `import_key` names the source
    # conversation (its format and id, or a digest of it), so the same file imported twice adds
    # nothing the second time.
    class Source(models.TextChoices):
        CHAT = "chat", "this site's export"
        CHATGPT = "chatgpt", "ChatGPT"
        OPEN_WEBUI = "open-webui", "Open WebUI"

    imported_at = models.DateTimeField(null=True, blank=True, editable=False)
    import_source = models.CharField(max_length=16, choices=Source.choices, blank=True, editable=False)
    import_key = models.CharField(max_length=200, blank=True, editable=False)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The sidebar: one user's conversations, most recently active first.
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
        ]
        constraints = [
            # An import skips the conversations it brought in before (its index serves that lookup).
            models.UniqueConstraint(
                fields=["owner", "import_key"], condition=~Q(import_key=""), name="conversation_unique_import"
            ),
        ]

    # Transcript text: what the owner wrote or the model answered. The admin refuses lookups on
    # these fields and audits every page that shows them (chat/admin.py).
    TEXT_FIELDS = ("title", "instructions")

    def __str__(self):
        # Never the title: the admin names objects by str() on pages that are not transcripts
        # (deletion lists, history, the log of admin actions, foreign keys), and a title is the
        # first words of the first message.
        return f"Conversation {self.id}"

    @property
    def display_title(self):
        """What the owner's pages call the conversation."""
        return self.title or f"Conversation {self.id}"

    @property
    def group_name(self):
        """The relay group of every socket following this conversation (chat/relay.py)."""
        return f"chat.conversation.{self.id.hex}"

    @staticmethod
    def title_from(text):
        first_line = " ".join(text.split())
        if len(first_line) <= 60:
            return first_line
        return first_line[:59].rstrip() + "…"

    def as_frame(self):
        return protocol.conversation_frame(self)

    # The organising a change of which is sent to every tab of the owner (chat/signals.py). Not the
    # title: a title saved from an answer's worker thread would reach the channel layer from a
    # thread of its own, which the in-memory layer does not allow (DESIGN.md).
    SIDEBAR_FIELDS = frozenset({"pinned_at", "archived_at"})

    def sidebar_item(self):
        """The conversation as a sidebar row: the page, search, import and live updates use it."""
        return {
            "id": str(self.id),
            "title": self.display_title,
            "url": reverse("chat:conversation", args=[self.id]),
            "pinned": self.pinned_at is not None,
            # The sidebar orders pinned rows by it, the last pinned first.
            "pinned_at": self.pinned_at.isoformat() if self.pinned_at else None,
            "archived": self.archived_at is not None,
            "updated_at": self.updated_at.isoformat(),
        }

    def pin(self, pinned=True):
        """Pin to the top of the sidebar (which also brings it back from the archive), or unpin."""
        self.pinned_at = timezone.now() if pinned else None
        if pinned:
            self.archived_at = None
        self.save(update_fields=["pinned_at", "archived_at"])

    def archive(self, archived=True):
        """Move out of the sidebar into "Archived" (unpinning it), or restore it."""
        self.archived_at = timezone.now() if archived else None
        if archived:
            self.pinned_at = None
        self.save(update_fields=["pinned_at", "archived_at"])

    def rename(self, title):
        """Give the conversation a title of the user's choosing; ValueError if it is blank."""
        title = " ".join(title.split())
        if not title:
            raise ValueError("A title cannot be empty.")
        if len(title) > TITLE_LENGTH:
            raise ValueError(f"A title can be at most {TITLE_LENGTH} characters.")
        self.title = title
        # From now on the owner's: a title the model is writing meanwhile is not stored.
        self.title_source = Conversation.TitleSource.OWNER
        self.save(update_fields=["title", "title_source"])

    # --- a title from the model (chat/answering/titles.py) ------------------------------------

    def may_want_generated_title(self):
        """Whether the model may still name this conversation, from this row alone (see
        wants_generated_title, which also looks at its answers)."""
        return (
            settings.CHAT_GENERATED_TITLES
            and self.title_source == Conversation.TitleSource.FIRST_WORDS
            and self.imported_at is None
        )

    def wants_generated_title(self, answer):
        """Whether `answer`, just ended, is the first answer of a conversation still named by its
        first words: then the model is asked for a title. Not for imported conversations, nor
        after a later answer (an earlier one already said something)."""
        if not self.may_want_generated_title():
            return False
        if answer.role != Message.Role.ASSISTANT or not answer.text.strip():
            return False
        if answer.status not in Message.SAID:
            return False
        said_before = (
            self.messages.filter(role=Message.Role.ASSISTANT, status__in=Message.SAID)
            .exclude(pk=answer.pk)
            .exclude(text="")
        )
        return not said_before.exists()

    def take_generated_title(self, title):
        """Store the model's `title` unless the title changed hands meanwhile (a rename); True if
        stored. One conditional UPDATE, so that a rename at any moment wins; no post_save signal
        (the title's thread tells the tabs itself, through the server's event loop)."""
        stored = Conversation.objects.filter(pk=self.pk, title_source=Conversation.TitleSource.FIRST_WORDS).update(
            title=title, title_source=Conversation.TitleSource.MODEL
        )
        if stored:
            self.title, self.title_source = title, Conversation.TitleSource.MODEL
        return bool(stored)

    @staticmethod
    def clean_instructions(instructions):
        """Instructions as stored; ValueError if too long."""
        instructions = instructions.strip()
        if len(instructions) > INSTRUCTIONS_LENGTH:
            raise ValueError(f"Instructions can be at most {INSTRUCTIONS_LENGTH} characters.")
        return instructions

    def set_instructions(self, instructions):
        """The system prompt sent upstream with every later answer; ValueError if too long."""
        self.instructions = self.clean_instructions(instructions)
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
        """The messages of the current path, in order."""
        return self.current_path(self.tree())

    def current_path(self, tree):
        # Without a current message (rows saved before versions existed), the newest one ends it.
        leaf = tree.by_id.get(self.current_id) or (tree.messages[-1] if tree.messages else None)
        return tree.path(leaf)

    def path_frames(self):
        """The frames of the current path's messages, as the page and conversation.subscribed show them."""
        tree = self.tree()
        return tree.frames(self.current_path(tree))

    def answer_input(self, before, tree=None, max_output_tokens=None):
        """The AnswerInput of the answer `before` (a row of this conversation): its path, from
        `tree` (read when not given), and its attachments (one query, when it has any).

        Only `before`'s ancestors count: other versions are not part of what the model is
        answering, nor are their attachments."""
        tree = tree or self.tree()
        path = tree.ancestors(before)
        return AnswerInput.of(self, before, path, self.attachments_of(path), tree.token_rate(), max_output_tokens)

    @staticmethod
    def attachments_of(messages):
        """{message id: its attachments in order} for those of `messages` that have some."""
        return Attachment.objects.by_message(message.id for message in messages if message.attachment_count)

    def move_to(self, leaf, *, touch=True):
        """Make the path to `leaf` the current one."""
        self.current = leaf
        fields = ["current"]
        if touch:
            self.updated_at = timezone.now()
            fields.append("updated_at")
        self.save(update_fields=fields)

    def hold_for_answer(self, tree, model=None):
        """Raise ConversationBusy while an answer of `tree` (this conversation's, read under its
        lock: Conversation.objects.locked_with_tree) is queued or streaming: the next answer must
        see the previous one in its input. A `model` becomes the conversation's model."""
        if any(message.status in Message.UNFINISHED for message in tree.messages):
            raise ConversationBusy
        if model and model != self.model:
            self.model = model
            self.save(update_fields=["model"])

    def locked(self, tree, model=None):
        """(this conversation locked and idle, its tree): `tree` when the verb read it under the
        lock already, with this row, else both read now."""
        if tree is None:
            return Conversation.objects.locked_with_tree(Q(pk=self.pk), model)
        self.hold_for_answer(tree, model)
        return self, tree

    # No savepoint of its own (here and in queue_answer): inside a verb's transaction a failure
    # rolls back the whole send anyway, and each savepoint is two statements on every send.
    @transaction.atomic(savepoint=False)
    def start_exchange(self, text, client_id="", worker_id=None, after=None, attachments=(), tree=None, admission=None):
        """Store the user's message (with `attachments`, rows) and the assistant's answer to come,
        queued on a worker. `tree` is the conversation's, when the verb read it (under the lock),
        and `admission` what it read of the owner's limits (UsageEntryQuerySet.admit).

        The message follows the answer `after`, else the end of the current path.
        """
        tree = self.tree() if tree is None else tree
        if after is not None:
            after_id = after.id
        else:
            after_id = self.current_id or (tree.messages[-1].id if tree.messages else None)
        if not self.title and after_id is None:
            # Started empty (start_empty): the first message names it, as a new conversation's does.
            self.title = Conversation.title_from(text)
            self.save(update_fields=["title"])
        user_message = self.messages.create(
            role=Message.Role.USER,
            text=text,
            status=Message.Status.COMPLETED,
            client_id=client_id,
            parent_id=after_id,
            # Counted with it, so that linking its attachments writes the links only.
            attachment_count=len(attachments),
        )
        MessageAttachment.link(user_message, attachments)
        tree.add(user_message)
        answer = self.queue_answer(user_message, worker_id=worker_id, tree=tree, admission=admission)
        return user_message, answer

    @transaction.atomic(savepoint=False)
    def queue_answer(self, question, client_id="", worker_id=None, continuing=None, tree=None, admission=None):
        """A queued answer to the user message `question`; the path now ends with it. It starts
        as the text of the answer `continuing`, when given, and goes on from there. `tree` (read
        when not given) and `admission` as for start_exchange; the answer joins the tree, which
        it carries (`queued_tree`) for Stored.of's frames.

        Raises SendRateExceeded or BudgetSpent when the owner's limits do not admit it, and
        ModelCannotRead when the conversation's model cannot take an attachment the answer's
        input would carry (any on the path up to `question`); the transaction that stores the
        send then stores none of it.
        """
        tree = self.tree() if tree is None else tree
        path = [*tree.ancestors(question), question]
        attached = self.attachments_of(path)
        content.check_model_takes(self.model, [found for message in path for found in attached.get(message.id, ())])
        start = continuing.text if continuing is not None else ""
        answer = self.messages.create(
            role=Message.Role.ASSISTANT,
            model=self.model,
            status=Message.Status.QUEUED,
            worker=worker_id,
            parent=question,
            client_id=client_id,
            text=start,
            continued_length=len(start),
        )
        self.move_to(answer)
        # Built from the rows read above, for the reservation's estimate and for the worker's
        # claim (AnswerInput): neither reads the path again.
        answer_input = AnswerInput.of(self, answer, path, attached, tree.token_rate())
        entry = UsageEntry.objects.reserve(answer, self, answer_input.characters(), admission)
        answer.queued_input = dataclasses.replace(answer_input, max_output_tokens=entry.max_output_tokens)
        tree.add(answer)
        answer.queued_tree = tree
        return answer

    def input_characters(self, before):
        """The characters of text the answer `before` is sent, by the estimate (AnswerInput.characters)."""
        return self.answer_input(before).characters()

    @transaction.atomic(savepoint=False)  # inside the verb's transaction (see start_exchange)
    def regenerate(self, answer, *, model=None, client_id="", worker_id=None, tree=None, admission=None):
        """A new queued version of `answer`, beside it; the earlier one stays stored. `tree` and
        `admission` as for start_exchange.

        Raises ConversationBusy while an answer is being written and ValueError when `answer`
        answers nothing (a row older than versions).
        """
        conversation, tree = self.locked(tree, model)
        if answer.role != Message.Role.ASSISTANT:
            raise WrongMessage(WRONG_ROLE[Message.Role.ASSISTANT])
        if answer.parent_id is None:
            raise WrongMessage("That answer has no question to answer again.")
        question = tree.message(answer.parent_id)
        return [
            conversation.queue_answer(
                question, client_id=client_id, worker_id=worker_id, tree=tree, admission=admission
            )
        ]

    @transaction.atomic(savepoint=False)  # inside the verb's transaction (see start_exchange)
    def continue_answer(self, answer, *, model=None, client_id="", worker_id=None, tree=None, admission=None):
        """A new queued version of `answer`, beside it, whose text starts as `answer`'s and which
        asks the model to go on from there (Message.continuation_input); `answer` stays stored.
        `tree` and `admission` as for start_exchange.

        Only for an answer that was stopped, cut short or interrupted and has text: raises
        CannotContinue otherwise, and ConversationBusy while another answer is being written.
        """
        if answer.role != Message.Role.ASSISTANT:
            raise WrongMessage("Only answers can be continued.")
        if not answer.is_finished:
            # Told apart from a busy conversation: this very answer is the one being written.
            raise CannotContinue("not_finished", "That answer is still being written: wait for it or press Stop.")
        conversation, tree = self.locked(tree, model)
        # From the tree read under the lock: what is continued is the text as it ended.
        answer = tree.message(answer.pk)
        refusal = CONTINUE_REFUSALS.get(answer.status)
        if refusal is not None:
            raise CannotContinue("not_continuable", refusal)
        if not answer.text:
            raise CannotContinue("not_continuable", "That answer has no text to go on from: regenerate it instead.")
        if answer.parent_id is None:
            raise WrongMessage("That answer has no question to answer.")
        question = tree.message(answer.parent_id)
        queued = conversation.queue_answer(
            question, client_id=client_id, worker_id=worker_id, continuing=answer, tree=tree, admission=admission
        )
        return [queued]

    @transaction.atomic(savepoint=False)  # inside the verb's transaction (see start_exchange)
    def edit(
        self, message, text, *, model=None, client_id="", worker_id=None, attachments=(), tree=None, admission=None
    ):
        """A new version of the user message `message` with `text` and `attachments` (rows),
        beside it, and its queued answer. `tree` and `admission` as for start_exchange.

        The earlier message and everything after it stay stored. Raises ConversationBusy while an
        answer is being written.
        """
        conversation, tree = self.locked(tree, model)
        if message.role != Message.Role.USER:
            raise WrongMessage(WRONG_ROLE[Message.Role.USER])
        user_message = conversation.messages.create(
            role=Message.Role.USER,
            text=text,
            status=Message.Status.COMPLETED,
            client_id=client_id,
            parent_id=message.parent_id,
            attachment_count=len(attachments),
        )
        MessageAttachment.link(user_message, attachments)
        tree.add(user_message)
        answer = conversation.queue_answer(user_message, worker_id=worker_id, tree=tree, admission=admission)
        return [user_message, answer]

    @transaction.atomic
    def select(self, message):
        """Show the versions through `message`: the path now ends at its newest leaf.

        Returns that path's frames. Raises ConversationBusy while an answer is being written: the answer
        being written is always on the current path, where the page can show and stop it.
        """
        conversation, tree = Conversation.objects.locked_with_tree(Q(pk=self.pk))
        leaf = tree.newest_leaf(tree.by_id[message.id])
        conversation.move_to(leaf, touch=False)
        self.current = leaf
        return tree.frames(tree.path(leaf))


class MessageQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(conversation__owner=user)

    def unfinished(self):
        return self.filter(status__in=Message.UNFINISHED)

    def request_stop(self):
        """Ask the answers among these that are still being written to stop; how many were asked.

        One UPDATE and nothing else: safe from any thread, any process and inside any transaction
        (a rolled-back one asks nothing). This is the durable record: chat.runtime's request_stop
        also tells the generating process at once (its own worker, or another process over the
        relay's Redis), and that process's heartbeat finds a request whose message was lost
        (chat/answering/maintenance.py). Its answer thread saves the answer as cancelled with
        the text so far.
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

        Names from the upstream longer than their columns are left out (Message.fit). A
        `stop_requested_at` is the time this process heard of a stop: a time already on the row
        (MessageQuerySet.request_stop) stays. Returns the saved message, or None when it had
        already ended elsewhere (reaped, or saved by another path). Whatever else an answer's end
        must record belongs here, inside the same transaction, so that a retried call writes all
        of it or nothing.
        """
        fields = {
            name: Message.fit(name, value) if name in Message.FITTED else value for name, value in outcome.items()
        }
        if fields.get("stop_requested_at") is not None:
            requested_at = Value(fields["stop_requested_at"], output_field=models.DateTimeField())
            fields["stop_requested_at"] = Coalesce(F("stop_requested_at"), requested_at)
        with transaction.atomic():
            saved = self.filter(pk=message_id, status__in=Message.UNFINISHED).update(**fields)
            if not saved:
                return None
            message = self.select_related("conversation").get(pk=message_id)
            # What the answer spent, in the same transaction: an end is never saved unbilled.
            UsageEntry.objects.record(message)
            return message

    def claim(self, message_id, worker_id, sent):
        """Move the queued answer `message_id` to streaming for one worker, with what its input
        is (`sent`: AnswerInput.fitted()); the fields written, or None when it was no longer
        queued. One conditional UPDATE: what it needs was read when it was queued."""
        fitted, first_sent = sent
        fields = {
            "status": Message.Status.STREAMING,
            "worker": worker_id,
            "started_at": timezone.now(),
            "context_start": first_sent,
            "input_characters": fitted.characters,
        }
        claimed = self.filter(pk=message_id, status=Message.Status.QUEUED).update(**fields)
        return fields if claimed else None

    def answer_input(self, message_id):
        """(AnswerInput, status, worker) of the answer `message_id` read back from the database,
        for a job that has none in hand (see AnswerInput); None when it is gone."""
        message = self.select_related("conversation").filter(pk=message_id).first()
        if message is None:
            return None
        # Decided when the answer was admitted, with its reservation (UsageEntryQuerySet.reserve).
        cap = UsageEntry.objects.filter(message_id=message.id).values_list("max_output_tokens", flat=True).first()
        return message.conversation.answer_input(message, max_output_tokens=cap), message.status, message.worker

    def checkpoint(self, message_id, *, first_token_at, **texts):
        """Save the text so far of an answer being written (crash safety, bounded writes); only
        while it streams, so that a checkpoint that comes late never overwrites its end."""
        return self.filter(pk=message_id, status=Message.Status.STREAMING).update(
            checkpointed_at=timezone.now(), first_token_at=first_token_at, **texts
        )

    def checkpoint_round(self, checkpoints):
        """Save the text so far of several answers being written, as `checkpoint` does for one,
        in one transaction: `checkpoints` are (message_id, first_token_at, texts of every stream).

        The checkpointer's round (chat/answering/checkpoints.py): one fixed UPDATE, written out
        here and run with executemany for all the answers due, in place of an ORM UPDATE for
        each answer and interval that Django took ~0.9 ms to build on the benchmark machine
        (bench/answerpath.py: the checkpoints of an answer cost less than half as much now). The
        values are prepared by their fields, as the ORM prepares them.
        """
        connection = connections[self.db]
        quote = connection.ops.quote_name
        field = Message._meta.get_field
        texts_fields = [field(name) for name in protocol.STREAM_NAMES]
        written = [field("checkpointed_at"), field("first_token_at"), *texts_fields]
        sql = (
            f"UPDATE {quote(Message._meta.db_table)} SET "
            + ", ".join(f"{quote(column.column)} = %s" for column in written)
            + f" WHERE {quote(field('id').column)} = %s AND {quote(field('status').column)} = %s"
        )
        now = field("checkpointed_at").get_db_prep_save(timezone.now(), connection)
        rows = [
            [
                now,
                field("first_token_at").get_db_prep_save(first_token_at, connection),
                *(text_field.get_db_prep_save(texts[text_field.name], connection) for text_field in texts_fields),
                field("id").get_db_prep_save(message_id, connection),
                Message.Status.STREAMING.value,
            ]
            for message_id, first_token_at, texts in checkpoints
        ]
        if len(rows) == 1:  # as most rounds are, but under load: no transaction of its own
            with connection.cursor() as cursor:
                cursor.execute(sql, rows[0])
            return
        with transaction.atomic(using=self.db), connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def interrupt(self, message_id, error_code, error_message):
        """End an answer that lost its worker as interrupted, keeping its last checkpoint; the
        saved message, or None when it had ended already (see finish_answer)."""
        return self.finish_answer(
            message_id,
            status=Message.Status.INTERRUPTED,
            error_code=error_code,
            error_message=error_message,
            finished_at=timezone.now(),
        )

    def sent_with(self, user, client_id):
        """The messages a user's earlier frame with this client id stored, or None.

        (See Stored.replayed.)
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
        return messages

    def target(self, user, message_id, role=None):
        """The user's message `message_id` with its conversation, of `role` when given; another
        user's is refused like an unknown one (Message.DoesNotExist)."""
        message = self.owned_by(user).select_related("conversation").get(pk=message_id)
        if role is not None and message.role != role:
            raise WrongMessage(WRONG_ROLE[role])
        return message

    def locate(self, user, message_id, role=None):
        """Where the conversation of the user's message is (see target)."""
        return Located.of(self.target(user, message_id, role).conversation)


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
    # Ended with the model's words (all of them, or up to a limit).
    SAID = (Status.COMPLETED, Status.INCOMPLETE)
    # Transcript text (see Conversation.TEXT_FIELDS). The owner's feedback comment is their words too.
    TEXT_FIELDS = ("text", "reasoning", "refusal", "error_message", "feedback_comment")

    class Feedback(models.TextChoices):
        GOOD = "good"
        BAD = "bad"

    FEEDBACK_COMMENT_LENGTH = 2000

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
    # An answer made by Continue starts as the text of the version it continues: this many
    # characters of `text` were written by that version, and the rest by this answer.
    continued_length = models.PositiveIntegerField(
        default=0, editable=False, help_text="Characters at the start of the text that the version it continues wrote."
    )

    # What the upstream names, kept whole: proxies make long ids (LiteLLM's run to ~500
    # characters) and an id cut short is useless for support requests or previous_response_id.
    # The limits are generous bounds, not expected sizes (see Message.fit).
    UPSTREAM_NAME_LENGTH = 2048
    model = models.CharField(max_length=200, blank=True, help_text="The model the upstream used.")
    response_id = models.CharField(max_length=UPSTREAM_NAME_LENGTH, blank=True)
    error_code = models.CharField(max_length=UPSTREAM_NAME_LENGTH, blank=True)
    error_message = models.TextField(blank=True)
    incomplete_reason = models.CharField(max_length=UPSTREAM_NAME_LENGTH, blank=True)
    # The upstream's names above (and `model`), fitted to their columns when an answer ends.
    FITTED = ("model", "response_id", "error_code", "incomplete_reason")

    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The usage fields above are the upstream's own figures, or empty when it reported none.
    estimated_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Tokens this answer counts for by estimate, when the upstream reported no usage (stopped, "
        f"failed, a lenient server): the input's and the streamed text's characters / {CHARS_PER_TOKEN}.",
    )

    # The input this answer was sent, fitted to its model's context when a worker took it
    # (AnswerInput.fitted): the first message of its path sent when older ones were left
    # out (null: all of it went), where the page marks that earlier messages are not sent; and
    # the characters sent, which with the upstream's input_tokens calibrate the next fitting.
    context_start = models.UUIDField(null=True, blank=True, editable=False)
    input_characters = models.PositiveIntegerField(null=True, blank=True, editable=False)

    # The server process generating this answer; used to tell live answers from orphans.
    worker = models.UUIDField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    checkpointed_at = models.DateTimeField(null=True, blank=True)
    # When someone asked for the answer to stop (Stop, the owner's deactivation), from any process:
    # the durable record of the request, which the process generating it is also told of at once
    # (MessageQuerySet.request_stop).
    stop_requested_at = models.DateTimeField(null=True, blank=True, editable=False)

    # The owner's review of a finished answer (give_feedback): for staff reviewing transcripts.
    feedback = models.CharField(max_length=8, choices=Feedback.choices, blank=True, editable=False)
    feedback_comment = models.TextField(blank=True, editable=False)
    feedback_at = models.DateTimeField(null=True, blank=True, editable=False)

    # The files sent with a user message, in the order given. A version made by an edit shares
    # them with the message it edits (the same rows, no copies): an upload is sent once linked to
    # any message, and its file goes when the last message using it does (MessageAttachment).
    attachments = models.ManyToManyField(
        "Attachment", through="MessageAttachment", related_name="messages", blank=True, editable=False
    )
    # How many it has, set with its links (they change only with the message's deletion): most
    # messages have none, and their frames then need no query for them (MessageTree.frames).
    attachment_count = models.PositiveSmallIntegerField(default=0, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # A conversation's transcript in order.
            models.Index(fields=["conversation", "created_at"], name="message_conversation_order"),
            # The reaper's scan for answers left queued or streaming.
            models.Index(fields=["status"], name="message_status"),
            # The admin's feedback filters: the few rated answers among all of them.
            models.Index(fields=["feedback"], condition=~Q(feedback=""), name="message_rated"),
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

    @classmethod
    def fit(cls, field_name, value):
        """`value` for the column `field_name`, or "" with an error logged when it is longer than
        the column holds: a name cut short would pass for a real one."""
        limit = cls._meta.get_field(field_name).max_length
        if len(value) <= limit:
            return value
        logger.error(
            "The API's %s is %s characters long, over the %s kept; it was not stored",
            field_name.replace("_", " "),
            len(value),
            limit,
        )
        return ""

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

    @property
    def continued_text(self):
        """The text this answer started from, written by the version it continues ("" for most)."""
        return self.text[: self.continued_length]

    def continuation_input(self):
        """The input items after the path that make the model go on from `continued_text`: the
        text so far as the assistant's turn, then the ask to continue it. [] for other answers.

        Open Responses has no way to make the model resume inside its own turn, so the text so
        far is sent as a finished assistant message and the next turn asks for the rest.
        """
        if not self.continued_length:
            return []
        return [
            {"type": "message", "role": Message.Role.ASSISTANT.value, "content": self.continued_text},
            {"type": "message", "role": Message.Role.USER.value, "content": CONTINUE_REQUEST},
        ]

    def as_frame(self, version_ids, attachments=()):
        """The message as the websocket protocol and the page describe it; never queries.
        `version_ids` come from MessageTree.version_ids, `attachments` (its Attachment rows) from
        Attachment.objects.by_message (MessageTree.frames)."""
        return protocol.message_frame(self, version_ids, [attachment.message_frame() for attachment in attachments])

    @property
    def feedback_frame(self):
        """The owner's feedback as the page and the feedback endpoint give it, or None."""
        if not self.feedback:
            return None
        return {
            "rating": self.feedback,
            "comment": self.feedback_comment,
            "at": self.feedback_at.isoformat() if self.feedback_at else None,
        }

    @transaction.atomic
    def give_feedback(self, rating, comment=""):
        """Store the owner's rating ("good", "bad", or None to take it back) and comment.

        Only for a finished answer: one still being written is not yet what it will be. Raises
        ValueError otherwise. The ledger's entry gets the rating too, in the same transaction, so
        that the usage report counts it as it counts everything else: unchanged when the
        conversation is deleted later.
        """
        if self.role != Message.Role.ASSISTANT or not self.is_finished:
            raise ValueError("Only finished answers can be rated.")
        if rating is not None and rating not in Message.Feedback.values:
            raise ValueError("A rating is good, bad or none.")
        if not isinstance(comment, str) or len(comment) > Message.FEEDBACK_COMMENT_LENGTH:
            raise ValueError(f"A comment can be at most {Message.FEEDBACK_COMMENT_LENGTH} characters.")
        # A comment without a rating would say nothing the filters can find: taking the rating back
        # takes the comment with it.
        self.feedback = rating or ""
        self.feedback_comment = comment.strip() if rating else ""
        self.feedback_at = timezone.now() if rating else None
        self.save(update_fields=["feedback", "feedback_comment", "feedback_at"])
        UsageEntry.objects.filter(message_id=self.id).update(feedback=self.feedback)
        return self.feedback_frame

    def owner_budget(self):
        """The owner's daily budget as the page shows it; None once the conversation is gone.

        The message.done frame carries it, so that the composer knows at once when the answer
        spent the rest of the day's budget (see budget_status).
        """
        if Message.conversation.is_cached(self):
            # Read with the message (finish_answer's select_related): one statement fewer per answer.
            owner_id = self.conversation.owner_id
        else:
            owner_id = Conversation.objects.filter(pk=self.conversation_id).values_list("owner_id", flat=True).first()
        return None if owner_id is None else UsageEntry.objects.budget_status(owner_id)


# What the model is asked after the text so far of an answer it continues.
CONTINUE_REQUEST = (
    "Your previous answer was cut off. Continue it exactly where it stopped, from the next character: "
    "do not repeat anything already written, do not restart or summarise, and add no preamble."
)
# Why an ended answer cannot be continued, by its status; the others (incomplete, cancelled,
# interrupted) stopped short of their end and can be.
CONTINUE_REFUSALS = {
    Message.Status.COMPLETED: "That answer is complete: there is nothing to continue.",
    Message.Status.FAILED: "A failed answer cannot be continued: retry it instead.",
}

# Why a frame cannot act on a message of the other role.
WRONG_ROLE = {
    Message.Role.ASSISTANT: "Only answers can be regenerated.",
    Message.Role.USER: "Only your own messages can be edited.",
}


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
    """A member of staff saw, searched, exported or deleted transcripts: who, when, which, how.

    A row names the conversation it is about, or none for a list page: then `shown` has the ids
    of the conversations the page showed and `query` the query string that chose them (the
    search term, filters, ordering, page). Title and owner are copied, so the row outlives the
    conversation; a deleted conversation keeps exactly this record of what it was. An export from
    the command line has no staff account: `staff_username` is the name given with `--as` or the
    operating-system user, and `query` the command line.
    """

    class Action(models.TextChoices):
        VIEWED = "viewed"
        LISTED = "listed"
        SEARCHED = "searched"
        EXPORTED = "exported"
        DELETED = "deleted"
        DOWNLOADED = "downloaded"  # an attachment's file, from the transcript page

    # The title is transcript text too: the audit admin shows it only while transcripts are readable.
    TEXT_FIELDS = ("conversation_title",)

    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty for the command line, or once the account is deleted.",
    )
    staff_username = models.CharField(max_length=150, help_text="Kept if the account is deleted.")
    action = models.CharField(max_length=16, choices=Action.choices)
    conversation = models.ForeignKey(Conversation, models.SET_NULL, null=True, blank=True, related_name="audit_events")
    conversation_title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    conversation_owner = models.CharField(max_length=150, blank=True)
    detail = models.CharField(max_length=200, blank=True, help_text="Which page or means, which format.")
    query = models.TextField(
        blank=True, help_text="The page's query string (search term, filters, ordering), or the command line."
    )
    shown = models.JSONField(default=list, blank=True, help_text="Ids of the conversations a list page showed.")
    at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-at"]
        indexes = [
            # "Who read this conversation?" on the transcript page.
            models.Index(fields=["conversation", "-at"], name="audit_conversation_recent"),
            # The audit trail in the admin, newest first: a row per list page grows it quickly.
            models.Index(fields=["-at"], name="audit_recent"),
        ]

    def __str__(self):
        # No title: str() names the row on pages shown whether or not transcripts are readable.
        return f"{self.staff_username} {self.action} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def row(cls, staff, action, conversation=None, *, staff_username=None, detail="", query="", shown=()):
        """An unsaved row; `staff` may be None (the command line) when `staff_username` is given."""
        return cls(
            staff=staff,
            staff_username=(staff_username or staff.get_username())[:150],
            action=action,
            conversation=conversation,
            conversation_title=conversation.title if conversation else "",
            conversation_owner=conversation.owner.get_username() if conversation else "",
            detail=detail[:200],
            # PostgreSQL text cannot hold NUL, and a query string can carry one (%00).
            query=query.replace("\x00", ""),
            shown=[str(conversation_id) for conversation_id in shown],
        )

    @classmethod
    def record(cls, staff, action, conversations, **fields):
        """One row per conversation; with none, one row all the same, so the event is on record."""
        rows = [cls.row(staff, action, conversation, **fields) for conversation in conversations]
        return cls.objects.bulk_create(rows or [cls.row(staff, action, **fields)])


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

    @classmethod
    def budget_of(cls, user_id):
        """Tokens the user may spend per day; 0 means unlimited."""
        override = cls.objects.filter(user_id=user_id).values_list("daily_token_budget", flat=True).first()
        return override if override is not None else settings.CHAT_DAILY_TOKEN_BUDGET


class AccountSettings(models.Model):
    """What a user chose on the settings page: defaults for new chats and the theme."""

    class Theme(models.TextChoices):
        SYSTEM = "", "Follow the system"
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, related_name="chat_settings")
    default_model = models.CharField(
        max_length=200, blank=True, help_text="The model a new chat starts with; empty: the site's default."
    )
    default_instructions = models.TextField(
        blank=True, max_length=INSTRUCTIONS_LENGTH, help_text="The instructions a new chat starts with."
    )
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.SYSTEM, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Transcript-like text the owner wrote; the admin shows none of it (chat/admin.py registers no
    # admin for this model).
    TEXT_FIELDS = ("default_instructions",)

    class Meta:
        verbose_name = "chat settings"
        verbose_name_plural = "chat settings"
        ordering = ["user"]

    def __str__(self):
        return f"Settings of {self.user}"

    @classmethod
    def of(cls, user):
        """The user's settings; unsaved defaults for a user who never saved any."""
        found = cls.objects.filter(user_id=user.pk).first()
        return found if found is not None else cls(user_id=user.pk)

    @property
    def model_for_new_chats(self):
        """The default model if it is still offered, else the site's default."""
        offered = providers.model_names()
        return self.default_model if self.default_model in offered else offered[0]


def next_midnight():
    """When today ends in the site's time zone: when daily budgets start afresh."""
    tomorrow = timezone.localdate() + datetime.timedelta(days=1)
    return timezone.make_aware(datetime.datetime.combine(tomorrow, datetime.time.min))


@dataclasses.dataclass(frozen=True)
class Admission:
    """What decides whether an owner's send may go, read under the lock on the owner's row at
    the start of the send's transaction (UsageEntryQuerySet.admit): today's budget and spending,
    the send rate's window, whether the frame was a retry, the defaults of a new conversation."""

    user_id: int
    username: str
    now: datetime.datetime
    day: datetime.date
    budget: int  # tokens a day; 0: unlimited
    spent: int
    reserved: int
    # The oldest of the last CHAT_SENDS_PER_MINUTE sends within the window; None: below the limit.
    oldest_recent_send: datetime.datetime | None
    replayed: bool  # the user's earlier frame with this client id stored something
    default_instructions: str

    def check_send_rate(self):
        """Raise SendRateExceeded when the user sent CHAT_SENDS_PER_MINUTE answers in the last minute.

        A sliding window over the ledger itself, where every admitted send leaves its entry: no
        minute boundary to send twice the limit across, no counter to keep apart from the sends.
        """
        if self.oldest_recent_send is not None:
            window = datetime.timedelta(seconds=SEND_RATE_WINDOW)
            raise SendRateExceeded(max(1, math.ceil((self.oldest_recent_send + window - self.now).total_seconds())))


def sql_names(connection):
    """(table(model), column(model, field name)): the quoted names of the SQL this module writes
    out by hand, taken from the models, so that a renamed column cannot leave it behind."""
    quote = connection.ops.quote_name

    def table(model):
        return quote(model._meta.db_table)

    def column(model, name):
        return quote(model._meta.get_field(name).column)

    return table, column


def read_figures(connection, figures):
    """{name: value} of `figures` ({name: (a scalar subquery, its parameters)}), read in one SELECT."""
    names = list(figures)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + ", ".join(f"({figures[name][0]})" for name in names),
            [parameter for name in names for parameter in figures[name][1]],
        )
        return dict(zip(names, cursor.fetchone(), strict=True))


def budget_or_default(budget):
    """An owner's daily token budget as AccountLimits.budget_of gives it: theirs, else the site's."""
    return settings.CHAT_DAILY_TOKEN_BUDGET if budget is None else budget


class UsageEntryQuerySet(models.QuerySet):
    def budget_status(self, user_id):
        """Today's spending against the user's budget, for the page, the done frame and the gate.

        `used` is what answers that ended spent; `reserved` is held for answers still being
        written. `exhausted` (the composer is disabled) counts what was spent only: a tab cannot
        hear the end of another conversation's answer, and the gate refuses those sends anyway.
        """
        budget, used, reserved = self.day_figures(user_id, timezone.localdate())
        return {
            "used": used,
            "reserved": reserved,
            "budget": budget,
            "exhausted": bool(budget) and used >= budget,
            "resets_at": next_midnight().isoformat(),
            "zone": timezone.get_current_timezone_name(),
        }

    def day_figures(self, user_id, day):
        """(budget, spent, reserved) of the user on `day`: AccountLimits.budget_of(user_id) and the
        sums of the user's entries of that day (spent; reserved while unrecorded), whatever this
        queryset's filters, read in one statement.

        Every answer's end reads these for its message.done frame, and every title reservation
        under the owner's lock: written out (`_day_figures`) because Django took ~4 ms to build
        the two queries it stands for, against ~0.1 ms to run this one, on the benchmark machine
        (bench/answerpath.py). tests/test_budgets.py holds it to them.
        """
        connection = connections[self.db]
        read = read_figures(connection, self._day_figures(connection, user_id, day))
        return budget_or_default(read["budget"]), read["spent"], read["reserved"]

    def usage_by_model(self, user_id, day):
        """[{model, answers, tokens}] the user's answers of `day` spent, per model, for the settings page
        (the tokens of titles included; `answers` counts answers only)."""
        return list(
            self.filter(user_id=user_id, day=day)
            .values("model")
            .annotate(
                answers=Count("id", filter=Q(purpose=UsageEntry.Purpose.ANSWER)),
                tokens=Coalesce(Sum("total_tokens"), 0),
            )
            .order_by("model")
        )

    def reserve(self, answer, conversation, input_characters, admission=None):
        """Admit the queued `answer` against its owner's send rate and budget, and hold what it
        may cost until it ends; raises SendRateExceeded or BudgetSpent.

        Runs in the transaction that stores the answer, after locking the owner's user row: the
        sends of one user are decided one at a time, whichever thread or process they reach, so
        they cannot all pass one check on the same figures. (On SQLite, where rows are not
        locked, the site's IMMEDIATE transactions give the same order.) `admission` is what the
        verb read under that lock at its start (`admit`); without one, it is read here. The
        entry holds the input's estimate and what the answer may write: with a budget, its
        max_output_tokens, which is at most what today's spending and every other reservation
        leave of the budget (see `allowance`). So answers in parallel, and each one alone, stay
        within the budget but for what they read: their input, which is only estimated
        beforehand (`input_characters`, AnswerInput.characters()).
        """
        admission = admission or self.admit(conversation.owner_id)
        admission.check_send_rate()
        provider = providers.provider_for(answer.model)
        cap, held = self.allowance(
            admission.budget,
            admission.spent,
            admission.reserved,
            provider.max_output_tokens,
            settings.CHAT_RESERVED_ANSWER_TOKENS,
            context_tokens=provider.context_tokens,
        )
        input_tokens = tokens_for(input_characters)
        return self.create(
            user_id=admission.user_id,
            username=admission.username,
            message_id=answer.id,
            model=answer.model,
            day=admission.day,
            estimated_input_tokens=input_tokens,
            reserved_tokens=input_tokens + held,
            max_output_tokens=cap,
            created_at=admission.now,
        )

    def admit(self, user_id, client_id="", *, new_conversation=False):
        """The owner's row locked until the transaction ends (see `reserve`), and what a send's
        checks read, as an Admission: two statements, the lock and one read of the rest.

        The read is a statement of its own after the lock, not subqueries of the locking one:
        under PostgreSQL's READ COMMITTED a lock that waited re-reads the locked row only, and
        the spending another send committed meanwhile is seen by the next statement. Read
        whether the user's earlier frame with `client_id` stored something (Stored.replayed)
        and, for a `new_conversation`, the owner's default instructions, in the same read."""
        username = self._lock_owner(user_id)
        now = timezone.now()
        day = timezone.localdate(now)
        connection = connections[self.db]
        figures = self._day_figures(connection, user_id, day)
        figures.update(self._optional_figures(connection, user_id, now, client_id, new_conversation))
        read = read_figures(connection, figures)
        oldest = read.get("oldest")
        convert = getattr(connection.ops, "convert_datetimefield_value", None)  # SQLite's text, made a datetime
        if oldest is not None and convert is not None:
            oldest = convert(oldest, None, connection)
        return Admission(
            user_id=user_id,
            username=username,
            now=now,
            day=day,
            budget=budget_or_default(read["budget"]),
            spent=read["spent"],
            reserved=read["reserved"],
            oldest_recent_send=oldest,
            replayed=bool(read.get("replayed")),
            default_instructions=read.get("instructions") or "",
        )

    @staticmethod
    def _day_figures(connection, user_id, day):
        """{name: (a scalar subquery, its parameters)} of the owner's budget (None: the site's
        default) and what they spent and hold reserved on `day`, for `read_figures`.

        Written out rather than built by the ORM: compiling these subqueries cost ~40 times what
        running them does (12 ms against 0.3 ms on the benchmark machine, bench/sendpath.py), on
        every send and every answer's end. The same reads as AccountLimits.budget_of and
        UsageEntryQuerySet.spending; tests/test_budgets.py holds them to those."""
        table, column = sql_names(connection)
        today = f"FROM {table(UsageEntry)} WHERE {column(UsageEntry, 'user')} = %s AND {column(UsageEntry, 'day')} = %s"
        on_today = [user_id, connection.ops.adapt_datefield_value(day)]
        budget = column(AccountLimits, "daily_token_budget")
        return {
            "budget": (
                f"SELECT {budget} FROM {table(AccountLimits)} WHERE {column(AccountLimits, 'user')} = %s",
                [user_id],
            ),
            "spent": (f"SELECT COALESCE(SUM({column(UsageEntry, 'total_tokens')}), 0) {today}", on_today),
            "reserved": (
                f"SELECT COALESCE(SUM({column(UsageEntry, 'reserved_tokens')}), 0) {today} "
                f"AND {column(UsageEntry, 'recorded_at')} IS NULL",
                on_today,
            ),
        }

    @staticmethod
    def _optional_figures(connection, user_id, now, client_id, new_conversation):
        """The figures `admit` reads besides `_day_figures`, which only some sends need: the send
        rate's window (CHAT_SENDS_PER_MINUTE, when it is on), the replay check (with a client id:
        MessageQuerySet.sent_with) and a new conversation's instructions (AccountSettings.of);
        tests/test_model_verbs.py holds them."""
        ops, (table, column) = connection.ops, sql_names(connection)
        figures = {}
        entries, owner = table(UsageEntry), column(UsageEntry, "user")
        limit = settings.CHAT_SENDS_PER_MINUTE
        if limit:
            # The oldest of the last `limit` sends: the next send may go once it leaves the window.
            created = column(UsageEntry, "created_at")
            figures["oldest"] = (
                f"SELECT {created} FROM {entries} WHERE {owner} = %s AND {column(UsageEntry, 'purpose')} = %s "
                f"AND {created} > %s ORDER BY {created} DESC LIMIT 1 OFFSET %s",
                [
                    user_id,
                    UsageEntry.Purpose.ANSWER.value,
                    ops.adapt_datetimefield_value(now - datetime.timedelta(seconds=SEND_RATE_WINDOW)),
                    limit - 1,
                ],
            )
        if client_id:
            messages, conversations = table(Message), table(Conversation)
            joined = f"{messages}.{column(Message, 'conversation')} = {conversations}.{column(Conversation, 'id')}"
            figures["replayed"] = (
                f"EXISTS (SELECT 1 FROM {messages} JOIN {conversations} ON {joined} "
                f"WHERE {conversations}.{column(Conversation, 'owner')} = %s "
                f"AND {messages}.{column(Message, 'client_id')} = %s)",
                [user_id, client_id],
            )
        if new_conversation:
            instructions = column(AccountSettings, "default_instructions")
            figures["instructions"] = (
                f"SELECT {instructions} FROM {table(AccountSettings)} WHERE {column(AccountSettings, 'user')} = %s",
                [user_id],
            )
        return figures

    def _lock_owner(self, user_id):
        """Lock the user's row until the transaction ends (see `reserve`); their username.

        Written out, as `_day_figures` is, for what the ORM's compiling costs on every send."""
        connection, user_model = connections[self.db], get_user_model()
        features, quote, meta = connection.features, connection.ops.quote_name, user_model._meta
        lock = ""
        if features.has_select_for_no_key_update:
            # Rows that merely refer to the user (a new conversation) need not wait for the lock.
            lock = " FOR NO KEY UPDATE"
        elif features.has_select_for_update:
            lock = " FOR UPDATE"
        username = quote(meta.get_field(user_model.USERNAME_FIELD).column)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {username} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s{lock}", [user_id]
            )
            row = cursor.fetchone()
        if row is None:
            raise user_model.DoesNotExist("No such user.")
        return row[0]

    @staticmethod
    def allowance(budget, spent, reserved, limit, unbudgeted_hold, context_tokens=None):
        """(max_output_tokens to send or None, tokens to hold for the output) of a request of an
        owner with a daily `budget` (0: none) who `spent` and `reserved` that much today; raises
        BudgetSpent when nothing is left.

        Without a budget: `limit` (the model's, or None: nothing is sent), holding
        `unbudgeted_hold`. With one: the rest of the budget after today's spending and every
        reservation, at most `limit` and the model's `context_tokens` (no answer writes more than
        its context: holding a large budget's whole rest for one answer would refuse every other
        answer of the owner's while it is written), and held whole, so that parallel requests
        share the rest rather than each spend it. A rest below MIN_OUTPUT_TOKENS (the least an API
        lets a request ask for) is sent as that floor when nothing else is being written; while
        other requests hold the budget it admits nothing, since each such floor would spend past
        the budget and what they do not use comes back when they end.
        """
        if not budget:
            return limit, unbudgeted_hold
        rest = budget - spent - reserved
        if rest <= 0 or (reserved and rest < MIN_OUTPUT_TOKENS):
            raise BudgetSpent(budget, spent)
        cap = max(MIN_OUTPUT_TOKENS, min(rest, limit or rest, context_tokens or rest))
        return cap, cap

    # An entry made as `reserve` makes one, field for field: the ledger's columns, written in one
    # create() each. Kept apart from `reserve` because what decides each value differs (no send
    # rate, today rather than the answer's day, an id of its own, the title's limit and hold).
    @transaction.atomic
    def reserve_title(self, conversation, input_characters, limit):
        """Admit a title request for the conversation's owner against their budget, holding its
        input's estimate and its max_output_tokens (at most `limit`), as `reserve` holds an
        answer's; the entry, or BudgetSpent. Not against the send rate: the owner sent nothing."""
        user_id = conversation.owner_id
        username = self._lock_owner(user_id)
        now = timezone.now()
        day = timezone.localdate(now)
        cap, held = self.allowance(*self.day_figures(user_id, day), limit, limit)
        input_tokens = tokens_for(input_characters)
        return self.create(
            user_id=user_id,
            username=username,
            # A request of its own, not an answer: an id of its own (see UsageEntry.message_id).
            message_id=uuid.uuid4(),
            purpose=UsageEntry.Purpose.TITLE,
            model=conversation.model,
            day=day,
            estimated_input_tokens=input_tokens,
            reserved_tokens=input_tokens + held,
            max_output_tokens=cap,
            created_at=now,
        )

    def record_title(self, entry, status, usage=None, streamed_characters=0, began=False):
        """Write what the title request of `entry` (reserve_title's, or its id) spent, once: the
        upstream's usage (an upstream.Usage) when it reported one, else an estimate as for
        answers (its input and the text it streamed, when the upstream began); nothing when it
        never began. The entry reserve_title returned is used as it is: its estimate is never
        changed after, so it need not be read again."""
        if not isinstance(entry, UsageEntry):
            entry = self.get(pk=entry)
        entry_id = entry.pk
        estimated = False
        if usage is not None and usage.total_tokens is not None:
            input_tokens, output_tokens, total_tokens = (
                usage.input_tokens or 0,
                usage.output_tokens or 0,
                usage.total_tokens,
            )
        elif began:
            input_tokens = (
                usage.input_tokens if usage and usage.input_tokens is not None else entry.estimated_input_tokens
            )
            output_tokens = (
                usage.output_tokens if usage and usage.output_tokens is not None else tokens_for(streamed_characters)
            )
            total_tokens, estimated = input_tokens + output_tokens, True
        else:
            input_tokens = output_tokens = total_tokens = 0
        return self.filter(pk=entry_id, recorded_at=None).update(
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total_tokens,
            estimated=estimated,
            recorded_at=timezone.now(),
        )

    def record(self, message):
        """Write what the ended answer `message` spent to its entry, once.

        The upstream's usage when it reported one; otherwise an estimate, marked as one on the
        entry and on the message: the input the upstream was sent (when it began the answer) and
        the text it streamed, at CHARS_PER_TOKEN characters a token. An answer the upstream never
        began (refused before the stream, stopped while queued) costs nothing. Later calls, and
        calls for an answer still being written, change nothing.
        """
        if message.role != Message.Role.ASSISTANT or not message.is_finished:
            return
        if message.total_tokens is not None:
            # The upstream's own count needs nothing of the entry: one UPDATE, as most answers end
            # (finish_answer runs this for every answer). None updated: no entry yet, or recorded.
            reported = spending_of(message, 0)
            if self._write_spending(self.filter(message_id=message.id), message, reported, F("model")):
                return
        # No savepoint inside finish_answer's transaction (two statements per answer): a failure
        # here rolls that whole transaction back anyway, the answer's end with its record.
        with transaction.atomic(savepoint=False):
            entry = self.filter(message_id=message.id).first() or self._open_for(message)
            if entry.recorded_at is not None:
                return
            spending = spending_of(message, entry.estimated_input_tokens)
            recorded = self._write_spending(self.filter(pk=entry.pk), message, spending, entry.model)
            if recorded and spending[3]:
                message.estimated_tokens = spending[2]
                Message.objects.filter(pk=message.pk).update(estimated_tokens=spending[2])

    @staticmethod
    def _write_spending(entries, message, spending, entry_model):
        """Record `spending` (spending_of's) on those of `entries` not recorded yet; how many."""
        input_tokens, output_tokens, total_tokens, estimated = spending
        return entries.filter(recorded_at=None).update(
            status=message.status,
            model=message.model or entry_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total_tokens,
            estimated=estimated,
            recorded_at=timezone.now(),
        )

    def _open_for(self, message):
        """An entry for an answer that was never reserved (stored before the ledger existed)."""
        conversation = Conversation.objects.select_related("owner").get(pk=message.conversation_id)
        entry, _ = self.get_or_create(
            message_id=message.id,
            defaults=dict(
                user=conversation.owner,
                username=conversation.owner.get_username(),
                model=message.model or conversation.model,
                day=timezone.localdate(message.created_at),
                estimated_input_tokens=tokens_for(conversation.input_characters(before=message)),
                created_at=message.created_at,
            ),
        )
        return entry

    def record_ended(self):
        """Record the entries of answers that ended without record() (a path that forgot it, a
        database error right after the final save) and of answers deleted before they ended,
        whose reservation then stands as their estimated cost, and of title requests lost with
        their process (TITLE_ABANDONED_AFTER), whose reservation stands likewise. Run with the
        reaper."""
        # A title request names no message: it counts as gone once it cannot still be running.
        lost_titles = Q(purpose=UsageEntry.Purpose.TITLE, created_at__lt=timezone.now() - TITLE_ABANDONED_AFTER)
        open_entries = self.filter(recorded_at=None).filter(Q(purpose=UsageEntry.Purpose.ANSWER) | lost_titles)
        pending = list(open_entries.values_list("message_id", flat=True)[:1000])
        if not pending:
            return 0
        still_there = dict(Message.objects.filter(pk__in=pending).values_list("id", "status"))
        ended = [message_id for message_id, status in still_there.items() if status not in Message.UNFINISHED]
        for message in Message.objects.filter(pk__in=ended):
            self.record(message)
        gone = [message_id for message_id in pending if message_id not in still_there]
        if gone:
            self.filter(message_id__in=gone, recorded_at=None).update(
                input_tokens=F("estimated_input_tokens"),
                output_tokens=F("reserved_tokens") - F("estimated_input_tokens"),
                total_tokens=F("reserved_tokens"),
                estimated=True,
                recorded_at=timezone.now(),
            )
        return len(ended) + len(gone)


def spending_of(message, estimated_input_tokens):
    """(input, output, total tokens, estimated) that the ended answer `message` counts for."""
    if message.total_tokens is not None:
        return message.input_tokens or 0, message.output_tokens or 0, message.total_tokens, False
    # Text a continued answer started from was the earlier version's output, not this one's.
    streamed = max(0, len(message.text) - message.continued_length) + len(message.reasoning) + len(message.refusal)
    reported = message.input_tokens is not None or message.output_tokens is not None
    # A response id or a token means the upstream took the request, and read all of its input.
    began = bool(message.response_id or message.first_token_at or streamed or reported)
    if not began:
        return 0, 0, 0, False
    input_tokens = message.input_tokens if message.input_tokens is not None else estimated_input_tokens
    output_tokens = message.output_tokens if message.output_tokens is not None else tokens_for(streamed)
    return input_tokens, output_tokens, input_tokens + output_tokens, True


class UsageEntry(models.Model):
    """What one answer (or one title request) spent: the ledger that budgets and the usage report read.

    Written when the answer is queued, holding `reserved_tokens` against the owner's budget, and
    completed when it ends (`recorded_at`). A title the model writes after a first answer
    (chat/answering/titles.py) is a request of its own, with an entry of its own (`purpose`).
    Deleting the conversation, its messages or the user changes no figure here: the message is
    named by id, not referred to, and a deleted user leaves `username` (SET_NULL rather than
    PROTECT, so accounts can still be deleted).
    """

    # No index of its own: the indexes below start with the user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    username = models.CharField(max_length=150, help_text="Kept if the account is deleted.")

    class Purpose(models.TextChoices):
        ANSWER = "answer"
        TITLE = "title", "title of a conversation"

    # Not a foreign key: the entry outlives the message, and deleting that changes nothing here.
    message_id = models.UUIDField(
        unique=True, help_text="The answer; it may have been deleted since. A title request has an id of its own."
    )
    purpose = models.CharField(max_length=8, choices=Purpose.choices, default=Purpose.ANSWER)
    model = models.CharField(max_length=200, blank=True)
    day = models.DateField(help_text="The day the answer was sent, in the site's time zone.")
    status = models.CharField(
        max_length=16, choices=Message.Status.choices, blank=True, help_text="How the answer ended."
    )
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(
        default=False,
        help_text=f"The upstream reported no usage: the figures are the characters / {CHARS_PER_TOKEN}.",
    )
    estimated_input_tokens = models.PositiveIntegerField(
        default=0, help_text=f"The characters sent upstream / {CHARS_PER_TOKEN}, counted when the answer was sent."
    )
    reserved_tokens = models.PositiveIntegerField(
        default=0, help_text="Held against the budget while the answer was being written."
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most it could write, sent upstream: the rest of the budget, at most the model's limit.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    recorded_at = models.DateTimeField(null=True, blank=True, help_text="When the answer ended.")
    # A copy of Message.feedback (Message.give_feedback writes both): the report counts ratings
    # per day and model from the ledger, so deleting the conversation leaves the counts alone.
    feedback = models.CharField(
        max_length=8, choices=Message.Feedback.choices, blank=True, help_text="The owner's rating of the answer."
    )

    objects = UsageEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "usage entries"
        indexes = [
            # The budget: one user's entries of one day.
            models.Index(fields=["user", "day"], name="usage_user_day"),
            # The send rate: one user's entries of the last minute.
            models.Index(fields=["user", "created_at"], name="usage_user_recent"),
            # The usage report: every entry of a range of days.
            models.Index(fields=["day"], name="usage_day"),
            # record_ended: the answers not yet recorded.
            models.Index(fields=["recorded_at"], condition=Q(recorded_at=None), name="usage_unrecorded"),
        ]

    def __str__(self):
        return f"{self.username} {self.day} {self.model}: {self.total_tokens} tokens"


# --- Shared links -----------------------------------------------------------------------------

# Live links one conversation may have at once: each holds a copy of the path.
SHARE_LINKS_PER_CONVERSATION = 20
# secrets.token_urlsafe(32): 256 random bits, 43 characters.
SHARE_TOKEN_BYTES = 32


class TooManyShareLinks(Exception):
    """The conversation already has SHARE_LINKS_PER_CONVERSATION live links."""


class SharedConversationQuerySet(models.QuerySet):
    def live(self):
        return self.filter(revoked_at=None)

    def opened(self, token):
        """The live link with this token; SharedConversation.DoesNotExist for any other."""
        return self.live().get(token=token)

    @transaction.atomic
    def share(self, conversation):
        """A new link to a frozen copy of the conversation's current path, as it is now.

        Only what the owner's page shows of that path: no instructions, no other versions, no
        ids, no token figures. Raises ConversationBusy while an answer is being written (its text
        is not yet what it will be) and TooManyShareLinks.
        """
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if locked.messages.unfinished().exists():
            raise ConversationBusy
        if self.live().filter(conversation=locked).count() >= SHARE_LINKS_PER_CONVERSATION:
            raise TooManyShareLinks
        return self.create(
            conversation=locked,
            token=secrets.token_urlsafe(SHARE_TOKEN_BYTES),
            # The title only, never display_title: that names an untitled conversation by its id.
            title=locked.title,
            model=locked.model,
            messages=[SharedConversation.snapshot_of(message) for message in locked.path()],
        )

    def revoke(self):
        """Close these links for good; how many were live. The frozen copy is dropped with them."""
        return self.live().update(revoked_at=timezone.now(), messages=[])


class SharedConversation(models.Model):
    """A read-only snapshot of a conversation's path at one moment, opened by an unguessable token.

    Later messages are not added. Revoking it, or deleting the conversation (the rows go with it),
    makes its address a 404 like any unknown one.
    """

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="shared_links")
    # Unique: the lookup of every opening.
    token = models.CharField(max_length=64, unique=True, editable=False)
    title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    model = models.CharField(max_length=200, blank=True)
    messages = models.JSONField(default=list, blank=True, help_text="The path's messages as they were shared.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = SharedConversationQuerySet.as_manager()

    # Transcript text, and the token: whoever holds it reads the snapshot unaudited, so the admin
    # refuses lookups on it (spelling it out one character at a time) and shows only its start.
    TEXT_FIELDS = ("title", "messages", "token")
    # What a shared message keeps of its message frame: what the page renders, nothing that
    # names other rows.
    SHARED_FIELDS = ("role", "text", "reasoning", "refusal", "status", "model", "created_at", "incomplete_reason")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The owner's list of a conversation's links, newest first.
            models.Index(fields=["conversation", "-created_at"], name="shared_conversation_recent"),
        ]

    def __str__(self):
        # No title, and only the token's start: str() names the row on pages that are not audited.
        return f"Shared link {self.token_start} of conversation {self.conversation_id}"

    @property
    def token_start(self):
        return f"{self.token[:6]}…"

    @property
    def is_live(self):
        return self.revoked_at is None

    @staticmethod
    def snapshot_of(message):
        shared = protocol.fields_of(message, SharedConversation.SHARED_FIELDS)
        shared["error"] = message.error if message.status == Message.Status.FAILED else None
        return shared

    def as_frames(self):
        """The snapshot's messages as the chat's renderer takes them, numbered instead of named."""
        return [
            # Attachments are not shared: their files are their owner's alone (/uploads/ serves
            # only the owner), so a snapshot keeps the words only.
            {**message, "id": str(index), "parent": None, "versions": None, "attachments": []}
            for index, message in enumerate(self.messages, start=1)
        ]

    @transaction.atomic
    def continue_as(self, user):
        """A new conversation of `user`'s holding a copy of the snapshot, to go on chatting.

        Nothing is spent, so nothing enters the ledger: the copies are records, not answers.
        """
        first = next((shared["text"] for shared in self.messages if shared["role"] == Message.Role.USER), "")
        conversation = Conversation.objects.create(
            owner=user,
            title=(self.title or Conversation.title_from(first))[:TITLE_LENGTH],
            title_source=Conversation.TitleSource.COPIED,
            model=self.model or providers.default_model(),
        )
        parent = None
        for shared in self.messages:
            parent = conversation.messages.create(
                parent=parent,
                role=shared["role"],
                text=shared["text"],
                reasoning=shared.get("reasoning", ""),
                refusal=shared.get("refusal", ""),
                status=shared["status"],
                model=shared.get("model", ""),
                incomplete_reason=shared.get("incomplete_reason", ""),
                error_code=(shared.get("error") or {}).get("code", ""),
                error_message=(shared.get("error") or {}).get("message", ""),
                # The original times keep the order, and say when it was said.
                created_at=datetime.datetime.fromisoformat(shared["created_at"]),
            )
        if parent is not None:
            conversation.move_to(parent)
        return conversation


def transcript_text_fields():
    """The model fields that hold transcript text, across every model that copies some."""
    return {
        model._meta.get_field(name)
        for model in (Conversation, Message, AuditEvent, SharedConversation, AccountSettings, Attachment)
        for name in model.TEXT_FIELDS
    }


# --- Attachments ------------------------------------------------------------------------------


class UploadRefused(Exception):
    """An upload that is not stored; `code` and `status` make the JSON error, the text says why."""

    def __init__(self, code, status, sentence):
        super().__init__(sentence)
        self.code = code
        self.status = status


class UploadSent(Exception):
    """An upload a message took: it goes with its message or conversation, not on its own."""


# The folder of the store that holds every upload's file, and nothing else (the sweep lists it).
UPLOADS_FOLDER = "uploads"


def attachment_storage_name(attachment, filename):
    # Never the uploader's file name: it could carry path tricks, and a storage URL (a bucket's)
    # built from it would say what the file is. The id alone names the object.
    return f"{UPLOADS_FOLDER}/{attachment.id.hex}"


class AttachmentQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)

    def unsent(self):
        """Uploads linked to no message ("sent" is linked to any: versions share them)."""
        return self.exclude(Exists(MessageAttachment.objects.filter(attachment=OuterRef("pk"))))

    def stale(self, now=None):
        """Uploads never sent within CHAT_UPLOAD_UNSENT_HOURS: the sweep removes them."""
        cutoff = (now or timezone.now()) - datetime.timedelta(hours=settings.CHAT_UPLOAD_UNSENT_HOURS)
        return self.unsent().filter(created_at__lt=cutoff)

    def for_message(self, user, attachment_ids, kept=()):
        """The attachments `attachment_ids` name, in that order, for a message the user sends.

        Each must be the user's own upload not yet sent, or one of `kept` (the attachments of the
        message an edit replaces). Anything else, another user's or already sent elsewhere, raises
        Attachment.DoesNotExist exactly like an unknown id. Call inside the transaction that links
        them: the rows stay locked until it ends, so two sends cannot both take one upload.
        """
        if not attachment_ids:
            return []
        try:
            attachment_ids = [uuid.UUID(str(attachment_id)) for attachment_id in attachment_ids]
        except ValueError:
            raise Attachment.DoesNotExist("An upload id that is not one.") from None
        kept = {attachment.pk: attachment for attachment in kept}
        new_ids = [attachment_id for attachment_id in attachment_ids if attachment_id not in kept]
        # Locked first, checked second, in a statement of its own: under PostgreSQL's READ
        # COMMITTED a waiting lock re-reads the row only, so a link committed meanwhile by another
        # send is seen by the next statement, not by a subquery of the locking one.
        list(self.owned_by(user).filter(pk__in=new_ids).select_for_update().values_list("pk", flat=True))
        found = {attachment.pk: attachment for attachment in self.owned_by(user).unsent().filter(pk__in=new_ids)}
        found.update(kept)
        missing = [attachment_id for attachment_id in attachment_ids if attachment_id not in found]
        if missing:
            raise Attachment.DoesNotExist(f"No upload {missing[0]} to send.")
        return [found[attachment_id] for attachment_id in attachment_ids]

    def by_message(self, message_ids):
        """{message id: [its attachments, in their order]} for `message_ids`, in one query (none
        for no ids)."""
        message_ids = list(message_ids)
        if not message_ids:
            return {}
        links = (
            MessageAttachment.objects.filter(message_id__in=message_ids)
            .select_related("attachment")
            .order_by("message_id", "position")
        )
        found = defaultdict(list)
        for link in links:
            found[link.message_id].append(link.attachment)
        return found

    def in_conversation(self, conversation):
        """The attachments sent with any message (any version) of `conversation`."""
        return self.filter(
            Exists(MessageAttachment.objects.filter(attachment=OuterRef("pk"), message__conversation=conversation))
        )

    @transaction.atomic
    def discard(self, user, attachment_id):
        """Delete the user's upload `attachment_id` unless a message took it; raises
        Attachment.DoesNotExist for another user's or an unknown one, UploadSent for a sent one.

        The row is locked before it is checked, as a send locks it before it links it: a send and
        a discard of one upload happen one after the other, never across each other (a link
        committed between a check and a delete would be deleted with the upload, and the sent
        message would lose its file).
        """
        found = self.owned_by(user).select_for_update().get(pk=attachment_id)
        if found.links.exists():
            raise UploadSent
        found.delete()

    def delete_unused(self, attachment_ids):
        """Delete those of `attachment_ids` no message uses any more (their files after commit)."""
        return self.filter(pk__in=list(attachment_ids)).unsent().delete()[0]

    def bytes_used(self, user_id):
        return self.filter(owner_id=user_id).aggregate(used=Coalesce(Sum("size"), 0))["used"]

    SWEEP_BATCH = 100

    def sweep(self, now=None, stop=None):
        """Delete stale uploads, a batch per transaction, their stored files after each commit
        (the post_delete receiver); returns how many rows went. Ends early once the Event `stop`
        is set (a server stopping), between batches.

        Safe while other processes sweep and while a send takes an upload: each batch locks its
        rows, skipping those another transaction holds, so every row is deleted by one sweep and
        never after a message took it (a send locks an upload's row before it links it, so the
        sweep skips it or the send finds it gone; SQLite's IMMEDIATE transactions run one at a
        time). Deleting a stored file that is already gone is no error in any store, so a file
        deleted twice does no harm.
        """
        now = now or timezone.now()
        deleted = 0
        while stop is None or not stop.is_set():
            with transaction.atomic():
                batch = list(
                    self.stale(now).select_for_update(skip_locked=True).values_list("pk", flat=True)[: self.SWEEP_BATCH]
                )
                if not batch:
                    break
                _, counts = self.model.objects.filter(pk__in=batch).delete()
            went = counts.get(self.model._meta.label, 0)
            if not went:
                break
            deleted += went
        return deleted

    def store(self, user, prepared):
        """Save a checked upload (chat.attachments.Prepared) for `user`; raises UploadRefused over quota.

        The file is written first, outside any transaction (a remote store is network I/O); the
        quota is then decided with the owner's row locked, so parallel uploads are counted one at
        a time. A refused or failed row deletes the file again: nothing is left stored.
        """
        attachment = self.model(
            owner=user,
            name=prepared.name,
            content_type=prepared.content_type,
            kind=prepared.kind,
            size=prepared.content.size,
            width=prepared.width,
            height=prepared.height,
        )
        attachment.file.save(attachment_storage_name(attachment, prepared.name), prepared.content, save=False)
        try:
            with transaction.atomic():
                get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").get()
                quota = settings.CHAT_UPLOAD_QUOTA_BYTES
                used = self.bytes_used(user.pk)
                if quota and used + attachment.size > quota:
                    raise UploadRefused(
                        "quota_exceeded",
                        413,
                        f"This file would take your uploads past your storage quota of {quota} bytes "
                        f"({used} used); delete some conversations or unsent uploads first.",
                    )
                attachment.save(force_insert=True)
        except BaseException:
            attachment.file.storage.delete(attachment.file.name)
            raise
        return attachment


class Attachment(models.Model):
    """A file a user uploaded, to send with a message: an image, a PDF or a plain-text file.

    Stored through Django's storage API (MEDIA_ROOT by default, or an S3 bucket). Unsent until a message takes it
    (Message.attachments, through MessageAttachment); the versions an edit makes share it. The row
    goes when the last message using it goes (MessageAttachment's post_delete), with its owner, or
    by the sweep while unsent; its stored file once that deletion commits
    (chat.attachments.delete_stored_file).
    """

    class Kind(models.TextChoices):
        IMAGE = "image"
        FILE = "file"

    NAME_LENGTH = 200
    # Attachments one message may carry.
    PER_MESSAGE = 10
    # What the uploader called the file is theirs, like a title: transcript text (see
    # Conversation.TEXT_FIELDS); the admin shows it only on audited pages.
    TEXT_FIELDS = ("name",)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to=attachment_storage_name, max_length=255, editable=False)
    name = models.CharField(max_length=NAME_LENGTH, help_text="The file's name as the uploader gave it.")
    content_type = models.CharField(max_length=100, help_text="Decided from the content, not the name.")
    size = models.PositiveBigIntegerField(help_text="Bytes stored (images after re-encoding).")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.FILE)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = AttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # The sweep: uploads older than the cutoff (then the unsent among them, by their links).
            models.Index(fields=["created_at"], name="attachment_created"),
        ]

    def __str__(self):
        # Not the name: what a user called a file is theirs, like a conversation's title.
        return f"Attachment {self.id}"

    @property
    def is_image(self):
        return self.kind == self.Kind.IMAGE

    def as_frame(self):
        """The upload as POST /uploads/ answers it."""
        return {
            "id": str(self.id),
            "name": self.name,
            "type": self.content_type,
            "size": self.size,
            "kind": self.kind,
        }

    def open(self):
        """The stored bytes, opened for reading through the storage API (whichever store it is);
        the caller closes it."""
        return self.file.storage.open(self.file.name, "rb")

    def message_frame(self):
        """The attachment as a message's frame carries it: where its owner downloads it, and an
        image's size (for a thumbnail laid out before it loads)."""
        frame = {**self.as_frame(), "url": reverse("chat:upload_detail", args=[self.id])}
        if self.is_image:
            frame.update(width=self.width, height=self.height)
        return frame

    def read(self):
        with self.open() as stored:
            return stored.read()


class MessageAttachment(models.Model):
    """An attachment sent with a message, at its place among the message's attachments.

    A model of its own (not the many-to-many's implicit table) so that deleting a link sends
    post_delete, whatever deletes it (a message's or conversation's cascade, a queryset's
    delete()): chat.attachments.delete_unused_attachment then deletes the attachment once no
    message uses it, so no file outlives the messages it was sent with.
    """

    message = models.ForeignKey(Message, models.CASCADE, related_name="attachment_links")
    # Its index (a foreign key's) serves unsent(): is an attachment linked to any message.
    attachment = models.ForeignKey(Attachment, models.CASCADE, related_name="links")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["message", "position"]
        constraints = [
            models.UniqueConstraint(fields=["message", "attachment"], name="message_attachment_once"),
            # Its unique index also serves by_message(): a message's links in order.
            models.UniqueConstraint(fields=["message", "position"], name="message_attachment_position"),
        ]

    def __str__(self):
        return f"Attachment {self.attachment_id} of message {self.message_id}"

    @classmethod
    def link(cls, message, attachments):
        """Send `attachments` with `message`, a new one (its links are made once, with it)."""
        if not attachments:
            return
        cls.objects.bulk_create(
            cls(message=message, attachment=attachment, position=position)
            for position, attachment in enumerate(attachments)
        )
        if message.attachment_count != len(attachments):  # not counted when it was stored
            message.attachment_count = len(attachments)
            message.save(update_fields=["attachment_count"])
