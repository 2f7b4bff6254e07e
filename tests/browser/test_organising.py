"""Pins, the archive and import in real Chromium: each row's menu driven by the keyboard, the
changes reaching a second tab live, and the Import control reporting what it did."""

import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sidebar
from tests.browser.test_sidebar import start_conversation

pytestmark = pytest.mark.browser

IMPORTS = Path(__file__).resolve().parent.parent / "data" / "imports"


def main_titles(page):
    """The titles of the sidebar's main list, top first."""
    return sidebar(page).locator("#conversation-list > li > a").all_text_contents()


def open_menu_by_keyboard(page, title):
    sidebar(page).get_by_role("link", name=title, exact=True).focus()
    page.keyboard.press("Shift+F10")
    menu = page.get_by_role("menu", name=f"Actions for {title}")
    expect(menu).to_be_visible()
    return menu


def focus_is_visible(page):
    return page.evaluate(
        "() => document.activeElement !== document.body && document.activeElement.offsetParent !== null"
    )


def connected_tab(context):
    tab = context.new_page()
    tab.goto("/")
    tab.get_by_role("status").filter(has_text="Connected").wait_for()
    return tab


def test_pin_archive_and_restore_from_the_keyboard_reach_another_tab_live(chat, context, upstream, screenshots):
    word = uuid.uuid4().hex[:6]
    first, second, third = (f"{name} {word}" for name in ("Seeds", "Soil", "Sun"))
    for title in (first, second, third):
        start_conversation(chat, upstream, title)
    other = connected_tab(context)
    expect(sidebar(other).get_by_role("link", name=third)).to_be_visible()

    # Pin the oldest: Shift+F10 on its link, P (the menu's type-ahead), Enter.
    menu = open_menu_by_keyboard(chat, first)
    expect(menu.get_by_role("menuitem", name="Rename")).to_be_focused()
    chat.keyboard.press("p")
    expect(menu.get_by_role("menuitem", name="Pin")).to_be_focused()
    chat.keyboard.press("Enter")
    expect(menu).to_be_hidden()
    for page in (chat, other):
        expect(sidebar(page).locator("#conversation-list > li").first).to_have_attribute("data-pinned", "")
        expect(sidebar(page).locator("#conversation-list > li > a").first).to_have_text(first)
    expect(sidebar(chat).get_by_role("link", name=first)).to_be_focused()
    expect(open_menu_by_keyboard(chat, first).get_by_role("menuitem", name="Unpin")).to_be_visible()
    chat.keyboard.press("Escape")
    expect(sidebar(chat).get_by_role("link", name=first)).to_be_focused()

    # Archive the second: A, Enter. It leaves both tabs' lists for "Archived"; focus stays visible.
    titles = main_titles(chat)  # other tests' conversations may follow ours
    at = titles.index(second)
    neighbour = titles[at + 1] if at + 1 < len(titles) else titles[at - 1]
    open_menu_by_keyboard(chat, second)
    chat.keyboard.press("a")
    chat.keyboard.press("Enter")
    for page in (chat, other):
        expect(sidebar(page).locator("#conversation-list").get_by_role("link", name=second)).to_have_count(0)
        archived = sidebar(page).get_by_role("group").filter(has_text="Archived")
        expect(archived).to_be_visible()
    # Focus went to a neighbour, not with the row into the closed list.
    expect(sidebar(chat).get_by_role("link", name=neighbour, exact=True)).to_be_focused()
    assert focus_is_visible(chat)

    sidebar(chat).locator("#archived-section > summary").click()
    expect(
        sidebar(chat).get_by_role("list", name="Archived conversations").get_by_role("link", name=second)
    ).to_be_visible()
    chat.keyboard.press("Escape")
    chat.mouse.move(600, 400)  # the pointer away from the sidebar: only the focus shows
    row_menu = open_menu_by_keyboard(chat, first)
    chat.keyboard.press("ArrowDown")
    expect(row_menu.get_by_role("menuitem", name="Unpin")).to_be_focused()
    sidebar(chat).screenshot(path=screenshots / "sidebar-row-menu.png", animations="disabled")
    chat.keyboard.press("Escape")
    sidebar(chat).screenshot(path=screenshots / "sidebar-pinned-and-archived.png", animations="disabled")

    # Restore it from the other tab: R goes on from Rename to the next item with an R, Restore.
    sidebar(other).locator("#archived-section > summary").click()
    menu = open_menu_by_keyboard(other, second)
    other.keyboard.press("r")
    expect(menu.get_by_role("menuitem", name="Restore")).to_be_focused()
    other.keyboard.press("Enter")
    for page in (chat, other):
        expect(sidebar(page).locator("#conversation-list").get_by_role("link", name=second)).to_be_visible()
    expect(sidebar(other).locator("#conversation-list").get_by_role("link", name=second)).to_be_focused()

    # The archive is searchable; a reload shows what the other tab saw.
    open_menu_by_keyboard(chat, third)
    chat.keyboard.press("a")
    chat.keyboard.press("Enter")
    chat.get_by_role("searchbox", name="Search conversations").fill(third)
    result = sidebar(chat).get_by_role("list", name="Search results").get_by_role("listitem")
    expect(result).to_have_count(1)
    expect(result).to_contain_text("Archived")
    other.reload()
    titles = main_titles(other)
    assert third not in titles and second in titles
    expect(
        sidebar(other).locator("#conversation-list > li[data-pinned]").get_by_role("link", name=first)
    ).to_be_visible()
    other.close()


def test_row_keys_move_between_rows_and_the_open_chats_title_is_not_cut(chat, upstream):
    word = uuid.uuid4().hex[:6]
    start_conversation(chat, upstream, f"Before {word}")
    title = f"Rosemary on the sill {word}"
    start_conversation(chat, upstream, title)
    current = sidebar(chat).get_by_role("link", name=title)
    expect(current).to_have_attribute("aria-current", "page")
    chat.get_by_role("textbox", name="Message").focus()  # not the row: its menu button stays away
    expect(sidebar(chat).get_by_role("button", name=f"Actions for {title}")).to_be_hidden()
    assert current.evaluate("link => link.scrollWidth <= link.clientWidth"), "the open chat's title is cut"

    current.focus()
    chat.keyboard.press("ArrowDown")
    expect(sidebar(chat).get_by_role("link", name=f"Before {word}")).to_be_focused()
    chat.keyboard.press("ArrowUp")
    expect(current).to_be_focused()
    # One Tab stop per row: Tab leaves the row for the next one, never to its button.
    chat.keyboard.press("Tab")
    expect(sidebar(chat).get_by_role("link", name=f"Before {word}")).to_be_focused()


def test_import_through_the_control_reports_what_it_did(chat, tmp_path):
    def choose(path):
        with chat.expect_file_chooser() as chooser:
            sidebar(chat).get_by_role("button", name="Import chats…").click()
        chooser.value.set_files(path)

    choose(IMPORTS / "open-webui-chats.json")
    report = sidebar(chat).locator(".import-result")
    expect(report).to_contain_text("Imported 1 conversation from open-webui-chats.json.")
    expect(report.get_by_role("listitem")).to_have_text("Capital of Australia: Left out: 1 attached files and images.")
    # Screen readers hear it through the page's live region.
    expect(chat.locator("#announcer")).to_contain_text("Imported 1 conversation from open-webui-chats.json.")
    imported = sidebar(chat).get_by_role("link", name="Capital of Australia")
    # It was pinned in Open WebUI: it is pinned here.
    expect(sidebar(chat).locator("#conversation-list > li").first).to_contain_text("Capital of Australia")
    imported.click()
    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    expect(chat.get_by_role("article", name="Assistant message").first).to_contain_text("Canberra.")

    choose(IMPORTS / "open-webui-chats.json")
    expect(report).to_contain_text("Imported 0 conversations from open-webui-chats.json.")
    expect(report.get_by_role("listitem")).to_have_text("Capital of Australia: Already imported.")

    junk = tmp_path / "notes.json"
    junk.write_text('{"notes": []}')
    choose(junk)
    expect(report).to_contain_text("Nothing was imported. This file is not an export this site can read.")
    expect(report.get_by_role("listitem")).to_have_count(0)
    expect(sidebar(chat).get_by_role("link", name="Capital of Australia")).to_have_count(1)
