"""One answer cannot overshoot the daily budget by more than what it reads: its max_output_tokens is
at most the rest of the budget (and at most the model's limit), decided with its reservation when
it is admitted (UsageEntryQuerySet.reserve), so that answers in parallel share the rest.

Through the real path: websockets through the ASGI app, the worker, the loopback upstream, whose
recorded request bodies show what was asked.
"""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat import limits, providers
from chat.models import MIN_OUTPUT_TOKENS, AccountLimits, Message, UsageEntry
from tests.factories import conversation_with_answer
from tests.upstream import answer, usage_object
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


async def spend(user, budget, spent):
    """A budget of `budget` with `spent` of it used today by an earlier answer."""
    await AccountLimits.objects.acreate(user=user, daily_token_budget=budget)
    return await database_sync_to_async(conversation_with_answer)(user, "Earlier", "Yes.", tokens=(spent - 1, 1))


async def outcome(socket):
    """The error refusing this socket's send, or the message.done of the answer it started."""
    while True:
        frame = await receive(socket, timeout=20)
        if frame["type"] in ("error", "message.done"):
            return frame


@pytest.mark.asyncio
async def test_an_answer_may_write_at_most_the_rest_of_the_budget_and_ends_incomplete_at_it(alice, upstream, worker):
    earlier = await spend(alice, 100, 60)
    upstream.queue(answer(["Cut ", "short"], terminal="incomplete", usage=usage_object(12, 40)))
    socket, _, _ = await connect(alice)
    await socket.send_json_to({"type": "chat.send", "conversation": None, "text": "Tell me everything."})
    done = (await receive_until(socket, "message.done", timeout=15))[-1]
    [request] = upstream.requests
    assert request["body"]["max_output_tokens"] == 100 - 60
    # Ended by the cap: incomplete, with the reason shown as for any max_output_tokens.
    assert (done["status"], done["incomplete_reason"], done["text"]) == ("incomplete", "max_output_tokens", "Cut short")
    # Over by what it read only.
    assert done["budget"]["used"] == 60 + 12 + 40 == 100 + 12
    assert done["budget"]["exhausted"]

    # Every other door that asks for an answer is capped the same way (a regenerate here, once
    # the budget has room again).
    await AccountLimits.objects.filter(user=alice).aupdate(daily_token_budget=200)
    question = await Message.objects.filter(conversation=earlier, role="user").afirst()
    await socket.send_json_to({"type": "chat.edit", "message": str(question.id), "text": "Earlier, again"})
    await receive_until(socket, "message.done", timeout=15)
    assert upstream.requests[-1]["body"]["max_output_tokens"] == 200 - 112
    await socket.disconnect()
    assert_no_groups_left()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("budget", "site_limit", "sent"),
    [
        (0, 0, None),  # no budget, no limit: nothing is sent, as before
        (0, 700, 700),  # the model's limit alone
        (100_000, 700, 700),  # a large rest: the model's limit
        (100_000, 0, 100_000 - 10),  # no limit of the model's known: the rest
        (20, 0, MIN_OUTPUT_TOKENS),  # a rest below the API's floor: the floor
    ],
)
async def test_the_cap_is_the_rest_of_the_budget_and_the_models_limit_whichever_is_less(
    alice, upstream, worker, settings, budget, site_limit, sent
):
    settings.CHAT_MAX_OUTPUT_TOKENS = site_limit
    # A context larger than any rest here: the context's own bound is test_continue_context.py's.
    settings.CHAT_MODEL_CONTEXT = {"test-model": 1_000_000}
    await spend(alice, budget, 10)
    socket, _, _ = await connect(alice)
    await socket.send_json_to({"type": "chat.send", "conversation": None, "text": "Hello"})
    await receive_until(socket, "message.done", timeout=15)
    assert upstream.requests[-1]["body"].get("max_output_tokens") == sent
    entry = await UsageEntry.objects.order_by("-created_at").afirst()
    assert entry.max_output_tokens == sent
    # With a budget the reservation held what the answer might write, besides its input.
    held = sent if budget else settings.CHAT_RESERVED_ANSWER_TOKENS
    assert entry.reserved_tokens == entry.estimated_input_tokens + held
    await socket.disconnect()


def test_the_local_models_limit_is_its_context(settings):
    settings.CHAT_MAX_OUTPUT_TOKENS = 0
    assert providers.local().max_output_tokens == settings.LOCAL_MODEL_CONTEXT
    settings.CHAT_MAX_OUTPUT_TOKENS = 300
    assert providers.local().max_output_tokens == 300
    assert providers.remote("any-model").max_output_tokens == 300


@pytest.mark.asyncio
@pytest.mark.worker_threads(4)
async def test_two_tabs_sending_at_the_edge_of_the_budget_share_its_rest(alice, upstream, worker, settings):
    """Both sends reach the lock on alice's row at once: the first holds the whole rest for its
    answer, the second is refused until that answer ends, then gets what is left."""
    settings.CHAT_SENDS_PER_MINUTE = 0
    await spend(alice, 100, 60)
    upstream.queue(answer(["Done"], usage=usage_object(5, 10), pause=0.2), answer(["Also"], usage=usage_object(5, 5)))
    first, _, _ = await connect(alice)
    second, _, _ = await connect(alice)
    await asyncio.gather(
        *(
            socket.send_json_to({"type": "chat.send", "conversation": None, "text": f"Tab {number}"})
            for number, socket in enumerate((first, second))
        )
    )
    outcomes = await asyncio.gather(outcome(first), outcome(second))
    [done] = [frame for frame in outcomes if frame["type"] == "message.done"]
    [refused] = [frame for frame in outcomes if frame["type"] == "error"]
    assert refused["code"] == "quota_exceeded"
    assert refused["message"] == (
        "The answers being written may use the rest of today's budget of 100 tokens: wait for them to finish."
    )
    assert [request["body"]["max_output_tokens"] for request in upstream.requests] == [40]
    assert done["budget"]["used"] == 75 and not done["budget"]["exhausted"]

    # Once it ended, the other tab may send with what is left.
    loser = second if outcomes[1]["type"] == "error" else first
    await loser.send_json_to({"type": "chat.send", "conversation": None, "text": "Now?"})
    assert (await receive_until(loser, "message.done", timeout=15))[-1]["status"] == "completed"
    assert upstream.requests[-1]["body"]["max_output_tokens"] == 100 - 75
    assert (await database_sync_to_async(limits.budget_status)(alice))["used"] == 85
    for socket in (first, second):
        await socket.disconnect()
    assert_no_groups_left()
