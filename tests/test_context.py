"""Long conversations fit the model: what the loopback upstream receives once a conversation is
longer than its model's context, how the upstream's own count changes that, and where the page
learns that earlier messages were not sent (frames, a reload)."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat import providers
from chat.answering import context
from chat.models import Conversation, Message
from tests.upstream import answer, usage_object
from tests.websocket import assert_no_groups_left, connect, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]

# 2,048 tokens with 512 kept for the answer: 1,536 for the input.
CONTEXT = 2048
LONG = 1200  # characters of each message sent: a few of them fill the context


@pytest.fixture
def small_context(settings, upstream):
    settings.CHAT_MODEL_CONTEXT = {"test-model": CONTEXT}
    settings.CHAT_ANSWER_ROOM_TOKENS = 4096  # held to a quarter of the context: 512
    return upstream


def question(number):
    """A long message that says which it is at its start."""
    head = f"Question {number}: "
    return head + "lorem ipsum dolor sit amet " * ((LONG - len(head)) // 27)


def counted(tokens_per_character):
    """An upstream answer reporting the input it was sent as this many tokens per character."""

    def scenario(body):
        characters = len(body.get("instructions", "")) + sum(len(item["content"]) for item in body["input"])
        input_tokens = round(characters * tokens_per_character) + context.REQUEST_TOKENS
        return answer(["Noted."], usage=usage_object(input_tokens, 2))

    return scenario


async def converse(communicator, texts, conversation=None, model=None):
    """Send `texts` one after another in one conversation; each send's message.done and the
    frames before it."""
    exchanges = []
    for text in texts:
        frame = {"type": "chat.send", "conversation": conversation, "text": text}
        if model:
            frame["model"] = model
        await communicator.send_json_to(frame)
        frames = await receive_until(communicator, "message.done", timeout=30)
        assert frames[-1]["status"] == "completed", frames[-1]
        conversation = frames[-1]["conversation"]
        exchanges.append(frames)
    return conversation, exchanges


@database_sync_to_async
def instruct(conversation_id, instructions):
    Conversation.objects.get(pk=conversation_id).set_instructions(instructions)


@database_sync_to_async
def page_data(user, conversation_id):
    """What the conversation's page starts with, as a reload gets it."""
    client = Client()
    client.force_login(user)
    html = client.get(f"/c/{conversation_id}/").content.decode()
    return json.loads(html.split('id="page-data" type="application/json">')[1].split("</script>")[0])


def sent(upstream, index=-1):
    return upstream.requests[index]["body"]


def contents(body):
    return [item["content"] for item in body["input"]]


async def test_the_oldest_turns_are_dropped_whole_and_the_instructions_and_newest_kept(alice, small_context, worker):
    upstream = small_context
    upstream.queue(*[counted(1 / 4)] * 6)
    communicator, _, _ = await connect(alice)
    conversation, _ = await converse(communicator, [question(1)])
    await instruct(conversation, "Answer in one line.")
    _, exchanges = await converse(communicator, [question(n) for n in range(2, 7)], conversation)

    # Each message is whole when it is sent at all; the newest turns, the instructions always.
    questions = [question(n) for n in range(1, 7)]
    for body in (sent(upstream, index) for index in range(6)):
        assert all(text in questions or text == "Noted." for text in contents(body))
    last = sent(upstream)
    assert last["instructions"] == "Answer in one line."
    assert contents(last)[-1] == question(6), "the message answered is always sent"
    assert contents(last)[0].startswith("Question "), "what is sent starts with a question, never a lone answer"
    assert question(1) not in contents(last), "the oldest turn is left out"
    kept = [text for text in contents(last) if text != "Noted."]
    assert kept == questions[-len(kept) :] and len(kept) < 6, "a contiguous run of the newest turns"
    assert "truncation" not in last, "test-model is not configured to take truncation"

    # The answer records where its input started: in message.status when it streams, and in
    # message.done, as the id of the first message sent.
    frames = exchanges[-1]
    first_sent = await Message.objects.aget(conversation_id=conversation, role="user", text=contents(last)[0])
    streaming = next(f for f in frames if f["type"] == "message.status" and f["status"] == "streaming")
    assert streaming["context_start"] == frames[-1]["context_start"] == str(first_sent.id)
    # The first answers went whole.
    first_status = next(f for f in exchanges[0] if f["type"] == "message.status")
    assert first_status["context_start"] is None and exchanges[0][-1]["context_start"] is None
    await communicator.disconnect()

    # After a reload, and to a socket that subscribes, the same message is marked.
    page = await page_data(alice, conversation)
    answers = [m for m in page["messages"] if m["role"] == "assistant"]
    assert answers[-1]["context_start"] == str(first_sent.id)
    assert answers[0]["context_start"] is None
    assert page["model_contexts"]["test-model"] == CONTEXT
    follower, _, _ = await connect(alice)
    await follower.send_json_to({"type": "chat.subscribe", "conversation": conversation})
    subscribed = (await receive_until(follower, "conversation.subscribed"))[-1]
    assert subscribed["messages"][-1]["context_start"] == str(first_sent.id)
    await follower.disconnect()
    assert_no_groups_left()


async def test_the_upstreams_count_of_the_last_input_decides_what_is_dropped(alice, small_context, worker):
    """Two conversations of the same messages: one whose upstream counts about 4 characters a
    token (English prose), one about 1 (a dense script). The second leaves out more."""
    upstream = small_context
    communicator, _, _ = await connect(alice)
    upstream.queue(*[counted(1 / 4)] * 3)
    await converse(communicator, [question(n) for n in range(1, 4)])
    sparse = sent(upstream)
    upstream.queue(*[counted(1.0)] * 3)
    await converse(communicator, [question(n) for n in range(1, 4)])
    dense = sent(upstream)
    # Uncounted (a lenient server): the conservative default, which sends these three whole.
    upstream.queue(*[answer(["Noted."], usage={})] * 3)
    await converse(communicator, [question(n) for n in range(1, 4)])
    uncounted = sent(upstream)
    everything = [question(1), "Noted.", question(2), "Noted.", question(3)]
    assert contents(uncounted) == contents(sparse) == everything
    assert contents(dense) == [question(3)], "the dense count left the older turns out"
    assert contents(sent(upstream, 4)) == [question(2)], "from the first count on"
    await communicator.disconnect()


async def test_an_answer_the_upstream_did_not_count_leaves_the_rate_as_it_was(alice, small_context, worker):
    upstream = small_context
    communicator, _, _ = await connect(alice)
    upstream.queue(counted(1.0), answer(["Noted."], usage={}), answer(["Noted."], usage={}))
    await converse(communicator, [question(n) for n in range(1, 4)])
    # The dense count of the first answer still holds: the uncounted second did not reset it.
    assert contents(sent(upstream)) == [question(3)]
    await communicator.disconnect()


async def test_truncation_auto_is_sent_only_to_models_configured_to_take_it(alice, upstream, worker, settings):
    settings.CHAT_TRUNCATION_MODELS = ["other-model"]
    communicator, _, _ = await connect(alice)
    await converse(communicator, ["Hello"], model="test-model")
    assert "truncation" not in sent(upstream)
    await converse(communicator, ["Hello"], model="other-model")
    assert sent(upstream)["truncation"] == "auto"
    settings.CHAT_TRUNCATION_MODELS = ["*"]
    await converse(communicator, ["Hello"], model="test-model")
    assert sent(upstream)["truncation"] == "auto"
    # The local model's endpoint refuses "auto": it is never configured to take it.
    assert providers.local().truncation is False
    await communicator.disconnect()


async def test_a_models_context_size_comes_from_its_setting_or_the_default(upstream, settings):
    """The sizes the fitting above used: configured, the default, the local model's."""
    settings.CHAT_MODEL_CONTEXT = {"test-model": 8192}
    settings.CHAT_DEFAULT_MODEL_CONTEXT = 16_384
    settings.CHAT_ANSWER_ROOM_TOKENS = 1000
    assert providers.provider_for("test-model").window() == context.Window(8192, 1000)
    assert providers.provider_for("other-model").window() == context.Window(16_384, 1000)
    settings.LOCAL_MODEL_CONTEXT = 2048
    assert providers.local().window() == context.Window(2048, 512), "a quarter of a small context at most"
