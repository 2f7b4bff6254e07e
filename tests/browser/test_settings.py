"""Settings and instructions as a person meets them: instructions before the first message, the
settings page from the user's name (also on a phone), defaults for new chats, the theme kept with
the account."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, answers, log_in, send, wait_until_idle

pytestmark = pytest.mark.browser


def instructions_field(page):
    return page.get_by_role("textbox", name="Instructions")


def open_conversation_settings(page):
    page.get_by_text("Conversation settings").click()
    expect(instructions_field(page)).to_be_visible()


def last_body(upstream):
    return next(record["body"] for record in reversed(upstream.requests) if record["path"].endswith("/responses"))


def test_instructions_given_before_the_first_message_reach_the_first_answer(chat, upstream):
    open_conversation_settings(chat)
    field = instructions_field(chat)
    expect(field).to_be_enabled()
    # Nothing to save on a new chat: the instructions go with the first message.
    expect(chat.get_by_role("button", name="Save instructions")).to_be_hidden()
    field.fill("Answer like a pirate.")
    # A text of its own: the site is shared by the session, and other tests say hello too.
    send(chat, "Ahoy, instructions first")
    wait_until_idle(chat)
    expect(answers(chat).first).to_contain_text("You said: Ahoy, instructions first")
    assert last_body(upstream)["instructions"] == "Answer like a pirate."
    # The panel closed with the send; the conversation kept its instructions and its title.
    expect(field).to_be_hidden()
    expect(chat).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    sidebar = chat.get_by_role("navigation", name="Conversations")
    current = sidebar.get_by_role("link", name="Ahoy, instructions first", exact=True)
    expect(current).to_have_attribute("aria-current", "page")

    chat.reload()
    open_conversation_settings(chat)
    expect(instructions_field(chat)).to_have_value("Answer like a pirate.")
    save = chat.get_by_role("button", name="Save instructions")
    # Disabled until there is a change to save, and it looks disabled.
    expect(save).to_be_disabled()
    assert float(save.evaluate("button => getComputedStyle(button).opacity")) < 0.6
    instructions_field(chat).fill("Answer like a poet.")
    expect(save).to_be_enabled()


@pytest.fixture
def restore_settings(browser, site_url):
    """alice's settings as the other tests expect them (the site is shared by the session)."""
    yield
    context = browser.new_context(base_url=site_url)
    try:
        page = context.new_page()
        log_in(page)
        page.goto("/accounts/settings/")
        page.get_by_role("combobox", name="Model for new chats").select_option("test-model")
        page.get_by_role("textbox", name="Instructions for new chats").fill("")
        page.get_by_role("radio", name="Follow the system").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()
    finally:
        context.close()


def test_the_settings_page_sets_defaults_for_new_chats_and_keeps_the_theme(
    chat, upstream, browser, site_url, screenshots, restore_settings
):
    chat.get_by_role("link", name="Settings for alice").click()
    expect(chat.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    chat.get_by_role("combobox", name="Model for new chats").select_option("other-model")
    chat.get_by_role("textbox", name="Instructions for new chats").fill("Always answer in French.")
    chat.get_by_role("radio", name="Dark").check()
    chat.get_by_role("button", name="Save settings").click()
    expect(chat.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()
    expect(chat.locator("html")).to_have_attribute("data-theme", "dark")
    expect(chat.get_by_role("heading", name="Today's usage")).to_be_visible()
    expect(chat.get_by_role("link", name="Change your password")).to_have_attribute(
        "href", "/accounts/password_change/"
    )
    chat.screenshot(path=screenshots / "settings.png", full_page=True)

    chat.get_by_role("link", name="Back to the chat").click()
    expect(chat.get_by_role("combobox", name="Model")).to_have_value("other-model")
    send(chat, "Bonjour")
    expect(answers(chat).first).to_contain_text("You said: Bonjour")
    wait_until_idle(chat)
    body = last_body(upstream)
    assert body["model"] == "other-model"
    assert body["instructions"] == "Always answer in French."

    chat.goto("/accounts/settings/")
    expect(chat.get_by_role("table")).to_contain_text("other-model")

    # Another browser, same account: the theme came with the account, from the first paint.
    other = browser.new_context(base_url=site_url, color_scheme="light")
    try:
        page = other.new_page()
        log_in(page)
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        # The admin's own theme script reads this key: the admin opens dark as well.
        assert page.evaluate("localStorage.getItem('theme')") == "dark"
        page.get_by_role("button", name="Theme").click()
        expect(page.locator("html")).to_have_attribute("data-theme", "light")
        page.goto("/accounts/settings/")
        expect(page.get_by_role("radio", name="Light")).to_be_checked()
    finally:
        other.close()


def test_the_settings_page_is_reached_from_the_name_on_a_phone(browser, site_url, screenshots):
    context = browser.new_context(base_url=site_url, viewport={"width": 390, "height": 844}, has_touch=True)
    try:
        page = context.new_page()
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        link = page.get_by_role("link", name="Settings for alice")
        expect(link).to_be_visible()
        box = link.bounding_box()
        assert box["width"] >= 24 and box["height"] >= 24, box
        # A model's name too long for the picker ends in "…", not mid-word, and is whole in its title.
        picker = page.get_by_role("combobox", name="Model")
        expect(picker).to_have_value("test-model")
        picker.evaluate(
            "select => { select.options[0].textContent = 'Local model: SmolLM2-135M, offline';"
            " select.dispatchEvent(new Event('change')); }"
        )
        expect(picker).to_have_attribute("title", "Local model: SmolLM2-135M, offline")
        assert picker.evaluate("select => getComputedStyle(select).textOverflow") == "ellipsis"
        page.screenshot(path=screenshots / "chat-phone.png")
        link.click()
        expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
        page.screenshot(path=screenshots / "settings-phone.png", full_page=True)
    finally:
        context.close()
