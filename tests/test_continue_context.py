"""Continue and the output cap against a small model context: what the loopback upstream is sent
when the text an answer goes on from is long, and how much it may write when its input fills
most of the context.

Over the real websocket with the loopback upstream; what the model is sent is read off the
request bodies it received.
"""

import threading

import pytest

from chat.answering import context
from chat.models import CONTINUE_REQUEST, MIN_OUTPUT_TOKENS, AccountLimits, Message, UsageEntry
from tests.test_context import CONTEXT, question
from tests.test_outcomes import partial
from tests.upstream import Gate, stream, usage_object
from tests.upstream import answer as counted_answer
from tests.websocket import assert_no_groups_left, connect, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]

ROOM = CONTEXT // 4  # what the small context keeps for the answer (see small_context)
# An answer cut short after about 1,300 tokens at the conservative rate: with its question it is
# more than the 1,536 tokens of input the context holds, alone it is less.
LONG_ANSWER = "The river runs on and on. " * 150


@pytest.fixture
def small_context(settings, upstream):
    settings.CHAT_MODEL_CONTEXT = {"test-model": CONTEXT}
    settings.CHAT_ANSWER_ROOM_TOKENS = 4096  # held to a quarter of the context
    settings.CHAT_SENDS_PER_MINUTE = 0
    return upstream


def answer(deltas, **fields):
    """An answer whose upstream reports no input count: the fitting keeps its conservative rate."""
    return counted_answer(deltas, usage=usage_object(0, 5), **fields)


def contents(request):
    return [(item["role"], item["content"]) for item in request["body"]["input"]]


def estimated_input(request):
    """The request's input as the fitting estimates it, at the conservative default rate."""
    body = request["body"]
    return context.fit(body["input"], body.get("instructions", ""), context.Window(10**9, 0)).estimated_tokens


async def exchange(socket, frame):
    await socket.send_json_to(frame)
    return (await receive_until(socket, "message.done", timeout=30))[-1]


async def test_a_continued_answer_is_sent_with_its_question_and_text_so_far_even_when_they_fill_the_context(
    alice, small_context, worker
):
    """The text an answer goes on from and the question it answers are the newest turn, sent
    whole: dropping them as an old turn would ask the model to continue what it cannot see."""
    upstream = small_context
    upstream.queue(
        answer(["Short."]), answer([LONG_ANSWER], terminal="incomplete"), answer([" And on."], terminal="incomplete")
    )
    socket, _, _ = await connect(alice)
    first = await exchange(socket, {"type": "chat.send", "conversation": None, "text": question(1)})
    conversation = first["conversation"]
    cut = await exchange(socket, {"type": "chat.send", "conversation": conversation, "text": question(2)})
    assert (cut["status"], cut["text"]) == ("incomplete", LONG_ANSWER)

    done = await exchange(socket, {"type": "chat.continue", "message": cut["message"]})
    assert done["status"] == "incomplete" and done["text"] == LONG_ANSWER + " And on."
    # The older turn made room; the question, the text so far and the ask to go on all went.
    assert contents(upstream.requests[-1]) == [
        ("user", question(2)),
        ("assistant", LONG_ANSWER),
        ("user", CONTINUE_REQUEST),
    ]
    # And the answer says where its input started: at the question, not at itself.
    asked = await Message.objects.aget(conversation_id=conversation, text=question(2))
    assert done["context_start"] == str(asked.id)

    # A continuation of the continuation goes on from all of its text, with the question too.
    upstream.queue(answer([" Still on."]))
    again = await exchange(socket, {"type": "chat.continue", "message": done["message"]})
    assert again["status"] == "completed"
    assert contents(upstream.requests[-1])[0] == ("user", question(2))
    assert contents(upstream.requests[-1])[1] == ("assistant", LONG_ANSWER + " And on.")
    await socket.disconnect()
    assert_no_groups_left()


async def test_an_answer_is_never_asked_to_write_more_than_its_context_leaves_after_its_input(
    alice, small_context, worker, settings
):
    """An upstream refuses a request whose input and max_output_tokens are more than the model's
    context (vLLM answers 400): the cap sent is what the fitted input leaves of the context, with a
    budget as large as you like, without a budget under a model limit, for a send, a continue and
    a regenerate alike."""
    upstream = small_context
    settings.CHAT_MAX_OUTPUT_TOKENS = 100_000
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=1_000_000)
    upstream.queue(answer([LONG_ANSWER], terminal="incomplete"), answer([" On."]), answer(["Again."]))
    socket, _, _ = await connect(alice)
    cut = await exchange(socket, {"type": "chat.send", "conversation": None, "text": question(1)})
    continued = await exchange(socket, {"type": "chat.continue", "message": cut["message"]})
    regenerated = await exchange(socket, {"type": "chat.regenerate", "message": continued["message"]})
    assert [cut["status"], continued["status"], regenerated["status"]] == ["incomplete", "completed", "completed"]
    for request in upstream.requests:
        cap = request["body"]["max_output_tokens"]
        assert MIN_OUTPUT_TOKENS <= cap <= CONTEXT - estimated_input(request), request["body"]
    # A short input leaves most of the context: the cap is not held to the answer's room alone.
    assert upstream.requests[0]["body"]["max_output_tokens"] > ROOM
    # The continuation read much more than the first send: it may write that much less.
    assert upstream.requests[1]["body"]["max_output_tokens"] < upstream.requests[0]["body"]["max_output_tokens"]

    # Without a budget, a site limit larger than the context is held to it the same way.
    await AccountLimits.objects.filter(user=alice).adelete()
    upstream.queue(answer(["Fine."]))
    done = await exchange(socket, {"type": "chat.continue", "message": cut["message"]})
    assert done["status"] == "completed"
    cap = upstream.requests[-1]["body"]["max_output_tokens"]
    assert MIN_OUTPUT_TOKENS <= cap <= CONTEXT - estimated_input(upstream.requests[-1])
    await socket.disconnect()
    assert_no_groups_left()


@pytest.mark.worker_threads(4)
async def test_with_a_large_budget_an_answer_holds_no_more_than_its_context_and_another_may_start(
    alice, small_context, worker
):
    """An answer that held a large budget's whole rest would refuse every other send of its
    owner's, in any tab or conversation, until it ended: it holds what it can write, its context
    at most, and the rest stays for the others."""
    upstream = small_context
    await AccountLimits.objects.acreate(user=alice, daily_token_budget=1_000_000)
    gate = threading.Event()
    upstream.queue(stream(*partial(["First"]), Gate(gate)), answer(["Second."]))
    first, _, _ = await connect(alice)
    second, _, _ = await connect(alice)
    await first.send_json_to({"type": "chat.send", "conversation": None, "text": "One"})
    frames = await receive_until(first, "message.delta", timeout=30)  # the first answer is being written
    held = await UsageEntry.objects.aget(message_id=frames[-1]["message"])
    assert held.recorded_at is None
    assert held.max_output_tokens <= CONTEXT and held.reserved_tokens <= CONTEXT + held.estimated_input_tokens
    # Another tab, another conversation: admitted while the first is written.
    done = await exchange(second, {"type": "chat.send", "conversation": None, "text": "Two"})
    assert done["status"] == "completed" and done["text"] == "Second."
    await first.send_json_to({"type": "chat.stop", "message": frames[-1]["message"]})
    assert (await receive_until(first, "message.done", timeout=30))[-1]["status"] == "cancelled"
    gate.set()
    for socket in (first, second):
        await socket.disconnect()
    assert_no_groups_left()
