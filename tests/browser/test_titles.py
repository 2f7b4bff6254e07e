"""A title the model writes after the first answer, in real Chromium: it replaces the first words in
the sidebar and the page's title of every open tab, and a rename in one tab reaches the others.

A site of its own, with CHAT_GENERATED_TITLES on (the shared one has titles off, so that no title
request takes a scenario another test queued).
"""

import re

import pytest
from playwright.sync_api import expect

from chat.answering.titles import TITLE_INSTRUCTIONS
from tests.browser.conftest import log_in, row_action, send, serve_site, sidebar, wait_until_idle
from tests.upstream import Routed, answer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def titled_site(upstream_server, tmp_path_factory):
    yield from serve_site(
        tmp_path_factory.mktemp("titled-site"),
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model",
        OPENRESPONSES_TIMEOUT="10",
        LOCAL_MODEL_ENABLED="0",
        CHAT_GENERATED_TITLES="1",
    )


@pytest.fixture
def site_url(titled_site):
    return titled_site


def test_the_models_title_reaches_the_sidebar_of_every_tab_and_a_rename_wins(context, page, upstream):
    routed = Routed(
        lambda body: body.get("instructions") == TITLE_INSTRUCTIONS,
        answer(["Rivers ", "and their sources."]),
        answer(["Rivers begin as springs, rain and melting snow."]),
    )
    upstream.queue(routed, routed)
    log_in(page)
    other_tab = context.new_page()
    other_tab.goto("/")
    for tab in (page, other_tab):
        expect(tab.get_by_role("status")).to_have_text("Connected")

    send(page, "how do rivers start")
    wait_until_idle(page)
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    titled = sidebar(page).get_by_role("link", name="Rivers and their sources", exact=True)
    expect(titled).to_have_attribute("aria-current", "page")
    expect(page).to_have_title("Rivers and their sources · Chat")
    # The other tab was never told of the conversation but by the title's update: the row arrives.
    expect(sidebar(other_tab).get_by_role("link", name="Rivers and their sources", exact=True)).to_be_visible()
    expect(sidebar(page).get_by_role("link", name="how do rivers start")).to_have_count(0)
    assert len(routed.picked_bodies) == 1

    row_action(other_tab, "Rivers and their sources", "Rename")
    field = sidebar(other_tab).get_by_role("textbox", name="Conversation title")
    field.fill("Where rivers come from")
    field.press("Enter")
    expect(sidebar(page).get_by_role("link", name="Where rivers come from", exact=True)).to_be_visible()
    expect(page).to_have_title("Where rivers come from · Chat")
    page.reload()
    expect(sidebar(page).get_by_role("link", name="Where rivers come from", exact=True)).to_be_visible()
