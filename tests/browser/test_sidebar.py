"""The sidebar's conversation list in real Chromium: search, rename and delete, the last two from
each row's menu (tests/browser/test_organising.py has the menu's keyboard, pins and archive)."""

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import row_action, send, sidebar, wait_until_idle
from tests.upstream import answer

pytestmark = pytest.mark.browser


def start_conversation(page, upstream, question, reply=None):
    """A new chat with one exchange; returns to nothing, leaves the page on the conversation."""
    page.get_by_role("link", name="New chat").click()
    expect(page.get_by_role("status")).to_have_text("Connected")
    if reply is not None:
        upstream.queue(answer([reply]))
    send(page, question)
    wait_until_idle(page)
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))


def test_search_finds_conversations_by_title_and_by_message_text(chat, upstream):
    word = f"otter{uuid.uuid4().hex[:8]}"
    start_conversation(chat, upstream, f"About {word} habits", "They float.")
    start_conversation(chat, upstream, "Which animals hold hands?", f"Sea {word.upper()}s do, asleep.")
    start_conversation(chat, upstream, "Something else entirely")

    search = chat.get_by_role("searchbox", name="Search conversations")
    search.fill(word)
    links = sidebar(chat).get_by_role("list").get_by_role("link")
    expect(links).to_have_count(2)
    expect(sidebar(chat).get_by_role("link", name=f"About {word} habits")).to_be_visible()
    expect(sidebar(chat).get_by_role("link", name="Which animals hold hands?")).to_be_visible()

    search.fill(f"{word} nothing matches this")
    expect(links).to_have_count(0)
    expect(sidebar(chat).get_by_text("No conversations found.")).to_be_visible()

    search.fill("")
    expect(sidebar(chat).get_by_role("link", name="Something else entirely")).to_be_visible()
    sidebar(chat).get_by_role("link", name=f"About {word} habits").click()
    expect(chat.get_by_role("article", name="User message")).to_contain_text(f"About {word} habits")


def test_a_conversation_is_renamed_in_place(chat, upstream):
    start_conversation(chat, upstream, "Name me later")
    row_action(chat, "Name me later", "Rename")
    title = sidebar(chat).get_by_role("textbox", name="Conversation title")
    expect(title).to_have_value("Name me later")
    # While renaming, the field has the row: no link and no menu button beside it.
    expect(sidebar(chat).get_by_role("button", name="Actions for Name me later")).to_be_hidden()
    expect(sidebar(chat).get_by_role("link", name="Name me later")).to_be_hidden()
    title.fill("Renamed for good")
    title.press("Enter")
    expect(sidebar(chat).get_by_role("link", name="Renamed for good")).to_have_attribute("aria-current", "page")
    expect(chat).to_have_title("Renamed for good · Chat")

    row_action(chat, "Renamed for good", "Rename")
    title.fill("Not this one")
    title.press("Escape")
    expect(sidebar(chat).get_by_role("link", name="Renamed for good")).to_be_visible()

    chat.reload()
    expect(sidebar(chat).get_by_role("link", name="Renamed for good")).to_be_visible()
    expect(chat).to_have_title("Renamed for good · Chat")


def test_deleting_asks_first_and_deleting_the_open_one_starts_a_new_chat(chat, upstream):
    start_conversation(chat, upstream, "Delete me in the background")
    start_conversation(chat, upstream, "Delete me while open")

    # Another conversation's menu button shows when its row is pointed at (or its link focused).
    background = sidebar(chat).get_by_role("link", name="Delete me in the background")
    menu_button = sidebar(chat).get_by_role("button", name="Actions for Delete me in the background")
    expect(menu_button).to_be_hidden()
    background.hover()
    menu_button.click()
    chat.get_by_role("menuitem", name="Delete").click()
    dialog = chat.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("“Delete me in the background” and its messages will be deleted")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(sidebar(chat).get_by_role("link", name="Delete me in the background")).to_be_visible()

    background.focus()  # from the keyboard: Shift+F10 on the link opens its menu
    chat.keyboard.press("Shift+F10")
    delete = chat.get_by_role("menu", name="Actions for Delete me in the background").get_by_role(
        "menuitem", name="Delete"
    )
    chat.keyboard.press("End")
    expect(delete).to_be_focused()
    chat.keyboard.press("Enter")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(sidebar(chat).get_by_role("link", name="Delete me in the background")).to_have_count(0)
    expect(chat.get_by_role("article", name="User message")).to_contain_text("Delete me while open")

    current = chat.url
    row_action(chat, "Delete me while open", "Delete")
    dialog = chat.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_contain_text("“Delete me while open”")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(chat).to_have_url(re.compile(r"/$"))
    expect(chat.get_by_text("What can I help with?")).to_be_visible()
    expect(sidebar(chat).get_by_role("link", name="Delete me while open")).to_have_count(0)
    assert chat.goto(current).status == 404
