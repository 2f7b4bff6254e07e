"""Enter pressed before the chat page's modules run (issue 17): it sends, once, the text as typed.

The module scripts are held back by a route until the test has typed and pressed Enter, so the
press certainly lands before chat.js runs: the moment a slow network or device makes long.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, composer, log_in
from tests.upstream import answer

pytestmark = pytest.mark.browser


# Records every text the composer's error line shows, from the page's first script on.
RECORD_ERRORS = """
window.composerErrors = [];
new MutationObserver(() => {
  const line = document.getElementById("composer-error");
  if (line && line.textContent) window.composerErrors.push(line.textContent);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def hold_chat_script(page):
    """Routes that hold chat.js (and with it every module it imports) until released."""
    held = []
    page.route(re.compile(r"/static/chat/chat(\.[0-9a-f]+)?\.js$"), lambda route: held.append(route))
    return held


def wait_until_held(page, held):
    # The route's handler runs while Playwright serves this page's events: wait on it, bounded.
    for _ in range(600):
        if held:
            return
        page.wait_for_timeout(50)
    pytest.fail("chat.js was never requested")


def test_enter_before_the_page_scripts_run_sends_the_message_once_without_a_stray_line_break(page, upstream):
    log_in(page)
    held = hold_chat_script(page)
    page.add_init_script(RECORD_ERRORS)
    page.goto("/", wait_until="commit")
    box = composer(page)
    box.click()
    wait_until_held(page, held)
    # Shift+Enter still makes a line break; Enter asks for the send and adds none.
    box.press_sequentially("First line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    expect(box).to_have_value("First line\nsecond line")
    # Held as it is until the page sends it: what is typed now cannot join the text sent.
    box.press_sequentially(" more")
    box.press("Enter")
    expect(box).to_have_value("First line\nsecond line")
    # Nor does the form submit natively, which would put the text in the address.
    page.evaluate("document.getElementById('composer').requestSubmit()")
    assert "?" not in page.url and "line" not in page.url, page.url
    assert page.get_by_role("article", name="User message").count() == 0

    upstream.queue(answer(["Sent ", "once."]))
    requests = len(upstream.requests)
    for route in held:
        route.continue_()
    expect(answers(page).first).to_contain_text("Sent once.")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    questions = page.get_by_role("article", name="User message")
    expect(questions).to_have_count(1)
    expect(questions.first.locator(".message-bubble")).to_have_text("First line\nsecond line")
    expect(box).to_have_value("")
    expect(box).to_be_editable()
    assert len(upstream.requests) == requests + 1
    assert upstream.requests[-1]["body"]["input"][-1]["content"] == "First line\nsecond line"
    # Sent while the page's first connection was being made: no "Not connected" alarm meanwhile.
    assert page.evaluate("window.composerErrors") == []


def test_enter_in_an_empty_box_before_the_page_scripts_run_sends_nothing_and_the_box_stays_usable(page, upstream):
    log_in(page)
    held = hold_chat_script(page)
    page.goto("/", wait_until="commit")
    box = composer(page)
    box.click()
    wait_until_held(page, held)
    box.press("Enter")
    expect(box).to_have_value("")
    for route in held:
        route.continue_()
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    expect(box).to_be_editable()
    # Nothing was sent; the page's own Enter takes over from here.
    assert page.get_by_role("article", name="User message").count() == 0
    upstream.queue(answer(["Now."]))
    box.fill("Later")
    box.press("Enter")
    expect(answers(page).first).to_contain_text("Now.")
    expect(page.get_by_role("article", name="User message")).to_have_count(1)
