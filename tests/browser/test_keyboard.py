"""The chat page with the keyboard only: shortcuts, their dialog, the skip link, and focus that is
always on something a person can see."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, composer, send, wait_until_idle
from tests.upstream import answer

pytestmark = pytest.mark.browser

# What each focused element must be: shown (not hidden, transparent or clipped to nothing) and
# on the screen.
FOCUS_VISIBLE = """() => {
  const element = document.activeElement;
  if (!element || element === document.body) return "body";
  const box = element.getBoundingClientRect();
  const seen = element.checkVisibility({ opacityProperty: true, visibilityProperty: true });
  let opacity = 1;
  for (let node = element; node; node = node.parentElement) opacity *= Number(getComputedStyle(node).opacity);
  const inside = box.right > 0 && box.bottom > 0 && box.left < innerWidth && box.top < innerHeight;
  const name = element.getAttribute("aria-label") || element.textContent.trim().slice(0, 30) || element.id;
  return seen && opacity > 0.3 && box.width >= 8 && box.height >= 8 && inside ? "" : `${element.tagName} ${name}`;
}"""


def blur(page):
    page.evaluate("document.activeElement.blur()")


def test_question_mark_opens_the_shortcuts_dialog_but_not_while_typing(chat):
    send_box = composer(chat)
    send_box.press("?")
    expect(send_box).to_have_value("?")
    expect(chat.get_by_role("dialog")).to_have_count(0)
    send_box.fill("")
    blur(chat)
    chat.keyboard.press("?")
    dialog = chat.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    for label in ("New chat", "Search conversations", "Focus the message box", "Copy the last answer"):
        expect(dialog.get_by_role("term").filter(has_text=label)).to_be_visible()
    expect(dialog.get_by_role("definition").first).to_have_text("Ctrl + Shift + O")
    chat.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # While typing, Ctrl+/ opens it; the button in the hint does too.
    send_box.focus()
    chat.keyboard.press("Control+Slash")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    chat.get_by_role("button", name="Keyboard shortcuts").click()
    expect(dialog).to_be_visible()


def test_shortcuts_focus_search_and_composer_copy_the_last_answer_and_start_a_new_chat(chat, context, upstream):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    upstream.queue(answer(["The **whole** ", "answer."]))
    send(chat, "Say something")
    expect(answers(chat).first).to_have_attribute("data-status", "completed")
    wait_until_idle(chat)

    chat.keyboard.press("Control+k")
    expect(chat.get_by_role("searchbox", name="Search conversations")).to_be_focused()
    chat.keyboard.press("Shift+Escape")
    expect(composer(chat)).to_be_focused()

    chat.bring_to_front()  # the clipboard answers only the focused page
    chat.keyboard.press("Control+Shift+C")
    expect(chat.locator("[aria-live=polite]")).to_have_text("Last answer copied.")
    assert chat.evaluate("navigator.clipboard.readText()") == "The **whole** answer."

    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    chat.keyboard.press("Control+Shift+O")
    expect(chat).to_have_url(re.compile(r"/$"))
    expect(chat.get_by_text("What can I help with?")).to_be_visible()


def test_the_skip_link_is_the_first_tab_stop_and_leads_to_the_message_box(chat):
    # As after a click on the page's background: the next Tab starts from the top.
    chat.evaluate("document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute('tabindex')")
    chat.keyboard.press("Tab")
    skip = chat.get_by_role("link", name="Skip to the message box")
    expect(skip).to_be_focused()
    assert chat.evaluate(FOCUS_VISIBLE) == ""
    chat.keyboard.press("Enter")
    expect(composer(chat)).to_be_focused()


@pytest.mark.parametrize("width", [1280, 390])
def test_tab_never_lands_on_something_invisible(chat, upstream, width):
    chat.set_viewport_size({"width": width, "height": 800})
    upstream.queue(answer(["An answer ", "with `code`.\n\n```python\nprint(1)\n```\n"]))
    send(chat, "Something to tab through")
    expect(answers(chat).first).to_have_attribute("data-status", "completed")
    wait_until_idle(chat)
    chat.reload()
    expect(chat.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    blur(chat)
    problems = []
    seen = set()
    for _ in range(40):
        chat.keyboard.press("Tab")
        problem = chat.evaluate(FOCUS_VISIBLE)
        # "body": past the last stop the browser's own toolbar has focus, and the page none.
        if problem and problem != "body":
            problems.append(problem)
        seen.add(chat.evaluate("document.activeElement.textContent.trim().slice(0, 20)"))
    assert problems == [], problems
    assert len(seen) > 8, seen
