"""Message versions in real Chromium: regenerate, edit and resend, Retry, and the version arrows."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, send, wait_until_idle
from tests.upstream import Status, answer, held

pytestmark = pytest.mark.browser


def questions(page):
    return page.get_by_role("article", name="User message")


def sent_texts(upstream):
    return [item["content"] for item in upstream.requests[-1]["body"]["input"]]


def ask(page, upstream, text, reply):
    upstream.queue(answer([reply]))
    send(page, text)
    expect(answers(page).last).to_contain_text(reply)
    wait_until_idle(page)


def test_regenerate_adds_a_version_and_the_arrows_switch_between_them(chat, upstream, screenshots):
    ask(chat, upstream, "Name a river", "The Nile.")
    reply = answers(chat).first
    expect(reply.get_by_role("button", name="Previous version")).to_be_hidden()

    upstream.queue(answer(["The ", "Amazon."]))
    reply.get_by_role("button", name="Regenerate").click()
    expect(reply).to_contain_text("The Amazon.")
    wait_until_idle(chat)
    expect(answers(chat)).to_have_count(1)
    expect(reply).not_to_contain_text("The Nile.")
    expect(reply.get_by_text("2/2")).to_be_visible()
    assert sent_texts(upstream) == ["Name a river"], "the new version answers the same question, alone"
    chat.screenshot(path=screenshots / "versions.png", animations="disabled")

    previous = reply.get_by_role("button", name="Previous version")
    expect(reply.get_by_role("button", name="Next version")).to_be_disabled()
    previous.click()
    expect(reply).to_contain_text("The Nile.")
    expect(reply.get_by_text("1/2")).to_be_visible()
    expect(reply.get_by_role("button", name="Previous version")).to_be_disabled()
    # Keyboard users stay on the arrows: focus moves to the one still usable.
    expect(reply.get_by_role("button", name="Next version")).to_be_focused()

    chat.reload()
    reply = answers(chat).first
    expect(reply).to_contain_text("The Nile.")
    expect(reply.get_by_text("1/2")).to_be_visible()
    reply.get_by_role("button", name="Next version").click()
    expect(reply).to_contain_text("The Amazon.")
    expect(reply.get_by_text("2/2")).to_be_visible()


def test_only_the_last_answer_offers_regenerate(chat, upstream):
    ask(chat, upstream, "First", "One.")
    expect(answers(chat).first.get_by_role("button", name="Regenerate")).to_be_visible()
    ask(chat, upstream, "Second", "Two.")
    expect(answers(chat).first.get_by_role("button", name="Regenerate")).to_be_hidden()
    expect(answers(chat).last.get_by_role("button", name="Regenerate")).to_be_visible()


def test_editing_a_message_resends_it_and_keeps_the_old_exchange(chat, upstream, screenshots):
    ask(chat, upstream, "one", "ONE")
    ask(chat, upstream, "two", "TWO")
    second = questions(chat).nth(1)
    second.get_by_role("button", name="Edit").click()
    editor = second.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("two")
    editor.fill("three")
    chat.screenshot(path=screenshots / "editing.png", animations="disabled")
    upstream.queue(answer(["THREE"]))
    second.get_by_role("button", name="Save and send").click()

    expect(answers(chat).nth(1)).to_contain_text("THREE")
    wait_until_idle(chat)
    expect(questions(chat)).to_have_count(2)
    expect(answers(chat)).to_have_count(2)
    second = questions(chat).nth(1)
    expect(second).to_contain_text("three")
    expect(second.get_by_text("2/2")).to_be_visible()
    expect(chat.get_by_role("main")).not_to_contain_text("TWO")
    assert sent_texts(upstream) == ["one", "ONE", "three"], "the old branch is not sent"

    second.get_by_role("button", name="Previous version").click()
    expect(questions(chat).nth(1)).to_contain_text("two")
    expect(questions(chat).nth(1).get_by_text("1/2")).to_be_visible()
    expect(answers(chat).nth(1)).to_contain_text("TWO")
    chat.reload()
    expect(questions(chat).nth(1)).to_contain_text("two")
    expect(answers(chat).nth(1)).to_contain_text("TWO")


def test_the_editor_works_from_the_keyboard(chat, upstream):
    ask(chat, upstream, "Hello", "Hi.")
    question = questions(chat).first
    edit = question.get_by_role("button", name="Edit")
    edit.focus()
    chat.keyboard.press("Enter")
    editor = question.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    chat.keyboard.type(" there")
    chat.keyboard.press("Escape")  # cancels, and puts focus back on Edit
    expect(editor).to_have_count(0)
    expect(question).to_contain_text("Hello")
    expect(edit).to_be_focused()
    expect(answers(chat)).to_have_count(1)

    chat.keyboard.press("Enter")
    editor = question.get_by_role("textbox", name="Edit message")
    editor.fill("")
    expect(question.get_by_role("button", name="Save and send")).to_be_disabled()
    chat.keyboard.type("Bonjour")
    upstream.queue(answer(["Salut."]))
    chat.keyboard.press("Enter")
    expect(answers(chat).first).to_contain_text("Salut.")
    expect(questions(chat).first).to_contain_text("Bonjour")
    assert sent_texts(upstream) == ["Bonjour"]
    wait_until_idle(chat)


def test_retry_on_a_failed_answer_makes_a_new_version(chat, upstream):
    upstream.queue([Status(500, b'{"error":{"message":"boom","type":"server_error"}}')])
    send(chat, "Will this work?")
    reply = answers(chat).first
    expect(reply.get_by_text("Failed", exact=True)).to_be_visible()
    expect(reply.get_by_role("button", name="Regenerate")).to_be_hidden()

    upstream.queue(answer(["Second ", "time ", "lucky."]))
    reply.get_by_role("button", name="Retry").click()
    expect(reply).to_contain_text("Second time lucky.")
    wait_until_idle(chat)
    expect(answers(chat)).to_have_count(1)
    expect(questions(chat)).to_have_count(1)
    expect(reply.get_by_text("2/2")).to_be_visible()
    assert sent_texts(upstream) == ["Will this work?"]

    reply.get_by_role("button", name="Previous version").click()
    expect(reply.get_by_text("Failed", exact=True)).to_be_visible()
    expect(reply.get_by_text("1/2")).to_be_visible()


def test_actions_wait_while_an_answer_is_written(chat, upstream):
    ask(chat, upstream, "Quick one", "Done.")
    # Held before word6 until the actions are seen waiting: mid-answer by cue, not by pace.
    steps, gate = held(answer([f"word{number} " for number in range(12)], pause=0.15), before="word6 ")
    upstream.queue(steps)
    answers(chat).first.get_by_role("button", name="Regenerate").click()
    expect(chat.get_by_role("button", name="Stop")).to_be_visible()
    expect(questions(chat).first.get_by_role("button", name="Edit")).to_be_disabled()
    expect(answers(chat).first.get_by_role("button", name="Regenerate")).to_be_hidden()
    expect(answers(chat).first.get_by_role("button", name="Previous version")).to_be_disabled()
    gate.event.set()
    wait_until_idle(chat)
    expect(questions(chat).first.get_by_role("button", name="Edit")).to_be_enabled()
    expect(answers(chat).first.get_by_role("button", name="Previous version")).to_be_enabled()


def test_a_second_tab_follows_new_versions(chat, context, upstream):
    ask(chat, upstream, "Pick a colour", "Blue.")
    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    other = context.new_page()
    other.goto(chat.url)
    expect(other.get_by_role("status")).to_have_text("Connected")

    # A version made in one tab replaces what the other shows after the same question.
    upstream.queue(answer(["Green."]))
    answers(other).first.get_by_role("button", name="Regenerate").click()
    expect(answers(chat).first).to_contain_text("Green.")
    expect(answers(chat).first.get_by_text("2/2")).to_be_visible()
    wait_until_idle(chat)

    # This tab goes back to the first version; the other tab still shows the second and sends
    # after it. This tab then shows that branch, where the conversation now goes on.
    answers(chat).first.get_by_role("button", name="Previous version").click()
    expect(answers(chat).first).to_contain_text("Blue.")
    upstream.queue(answer(["Because it is calm."]))
    send(other, "Why?")
    expect(answers(other).nth(1)).to_contain_text("Because it is calm.")
    assert sent_texts(upstream) == ["Pick a colour", "Green.", "Why?"]
    expect(answers(chat)).to_have_count(2)
    expect(answers(chat).first).to_contain_text("Green.")
    expect(answers(chat).nth(1)).to_contain_text("Because it is calm.")
    wait_until_idle(other)
    other.close()
