"""Rough edges a newcomer met (issue 17), each reproduced in Chromium and found by role and name."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, log_in, row_action, send, wait_until_idle
from tests.upstream import answer, held

pytestmark = pytest.mark.browser

# Records the length of the first answer's text at every change from the page's first script on.
RECORD_LENGTHS = """
window.answerLengths = [];
const record = () => {
  const body = document.querySelector('article[aria-label="Assistant message"] .message-body');
  if (body) window.answerLengths.push(body.textContent.length);
};
new MutationObserver(record).observe(document, { subtree: true, childList: true, characterData: true });
"""


def test_a_reload_mid_answer_never_shows_less_than_before(chat, upstream):
    """Rough edge 5: the page rendered the last checkpoint (up to a second old) before the snapshot."""
    parts = [f"piece{number:03} " for number in range(120)]
    # Held before piece100 until the reloaded page has drawn what came before: the reload comes
    # mid-answer (the stream still flowing, so the last checkpoint lags it), and never after its end.
    steps, gate = held(answer(parts, pause=0.05), before="piece100 ")
    upstream.queue(steps)
    send(chat, "A long answer to reload in")
    reply = answers(chat).first
    expect(reply).to_contain_text("piece030")
    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    before = len(reply.locator(".message-body").text_content())
    chat.add_init_script(RECORD_LENGTHS)
    chat.reload()
    expect(answers(chat).first).to_contain_text("piece099")
    gate.event.set()
    wait_until_idle(chat)
    expect(answers(chat).first).to_contain_text("piece119")
    lengths = [length for length in chat.evaluate("window.answerLengths") if length]
    assert lengths, "the answer was never drawn"
    assert lengths[0] >= before, (before, lengths[:5])
    assert lengths == sorted(lengths), "the answer went backwards"


def test_the_login_page_offers_password_reset_once(page):
    """Rough edge 3."""
    page.goto("/accounts/login/")
    expect(page.get_by_role("link", name="Forgot your password?")).to_have_count(1)


def test_edit_stays_out_of_sight_while_an_answer_streams(chat, upstream):
    """Rough edge 4: the disabled Edit's dimming outranked the rule that hides it until hover."""
    steps, gate = held(answer(["Streaming ", "slowly."]), before="slowly.")
    upstream.queue(steps)
    send(chat, "Watch the Edit button")
    expect(chat.get_by_role("button", name="Stop")).to_be_visible()
    question = chat.get_by_role("article", name="User message")
    edit = question.get_by_role("button", name="Edit")
    expect(edit).to_be_disabled()
    chat.mouse.move(5, 400)  # away from the message
    shown = "button => button.checkVisibility({ opacityProperty: true })"
    assert edit.evaluate(shown) is False
    gate.event.set()
    wait_until_idle(chat)
    question.hover()
    expect(edit).to_be_enabled()
    assert edit.evaluate(shown) is True


def test_the_delete_dialog_quotes_a_title_with_its_own_punctuation(chat, upstream):
    """Rough edge 10: Delete “Hi! Who are you?”? read the question mark twice."""
    send(chat, "Hi! Who are you?")
    expect(answers(chat).first).to_have_attribute("data-status", "completed")
    row_action(chat, "Hi! Who are you?", "Delete")
    dialog = chat.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_contain_text("“Hi! Who are you?” and its messages will be deleted; this cannot be undone.")
    assert "?”?" not in dialog.text_content()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()


def test_the_conversation_settings_close_after_sending(chat, upstream):
    """Rough edge 10: the settings panel stayed open after sending, over the conversation."""
    chat.get_by_text("Conversation settings").click()
    expect(chat.get_by_role("textbox", name="Instructions")).to_be_visible()
    send(chat, "Close the panel")
    wait_until_idle(chat)
    expect(chat.get_by_role("textbox", name="Instructions")).to_be_hidden()


def test_a_long_code_blocks_header_stays_in_sight_and_waits_for_its_language(chat, upstream):
    """Rough edge 9: the Copy header scrolled away with long code, and a streaming block read
    "code" (or half its language's name) until its opening line ended."""
    lines = "".join(f"print({number})\n" for number in range(150))
    rest = f"hon\n{lines}```\n\nDone."
    steps, gate = held(answer(["Here:\n\n```pyt", rest], pause=0.05), before=rest)
    upstream.queue(steps)
    send(chat, "Long code please")
    reply = answers(chat).first
    expect(reply.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    label = reply.locator(".code-language")
    expect(label).to_have_text("")
    gate.event.set()
    wait_until_idle(chat)
    expect(label).to_have_text("python")

    scroller = chat.locator("#scroller")
    scroller.evaluate(
        """scroller => {
          const block = scroller.querySelector(".code-block");
          scroller.scrollTop += block.getBoundingClientRect().top - scroller.getBoundingClientRect().top + 1200;
        }"""
    )
    view = scroller.bounding_box()
    block = reply.locator(".code-block").bounding_box()
    copy = reply.get_by_role("button", name="Copy", exact=True).bounding_box()
    assert block["y"] < view["y"] - 1000, "the block's top should be scrolled out of sight"
    assert view["y"] <= copy["y"] <= view["y"] + 60, (view, copy)


def test_search_results_show_the_matching_words_highlighted(chat, upstream):
    """Rough edge 8: results gave no hint of where the word matched."""
    upstream.queue(answer(["Sea otters hold hands ", "while they sleep, so they do not drift apart."]))
    send(chat, "Tell me something about animals")
    expect(answers(chat).first).to_have_attribute("data-status", "completed")
    chat.get_by_role("searchbox", name="Search conversations").fill("drift")
    sidebar = chat.get_by_role("navigation", name="Conversations")
    result = sidebar.get_by_role("link", name="Tell me something about animals")
    expect(result).to_have_accessible_description(re.compile(r"so they do not drift apart\."))
    expect(sidebar.locator("mark")).to_have_text("drift")
    expect(sidebar.locator("mark")).to_be_visible()


def test_the_admin_list_fits_at_1280_px_keeps_the_theme_and_names_the_budget(page, upstream, screenshots):
    """Rough edge 6: "Last answer" clipped and titles on 8 lines at 1280 px, the dark theme
    not carried into the admin, and "Add another Chat limits" on the user form."""
    page.set_viewport_size({"width": 1280, "height": 800})
    log_in(page, "root")
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    send(page, "A question long enough to wrap onto several lines in a narrow column")
    expect(answers(page).first).to_have_attribute("data-status", "completed")
    if page.locator("html").get_attribute("data-theme") != "dark":
        page.get_by_role("button", name="Theme").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")

    try:
        page.goto("/admin/chat/conversation/")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        results = page.locator("#changelist .results").bounding_box()
        last = page.get_by_role("columnheader", name="Last answer").bounding_box()
        assert last["x"] + last["width"] <= results["x"] + results["width"] + 1, (last, results)
        title = page.get_by_role("link", name=re.compile("^A question long enough")).bounding_box()
        assert title["height"] < 70, title  # two or three lines, not eight
        page.screenshot(path=screenshots / "admin-conversations-1280.png", full_page=True)

        page.goto("/admin/auth/user/")
        page.get_by_role("link", name="alice").click()
        expect(page.get_by_role("heading", name="Daily token budget", exact=True)).to_be_visible()
        # A tabular inline's field is named by its column header, which the admin does not link.
        expect(page.locator("input[name='chat_limits-0-daily_token_budget']")).to_be_visible()
        group = page.locator("#chat_limits-group")
        # The admin's script keeps a hidden add link for any inline; none is shown here.
        expect(group.get_by_text(re.compile("Add another", re.IGNORECASE))).to_be_hidden()
        expect(group.get_by_text("Remove")).to_be_hidden()
    finally:
        # root's theme is kept with the account; the session's other tests expect the system's.
        page.goto("/accounts/settings/")
        page.get_by_role("radio", name="Follow the system").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()


def test_the_phone_header_keeps_each_control_on_one_line_beside_share(chat, upstream):
    """Seen at 360 px once a conversation offered Share: Log out wrapped onto two lines."""
    upstream.queue(answer(["Shared soon."]))
    send(chat, "Something to share")
    wait_until_idle(chat)
    chat.set_viewport_size({"width": 360, "height": 740})
    header = chat.get_by_role("banner")
    expect(header.get_by_role("button", name="Share")).to_be_visible()
    single_line = header.get_by_role("button", name="Theme").bounding_box()["height"]
    for name in ("Share", "Log out"):
        assert header.get_by_role("button", name=name).bounding_box()["height"] <= single_line + 0.5, name
    settings = header.get_by_role("link", name=re.compile("Settings for"))
    assert settings.bounding_box()["width"] >= 16, "the way to the settings shrank out of reach"
    for control in (*header.get_by_role("button").all(), settings):
        box = control.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360 + 0.5, control.text_content()
    assert chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
