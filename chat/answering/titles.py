"""Titles the model writes: after the first answer of a conversation, a short one in its language.

Until then, and whenever this fails, the conversation is named by the first words of its first
message (Conversation.title_from). The answer's thread hands its ended answer over
(`TitleWriter.after_answer`) only once the end is saved and the tabs were told, so a title never
delays an answer; one thread of the worker's own then

- checks that the conversation still wants one (Conversation.wants_generated_title: the first
  answer, the first words still its title, not imported or copied, CHAT_GENERATED_TITLES on);
- reserves the request against the owner's budget like an answer (UsageEntryQuerySet.reserve_title),
  and gives up when the budget is spent;
- asks the conversation's model, through the same client as answers, with a small
  max_output_tokens (CHAT_TITLE_MAX_OUTPUT_TOKENS), and records what it spent in the ledger;
- stores the cleaned title unless the owner renamed meanwhile (Conversation.take_generated_title:
  a conditional UPDATE, so a rename always wins), and tells every tab of the owner through the
  channel layer on the server's event loop (DESIGN.md: never a fresh loop from a thread).

Expected failures (an upstream error, an empty answer) keep the first words and are logged; the
owner sees no error: a title is a nicety, not an answer.
"""

import asyncio
import dataclasses
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.conf import settings

from chat import protocol, providers, upstream
from chat.answering.database import reset_connections
from chat.models import TITLE_LENGTH, BudgetSpent, Message, UsageEntry

logger = logging.getLogger(__name__)

TITLE_THREAD = "answer-titles"
# What the model reads of the first message and of the first answer: enough to name them.
TITLE_INPUT_CHARACTERS = 2000
TITLE_INSTRUCTIONS = (
    "You name conversations. Reply with a title for the conversation you are shown: at most six "
    "words, in the language the user wrote in (not necessarily English), plain text, with no "
    "quotes and no full stop at the end. Reply with the title only."
)
# Quotes a model may wrap its title in, in any of the usual scripts.
QUOTES = "\"'`“”‘’«»„‚‹›「」『』"
# Ends a title should not have (questions and exclamations keep theirs).
TRAILING = ".,;:。、，；：…"
# Characters a title never keeps, read as spaces: control characters (NUL cannot be stored in
# PostgreSQL, an escape or a line feed breaks a sidebar row), lone surrogates (not text), and the
# bidirectional controls that would run the rest of a sidebar row, a page title or an admin list
# backwards (U+202E). Joiners stay: emoji sequences and Persian words need them.
UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
LABEL = re.compile(r"^(title|titre|titel|título|titolo)\s*[:：]\s*", re.IGNORECASE)


def clean_title(text):
    """The model's reply as a title: its first line without quotes, Markdown marks, a "Title:"
    label, a full stop or control characters (UNSHOWABLE), whitespace collapsed, at most
    TITLE_LENGTH characters; "" if nothing is left."""
    text = THINKING.sub("", text)
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = UNSHOWABLE.sub(" ", line)
    line = LABEL.sub("", line.strip().strip("*#_ ").strip())
    previous = None
    while previous != line:  # "**“Title.”**" peels in several passes
        previous = line
        line = line.strip().strip("*_").strip(QUOTES).rstrip(TRAILING)
    line = " ".join(line.split())
    if len(line) > TITLE_LENGTH:
        line = line[: TITLE_LENGTH - 1].rstrip() + "…"
    return line


def title_input(answer):
    """The request's input: the first message and the first answer, as one message to name."""
    question = answer.parent.text if answer.parent is not None else ""
    content = (
        "Give this conversation a title.\n\n"
        f"The user wrote:\n{question[:TITLE_INPUT_CHARACTERS]}\n\n"
        f"The assistant answered:\n{answer.text[:TITLE_INPUT_CHARACTERS]}"
    )
    return [{"type": "message", "role": "user", "content": content}]


@dataclasses.dataclass
class Reply:
    """What the upstream answered to a title request."""

    status: str = Message.Status.FAILED
    text: str = ""
    usage: upstream.Usage | None = None
    began: bool = False  # the upstream took the request: its input counts


class TitleWriter:
    """The worker's titles: one thread of their own, so that answers never wait behind one."""

    def __init__(self, worker):
        self.worker = worker
        self.closing = threading.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=TITLE_THREAD)
        self.stream = None  # the request being read, for `close`

    def close(self):
        """Give up the title being written, from any thread (shutdown): its stream is aborted, its
        retries end, and what it spent so far is recorded by its own thread."""
        self.closing.set()
        stream = self.stream
        if stream is not None:
            stream.abort()

    def after_answer(self, message, loop):
        """Queue a title for the conversation of the ended answer `message` where it may want one
        (the rest is checked on the title's thread); never blocks, never raises."""
        if not settings.CHAT_GENERATED_TITLES or message.status not in Message.SAID:
            return None
        if Message.conversation.is_cached(message) and not message.conversation.may_want_generated_title():
            # Read with the answer's end (finish_answer): most answers are not a conversation's
            # first, and the title's thread need not read them again to find that out.
            return None
        try:
            return self.pool.submit(self.write, str(message.id), loop)
        except RuntimeError:  # the worker is closing
            logger.debug("No title after answer %s: the worker is closing", message.id)
            return None

    def write(self, answer_id, loop=None):
        """Write the title after the answer `answer_id` (on the title thread, or a test's); the
        title stored, or None. Never raises."""
        try:
            reset_connections()
            return self._write(answer_id, loop)
        except Exception:
            logger.exception("The title after answer %s failed; the first words stay", answer_id)
            return None
        finally:
            reset_connections()

    def _write(self, answer_id, loop):
        answer = Message.objects.select_related("conversation", "parent").filter(pk=answer_id).first()
        if answer is None or not answer.conversation.wants_generated_title(answer):
            return None
        conversation = answer.conversation
        # The conversation's model, not the answer's: the upstream may name its model otherwise.
        provider = providers.provider_for(conversation.model)
        if provider.configuration_problem():
            return None
        input_items = title_input(answer)
        characters = len(TITLE_INSTRUCTIONS) + sum(len(item["content"]) for item in input_items)
        limit = min(filter(None, (settings.CHAT_TITLE_MAX_OUTPUT_TOKENS, provider.max_output_tokens)))
        try:
            entry = UsageEntry.objects.reserve_title(conversation, characters, limit)
        except BudgetSpent:
            logger.info("No title for conversation %s: its owner's budget is spent", conversation.pk)
            return None
        reply = self.ask(conversation.model, input_items, entry.max_output_tokens)
        UsageEntry.objects.record_title(entry, reply.status, reply.usage, len(reply.text), reply.began)
        title = clean_title(reply.text) if reply.status in Message.SAID else ""
        if not title:
            logger.info("No title for conversation %s: the model gave none (%s)", conversation.pk, reply.status)
            return None
        if not conversation.take_generated_title(title):
            logger.info("The model's title for conversation %s came after a rename; the owner's stays", conversation.pk)
            return None
        self.tell_tabs(conversation, loop)
        return title

    def ask(self, model, input_items, max_output_tokens):
        """The upstream's reply to a title request; upstream errors are a reply too."""
        reply = Reply()
        client = self.worker.client_for(model)
        try:
            stream = client.stream_response(
                model, input_items, TITLE_INSTRUCTIONS, stop_event=self.closing, max_output_tokens=max_output_tokens
            )
        except upstream.UpstreamError as error:
            logger.warning("The title request failed before its answer (%s): %s", error.code, error.message)
            return reply
        reply.began = True
        self.stream = stream
        if self.closing.is_set():
            stream.abort()  # close() came between the status line and here
        deltas = []
        try:
            for event in stream:
                if isinstance(event, upstream.TextDelta):
                    deltas.append(event.delta)
                elif isinstance(event, upstream.ResponseFinished):
                    reply.status = (
                        Message.Status(event.status) if event.status in Message.SAID else Message.Status.FAILED
                    )
                    reply.usage = event.usage
                    deltas = [event.output_text] if event.output_text else deltas
        except upstream.UpstreamError as error:
            logger.warning("The title request broke off (%s): %s", error.code, error.message)
            reply.status = Message.Status.FAILED
        finally:
            self.stream = None
        reply.text = "".join(deltas)
        return reply

    @staticmethod
    def tell_tabs(conversation, loop):
        """Every tab of the owner shows the new title: the conversation.updated a pin sends, through
        the channel layer on the server's event loop."""
        if loop is None or loop.is_closed():
            return
        event = protocol.conversation_updated_event(conversation.sidebar_item())
        sending = get_channel_layer().group_send(protocol.user_group(conversation.owner_id), event)
        try:
            asyncio.run_coroutine_threadsafe(sending, loop).result(timeout=10)
        except Exception:
            logger.warning("The tabs of conversation %s were not told of its title", conversation.pk, exc_info=True)
