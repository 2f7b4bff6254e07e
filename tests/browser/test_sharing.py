"""Share links and feedback in real Chromium, found by role and accessible name."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BROWSER_TIMEOUT_MS, PASSWORD, answers, chunks, composer, send, wait_until_idle
from tests.upstream import answer, usage_object

pytestmark = pytest.mark.browser

SHARED_ANSWER = """## Reversing a list

Use **slicing**, which returns a new list:

```python
items = [1, 2, 3]
print(items[::-1])  # [3, 2, 1]
```
"""


def clipboard_text(page):
    return page.evaluate("navigator.clipboard.readText()")


def test_a_shared_link_opens_logged_out_and_is_gone_once_revoked(
    chat, context, browser, site_url, upstream, screenshots
):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    upstream.queue(answer(chunks(SHARED_ANSWER), pause=0.01, usage=usage_object(12, 40)))
    send(chat, "How do I reverse a list in Python?")
    wait_until_idle(chat)

    chat.get_by_role("button", name="Share").click()
    dialog = chat.get_by_role("dialog", name="Share this conversation")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_text("No links yet.")).to_be_visible()
    dialog.get_by_role("button", name="Create link").click()
    link_box = dialog.get_by_role("textbox", name="Share link")
    expect(link_box).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_-]{43}/$"))
    url = link_box.input_value()
    links = dialog.get_by_role("list", name="Links to this conversation").get_by_role("listitem")
    expect(links).to_have_count(1)
    chat.bring_to_front()  # the clipboard answers only the focused page
    dialog.get_by_role("button", name="Copy link").click()
    for _ in range(100):
        if clipboard_text(chat) == url:
            break
        chat.wait_for_timeout(50)
    assert clipboard_text(chat) == url
    chat.screenshot(path=screenshots / "share-dialog.png", animations="disabled")

    visitor_context = browser.new_context(base_url=site_url, viewport={"width": 1200, "height": 800})
    visitor_context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        visitor = visitor_context.new_page()
        errors = []
        visitor.on("pageerror", lambda error: errors.append(error))
        response = visitor.goto(url)
        assert response.status == 200
        assert response.headers["x-robots-tag"] == "noindex"
        expect(visitor.locator('meta[name="robots"]')).to_have_attribute("content", "noindex")
        shared = answers(visitor)
        expect(shared).to_have_count(1)
        expect(shared.get_by_role("heading", name="Reversing a list")).to_be_visible()
        expect(shared.locator("pre code .hljs-built_in, pre code .hljs-comment").first).to_be_visible()
        expect(shared.locator("strong")).to_have_text("slicing")
        expect(visitor.get_by_role("article", name="User message")).to_contain_text("How do I reverse a list")
        # Read-only: no composer, sidebar, instructions, editing, regenerating or feedback.
        expect(composer(visitor)).to_have_count(0)
        expect(visitor.get_by_role("navigation", name="Conversations")).to_have_count(0)
        expect(visitor.get_by_text("Conversation settings")).to_have_count(0)
        for name in ("Edit", "Regenerate", "Previous version", "Next version", "Good answer", "Bad answer", "Share"):
            expect(visitor.get_by_role("button", name=name, exact=True)).to_have_count(0)
        expect(visitor.get_by_role("link", name="Log in")).to_be_visible()
        visitor.screenshot(path=screenshots / "shared-page.png", full_page=True, animations="disabled")

        chat.bring_to_front()
        links.first.get_by_role("button", name="Revoke").click()
        expect(dialog.get_by_text("No links yet.")).to_be_visible()
        expect(link_box).to_be_hidden()
        gone = visitor.reload()
        assert gone.status == 404
        expect(answers(visitor)).to_have_count(0)
        assert not errors, f"JavaScript errors on the shared page: {errors}"
    finally:
        visitor_context.close()


def test_a_logged_in_visitor_continues_a_shared_chat_as_their_own(chat, browser, site_url, upstream):
    upstream.queue(answer(chunks(SHARED_ANSWER), pause=0.01, usage=usage_object(12, 40)))
    send(chat, "How do I reverse a list in Python?")
    wait_until_idle(chat)
    chat.get_by_role("button", name="Share").click()
    chat.get_by_role("dialog").get_by_role("button", name="Create link").click()
    box = chat.get_by_role("textbox", name="Share link")
    expect(box).to_have_value(re.compile(r"/s/"))
    url = box.input_value()

    visitor_context = browser.new_context(base_url=site_url, viewport={"width": 1200, "height": 800})
    visitor_context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        visitor = visitor_context.new_page()
        visitor.goto(url)
        visitor.get_by_role("link", name="Log in").click()
        visitor.get_by_label("Username").fill("root")
        visitor.get_by_label("Password").fill(PASSWORD)
        visitor.get_by_role("button", name="Log in").click()
        visitor.get_by_role("button", name="Continue this chat").click()
        expect(visitor).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
        assert url not in visitor.url
        expect(answers(visitor).first.get_by_role("heading", name="Reversing a list")).to_be_visible()
        expect(composer(visitor)).to_be_visible()
        sidebar = visitor.get_by_role("navigation", name="Conversations")
        expect(sidebar.get_by_role("link", name="How do I reverse a list in Python?")).to_have_attribute(
            "aria-current", "page"
        )
    finally:
        visitor_context.close()


def test_feedback_is_given_by_role_and_name_and_kept_after_a_reload(chat, upstream, screenshots):
    upstream.queue(answer(chunks("Rivers flow downhill to the sea."), pause=0.01, usage=usage_object(8, 9)))
    send(chat, "Where do rivers go?")
    wait_until_idle(chat)
    reply = answers(chat).first
    good = reply.get_by_role("button", name="Good answer")
    bad = reply.get_by_role("button", name="Bad answer")
    expect(good).to_have_attribute("aria-pressed", "false")
    good.click()
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(bad).to_have_attribute("aria-pressed", "false")
    comment = reply.get_by_role("textbox", name="Feedback comment")
    expect(comment).to_be_visible()
    comment.fill("Short and right.")
    chat.screenshot(path=screenshots / "feedback.png", animations="disabled")
    reply.get_by_role("button", name="Save comment").click()
    expect(reply.get_by_role("status")).to_have_text("Comment saved.")
    expect(comment).to_be_hidden()

    chat.reload()
    reply = answers(chat).first
    expect(reply.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "false")
    reply.get_by_role("button", name="Comment on this answer").click()
    expect(reply.get_by_role("textbox", name="Feedback comment")).to_have_value("Short and right.")

    reply.get_by_role("button", name="Bad answer").click()
    expect(reply.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    chat.reload()
    reply = answers(chat).first
    expect(reply.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "false")
    # Pressing the chosen thumb again takes the rating back, and that is kept too.
    reply.get_by_role("button", name="Bad answer").click()
    expect(reply.get_by_role("status")).to_have_text("Feedback removed.")
    chat.reload()
    expect(answers(chat).first.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "false")
    expect(answers(chat).first.get_by_role("button", name="Comment on this answer")).to_be_hidden()


@pytest.mark.timeout(180)
def test_the_xss_corpus_runs_nowhere_on_a_shared_page(chat, browser, site_url, upstream):
    """The shared page renders through the chat's own sanitizing renderer, logged out too."""
    from tests.browser.test_security import CORPUS, LAST, assert_nothing_ran, watch

    upstream.queue(answer(chunks(CORPUS, 40)))
    send(chat, CORPUS)
    wait_until_idle(chat)
    chat.get_by_role("button", name="Share").click()
    chat.get_by_role("dialog").get_by_role("button", name="Create link").click()
    box = chat.get_by_role("textbox", name="Share link")
    expect(box).to_have_value(re.compile(r"/s/"))
    url = box.input_value()

    visitor_context = browser.new_context(base_url=site_url)
    visitor_context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        visitor = visitor_context.new_page()
        foreign = watch(visitor, site_url)
        visitor.goto(url)
        expect(answers(visitor).first).to_contain_text(LAST)
        expect(visitor.get_by_role("article", name="User message")).to_contain_text(LAST)
        assert_nothing_ran(visitor, foreign)
        # The policy blocked nothing of ours: only the corpus's own images and links could trip it.
        assert all(
            "tracker.example" in violation or "javascript" in violation or "data" in violation
            for violation in visitor.evaluate("window.violations")
        )
    finally:
        visitor_context.close()
