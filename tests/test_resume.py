"""Gap-free, duplicate-free resume: subscribers joining at random moments of a long answer, while
the worker flushes concurrently, each rebuild exactly the final text from snapshot + deltas."""

import asyncio
import random

import pytest

from tests.upstream import answer
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def rebuild(communicator, conversation_id, message_id):
    """Subscribe, then apply the snapshot and every later delta; the text this socket shows."""
    await communicator.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    text, last_seq, seen_seqs = None, None, []
    while True:
        frame = await receive(communicator, timeout=30)
        if frame["type"] == "conversation.subscribed":
            finished = [m for m in frame["messages"] if m["id"] == message_id and m["status"] == "completed"]
            if finished:  # joined after the end: the stored text is all there is
                return finished[0]["text"], finished[0]["text"], 0
            continue
        if frame.get("message") != message_id:
            continue
        if frame["type"] == "message.snapshot":
            text, last_seq = frame["text"], frame["seq"]
        elif frame["type"] == "message.delta":
            assert text is not None, "no delta before the snapshot"
            assert frame["seq"] > last_seq, "no delta the snapshot already holds"
            seen_seqs.append(frame["seq"])
            last_seq = frame["seq"]
            text += frame["delta"]
        elif frame["type"] == "message.done":
            assert seen_seqs == sorted(set(seen_seqs))
            return text, frame["text"], len(seen_seqs)


@pytest.mark.timeout(180)
async def test_subscribers_joining_at_random_moments_rebuild_exactly_the_final_text(alice, upstream, worker, settings):
    settings.CHAT_FLUSH_INTERVAL = 0.005  # many flushes, so joins race with them
    settings.CHAT_MAX_SOCKETS_PER_USER = 40
    deltas = [f"d{index}·" for index in range(2000)]
    upstream.queue(answer(deltas, pause=0.001))
    sender, _, _ = await connect(alice)
    await sender.send_json_to({"type": "chat.send", "conversation": None, "text": "a long one"})
    conversation_id = (await receive(sender))["conversation"]["id"]
    created = await receive_until(sender, "message.created", timeout=10)
    while created[-1]["message"]["role"] != "assistant":
        created += await receive_until(sender, "message.created", timeout=10)
    message_id = created[-1]["message"]["id"]

    rng = random.Random(2000)

    async def late_subscriber():
        await asyncio.sleep(rng.uniform(0, 1.8))
        communicator, _, _ = await connect(alice)
        try:
            return await rebuild(communicator, conversation_id, message_id)
        finally:
            await communicator.disconnect()

    results = await asyncio.gather(*(late_subscriber() for _ in range(25)))
    await receive_until(sender, "message.done", timeout=60)
    await sender.disconnect()
    expected = "".join(deltas)
    for rebuilt, final, _ in results:
        assert final == expected
        assert rebuilt == expected
    # The joins really raced the stream: most came mid-answer, with deltas still to follow.
    assert sum(1 for _, _, deltas_after in results if deltas_after > 0) >= 20
    assert_no_groups_left()
