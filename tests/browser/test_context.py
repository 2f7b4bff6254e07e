"""A conversation longer than its model's context in real Chromium: the marker above the first
message the latest answer was sent, the context gauge on the composer, both after a reload, and
at 390 px."""

import pytest
from playwright.sync_api import expect

from chat.answering import context
from tests.browser.conftest import answers, log_in, send, serve_site
from tests.upstream import answer, usage_object

pytestmark = pytest.mark.browser

MARKER = "Earlier messages are not sent to the model"
LONG = 1200


@pytest.fixture(scope="module")
def context_site(upstream_server, tmp_path_factory):
    # test-model reads 2,048 tokens (512 kept for the answer); other-model the default 32,768.
    yield from serve_site(
        tmp_path_factory.mktemp("context-site"),
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model,other-model",
        OPENRESPONSES_TIMEOUT="10",
        LOCAL_MODEL_ENABLED="0",
        CHAT_MODEL_CONTEXT="test-model=2048",
    )


@pytest.fixture
def site_url(context_site):
    return context_site


def question(number):
    head = f"Question {number}: "
    return head + "lorem ipsum dolor sit amet " * ((LONG - len(head)) // 27)


def counted(received):
    """An answer reporting its input as 4 characters a token, as a tokenizer of English would;
    each body received is appended to `received` with the usage reported for it."""

    def scenario(body):
        characters = len(body.get("instructions", "")) + sum(len(item["content"]) for item in body["input"])
        usage = usage_object(characters // 4 + context.REQUEST_TOKENS, 3)
        received.append((body, usage))
        return answer(["Noted, ", "thanks."], usage=usage)

    return scenario


def marker(page):
    return page.get_by_role("separator", name=MARKER)


def gauge(page):
    return page.get_by_role("meter", name="Context used")


def marked_message(page):
    """The text of the message just after the marker."""
    return marker(page).evaluate("node => node.nextElementSibling?.textContent?.slice(0, 12)")


def expect_gauge(page, used, size=2048):
    expect(gauge(page)).to_have_attribute("aria-valuetext", f"{used:,} of {size:,} tokens")
    expect(gauge(page)).to_have_attribute("aria-valuenow", str(min(used, size)))
    expect(gauge(page)).to_have_attribute("aria-valuemax", str(size))


def test_the_page_marks_the_messages_not_sent_and_gauges_the_context_live_and_after_a_reload(
    browser, context_site, upstream, screenshots
):
    received = []
    upstream.queue(*[counted(received)] * 5)
    tab = browser.new_context(base_url=context_site, viewport={"width": 1280, "height": 900})
    page = tab.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        log_in(page)
        expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
        # A new chat: nothing used yet of the chosen model's context.
        expect_gauge(page, 0)
        expect(gauge(page).get_by_text("0 of 2,048 tokens", exact=True)).to_be_visible()

        send(page, question(1))
        expect(answers(page).nth(0)).to_contain_text("Noted, thanks.")
        body, usage = received[-1]
        expect_gauge(page, usage["input_tokens"] + usage["output_tokens"])
        expect(marker(page)).to_have_count(0)  # everything went

        for number in range(2, 6):
            send(page, question(number))
            expect(answers(page).nth(number - 1)).to_contain_text("Noted, thanks.")
        body, usage = received[-1]
        first_sent = body["input"][0]["content"]
        assert first_sent != question(1) and first_sent.startswith("Question "), "older turns were left out"
        used = usage["input_tokens"] + usage["output_tokens"]
        expect_gauge(page, used)
        expect(marker(page)).to_be_visible()
        assert marked_message(page) == first_sent[:12], "the marker is just above the first message sent"
        marker(page).scroll_into_view_if_needed()
        page.screenshot(path=screenshots / "context-gauge.png")

        # After a reload, from the page's own data.
        page.reload()
        expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
        expect(marker(page)).to_have_count(1)
        assert marked_message(page) == first_sent[:12]
        expect_gauge(page, used)

        # The gauge is of the model chosen: other-model reads the default 32,768.
        page.get_by_role("combobox", name="Model", exact=True).select_option("other-model")
        expect_gauge(page, used, 32_768)
        page.get_by_role("combobox", name="Model", exact=True).select_option("test-model")
        expect_gauge(page, used)
        assert not errors, errors
    finally:
        tab.close()


def test_the_gauge_and_the_marker_fit_a_phone(browser, context_site, upstream, screenshots):
    received = []
    upstream.queue(*[counted(received)] * 5)
    tab = browser.new_context(
        base_url=context_site, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = tab.new_page()
    try:
        log_in(page)
        expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
        for number in range(1, 6):
            send(page, question(number))
            expect(answers(page).nth(number - 1)).to_contain_text("Noted, thanks.")
        body, usage = received[-1]
        used = usage["input_tokens"] + usage["output_tokens"]
        expect_gauge(page, used)
        # The phone shows the share; the meter's value still reads in full.
        expect(gauge(page).get_by_text(f"{round(min(used / 2048, 1) * 100)}%", exact=True)).to_be_visible()
        expect(gauge(page).get_by_text(f"{used:,} of 2,048 tokens")).to_be_hidden()
        expect(marker(page)).to_be_visible()
        gauge_box = gauge(page).bounding_box()
        send_box = page.get_by_role("button", name="Send").bounding_box()
        picker_box = page.get_by_role("combobox", name="Model", exact=True).bounding_box()
        assert gauge_box["x"] >= picker_box["x"] + picker_box["width"], "beside the picker, not over it"
        assert gauge_box["x"] + gauge_box["width"] <= send_box["x"], "and before Send"
        assert send_box["x"] + send_box["width"] <= 390
        marker(page).scroll_into_view_if_needed()
        page.screenshot(path=screenshots / "context-gauge-phone.png")
    finally:
        tab.close()
