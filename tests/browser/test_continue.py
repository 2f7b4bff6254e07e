"""Continue in Chromium (issue 17): an answer stopped or cut short goes on as a new version that
starts with its text; the original stays a click away. Found by role and accessible name."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, send, wait_until_idle
from tests.upstream import answer, held

pytestmark = pytest.mark.browser


def gated(deltas):
    """An answer whose deltas stream at once and whose end waits for the returned gate."""
    return held(answer(deltas), before=b"response.output_text.done")


def versions(reply):
    return reply.locator(".versions .visually-hidden")


def test_a_stopped_answer_continues_from_its_text_and_keeps_the_original_as_version_one(chat, upstream):
    steps, gate = gated(["Once upon ", "a time"])
    upstream.queue(steps)
    send(chat, "Tell me a story")
    reply = answers(chat).first
    expect(reply).to_contain_text("Once upon a time")
    # Nothing to continue while it is written.
    expect(reply.get_by_role("button", name="Continue")).to_have_count(0)
    chat.get_by_role("button", name="Stop").click()
    expect(reply).to_contain_text("Cancelled")
    gate.event.set()

    continue_button = reply.get_by_role("button", name="Continue")
    expect(continue_button).to_be_enabled()
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible()
    steps, gate = gated([" there was", " a river"])
    upstream.queue(steps)
    requests = len(upstream.requests)
    continue_button.click()

    # The new version shows the text so far at once, then what follows it.
    reply = answers(chat).first
    expect(reply).to_contain_text("Once upon a time there was a river")
    expect(versions(reply)).to_have_text("Version 2 of 2")
    # While it is written, no Continue is offered anywhere, and Stop works as for any answer.
    expect(chat.get_by_role("button", name="Continue")).to_have_count(0)
    body = upstream.requests[requests]["body"]
    assert [(item["role"], item["content"]) for item in body["input"][:2]] == [
        ("user", "Tell me a story"),
        ("assistant", "Once upon a time"),
    ]
    chat.get_by_role("button", name="Stop").click()
    expect(reply).to_contain_text("Cancelled")
    gate.event.set()
    wait_until_idle(chat)
    expect(answers(chat)).to_have_count(1)
    expect(reply.locator(".message-body")).to_have_text("Once upon a time there was a river")

    # The original is version 1 of 2, unchanged.
    reply.get_by_role("button", name="Previous version").click()
    expect(versions(answers(chat).first)).to_have_text("Version 1 of 2")
    expect(answers(chat).first.locator(".message-body")).to_have_text("Once upon a time")

    # Stopped again, the continuation can be continued again; a reload keeps the whole text.
    answers(chat).first.get_by_role("button", name="Next version").click()
    expect(versions(answers(chat).first)).to_have_text("Version 2 of 2")
    upstream.queue(answer([" that ran to the sea."]))
    answers(chat).first.get_by_role("button", name="Continue").click()
    expect(answers(chat).first.locator(".message-body")).to_have_text(
        "Once upon a time there was a river that ran to the sea."
    )
    expect(versions(answers(chat).first)).to_have_text("Version 3 of 3")
    wait_until_idle(chat)
    # Complete now: nothing to continue.
    expect(answers(chat).first.get_by_role("button", name="Continue")).to_have_count(0)
    chat.reload()
    expect(answers(chat).first.locator(".message-body")).to_have_text(
        "Once upon a time there was a river that ran to the sea."
    )


def test_an_answer_cut_off_by_the_output_limit_offers_continue_and_a_complete_one_does_not(chat, upstream):
    upstream.queue(answer(["A complete answer."]))
    send(chat, "Say something")
    wait_until_idle(chat)
    expect(answers(chat).first).to_contain_text("A complete answer.")
    expect(chat.get_by_role("button", name="Continue")).to_have_count(0)

    upstream.queue(answer(["Cut off mid"], terminal="incomplete"))
    send(chat, "Say more")
    wait_until_idle(chat)
    last = answers(chat).last
    expect(last).to_contain_text("Incomplete: output token limit reached")
    # Only the last answer offers it, next to Regenerate.
    expect(chat.get_by_role("button", name="Continue")).to_have_count(1)
    upstream.queue(answer(["-sentence, now whole."]))
    last.get_by_role("button", name="Continue").click()
    expect(answers(chat).last.locator(".message-body")).to_have_text("Cut off mid-sentence, now whole.")
    expect(answers(chat)).to_have_count(2)
