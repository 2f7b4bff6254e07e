"""Answers survive second tabs and closed tabs (reloads and dropped sockets: test_chat.py)."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import answers, send, wait_until_idle
from tests.upstream import answer, held


def test_a_second_tab_follows_the_answer_live_and_can_stop_it(chat, context, upstream):
    parts = [f"part{number} " for number in range(60)]
    # Held before part10 until the second tab is connected, so that part10 reaches it live, and
    # before part30 until it has stopped the answer, so that Stop comes mid-answer.
    steps, live = held(answer(parts, pause=0.1), before="part10 ")
    steps, rest = held(steps, before="part30 ")
    upstream.queue(steps)
    send(chat, "Two tabs, one answer")
    expect(answers(chat).first).to_contain_text("part2")
    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))

    second = context.new_page()
    second.goto(chat.url)
    expect(second.get_by_role("status")).to_have_text("Connected")
    live.event.set()
    expect(answers(second).first).to_contain_text("part10")  # it arrives live in the second tab
    second.get_by_role("button", name="Stop").click()
    expect(answers(second).first).to_have_attribute("data-status", "cancelled")
    rest.event.set()

    for tab in (chat, second):
        wait_until_idle(tab)
        expect(answers(tab).first).to_have_attribute("data-status", "cancelled")
    first_text = answers(chat).first.locator(".message-body").inner_text()
    assert first_text == answers(second).first.locator(".message-body").inner_text()
    assert "part59" not in first_text and "".join(parts).startswith(first_text)
    second.close()


def test_closing_the_tab_does_not_stop_the_answer(chat, context, upstream):
    parts = [f"bit{number} " for number in range(25)]
    # Held before bit10 until the tab is closed: the rest is sent with no tab open.
    steps, gate = held(answer(parts, pause=0.08), before="bit10 ")
    upstream.queue(steps)
    send(chat, "Finish without me")
    expect(answers(chat).first).to_contain_text("bit2")
    url = chat.url
    chat.close()  # every tab of this user is gone now
    gate.event.set()
    chat_again = context.new_page()
    # The answer completes on the server meanwhile: the upstream sends its last byte to the site.
    request = upstream.requests[-1]
    for _ in range(600):
        if request["finished"]:
            break
        chat_again.wait_for_timeout(100)
    assert request["finished"], "the upstream never finished sending the answer"
    chat_again.goto(url)
    reply = answers(chat_again).first
    expect(reply).to_have_attribute("data-status", "completed")
    expect(reply.locator(".message-body")).to_have_text("".join(parts).strip())
    chat_again.close()
