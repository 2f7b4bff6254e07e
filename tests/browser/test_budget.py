"""The daily token budget in real Chromium: the composer says the budget is spent as soon as an
answer spends it, on every later load before anything is typed, and after the chat is deleted."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import composer, log_in, row_action, send, serve_budgeted_site
from tests.upstream import answer, usage_object

pytestmark = pytest.mark.browser

SPENT = "You have used today's budget of 20 tokens; it resets at midnight (UTC)."


@pytest.fixture(scope="module")
def budget_site(upstream_server, tmp_path_factory):
    yield from serve_budgeted_site(upstream_server, tmp_path_factory.mktemp("budget-site"), 20)


@pytest.fixture
def site_url(budget_site):
    return budget_site


def test_the_composer_shows_the_spent_budget_live_on_load_and_after_deleting_the_chat(chat, upstream):
    notice = chat.get_by_role("status").filter(has_text="You have used today's budget")
    expect(chat.get_by_text("Today: 0 of 20 tokens used.")).to_be_visible()
    expect(composer(chat)).to_be_enabled()
    expect(notice).to_have_count(0)

    upstream.queue(answer(["Twenty ", "tokens"], usage=usage_object(15, 5)))
    send(chat, "Spend it all")
    # Live: the message.done that spends the rest disables the composer, with the reason.
    expect(notice).to_have_text(SPENT)
    expect(composer(chat)).to_be_disabled()
    expect(chat.get_by_role("button", name="Send")).to_be_disabled()
    expect(chat.get_by_text("Today: 20 of 20 tokens used.")).to_be_visible()
    expect(chat.get_by_role("article", name="Assistant message")).to_contain_text("Twenty tokens")

    # On load: disabled before anything is typed, and the composer is described by the reason.
    chat.reload()
    expect(chat.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    expect(composer(chat)).to_be_disabled()
    expect(composer(chat)).to_have_accessible_description(SPENT)
    expect(notice).to_be_visible()

    # Deleting the conversation gives nothing back.
    row_action(chat, "Spend it all", "Delete")
    dialog = chat.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_contain_text("“Spend it all”")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(chat).to_have_url(re.compile(r"/$"))
    expect(chat.get_by_text("What can I help with?")).to_be_visible()
    expect(composer(chat)).to_be_disabled()
    expect(notice).to_have_text(SPENT)
    expect(chat.get_by_text("Today: 20 of 20 tokens used.")).to_be_visible()


def test_a_budget_spent_in_another_tab_disables_this_composer_and_stays_in_sight_on_a_phone(
    browser, budget_site, upstream
):
    """Rough edges 7 and 1: a tab on another conversation kept its composer usable after the
    budget was spent elsewhere; at 520 px and narrower the budget line was hidden."""
    context = browser.new_context(base_url=budget_site)
    try:
        spender = context.new_page()
        log_in(spender, "root")
        expect(spender.get_by_role("status").filter(has_text="Connected")).to_be_visible()
        other = context.new_page()
        other.set_viewport_size({"width": 390, "height": 844})
        other.goto("/")
        expect(other.get_by_role("status").filter(has_text="Connected")).to_be_visible()
        expect(other.get_by_text("Today: 0 of 20 tokens used.")).to_be_visible()
        expect(composer(other)).to_be_enabled()
        watcher = context.new_page()
        watcher.goto("/")
        expect(composer(watcher)).to_be_enabled()

        upstream.queue(answer(["Spent ", "here"], usage=usage_object(15, 5)))
        send(spender, "Spend it in this tab")
        expect(composer(spender)).to_be_disabled()

        # The other tab heard nothing; its send is refused, and then it knows.
        send(other, "And one more from here")
        notice = other.get_by_role("status").filter(has_text="You have used today's budget")
        expect(notice).to_have_text(SPENT)
        expect(composer(other)).to_be_disabled()
        expect(composer(other)).to_have_value("And one more from here")  # nothing typed is lost
        expect(other.get_by_text("Today: 20 of 20 tokens used.")).to_be_visible()

        # Shown again (the event a browser sends when the tab comes back), a tab asks too.
        expect(composer(watcher)).to_be_enabled()
        watcher.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        expect(composer(watcher)).to_be_disabled()
    finally:
        context.close()
