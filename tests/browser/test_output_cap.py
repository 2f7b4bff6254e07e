"""Rough edge 7 in real Chromium: one answer could overshoot the daily budget. Now the answer is
asked for at most the rest of it, ends as incomplete when it reaches that, says so as at any
output token limit, and the composer locks once the budget is spent."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import composer, send, serve_budgeted_site
from tests.upstream import answer, usage_object

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def capped_site(upstream_server, tmp_path_factory):
    yield from serve_budgeted_site(upstream_server, tmp_path_factory.mktemp("capped-site"), 300)


@pytest.fixture
def site_url(capped_site):
    return capped_site


def test_an_answer_that_reaches_the_rest_of_the_budget_ends_incomplete_and_locks_the_composer(chat, upstream):
    expect(chat.get_by_text("Today: 0 of 300 tokens used.")).to_be_visible()
    upstream.queue(answer(["A long ", "story, cut"], terminal="incomplete", usage=usage_object(12, 300)))
    send(chat, "Tell me a very long story")
    reply = chat.get_by_role("article", name="Assistant message")
    expect(reply.get_by_text("Incomplete: output token limit reached")).to_be_visible()
    expect(reply).to_contain_text("A long story, cut")
    # It was asked for no more than the budget held, and went over by what it read only.
    assert upstream.requests[-1]["body"]["max_output_tokens"] == 300
    expect(chat.get_by_text("Today: 312 of 300 tokens used.")).to_be_visible()
    expect(composer(chat)).to_be_disabled()
    expect(chat.get_by_role("status").filter(has_text="You have used today's budget of 300 tokens")).to_be_visible()
