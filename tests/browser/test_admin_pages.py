"""The admin as staff see it: conversation list, transcript, usage report and audit trail."""

from playwright.sync_api import expect

from tests.browser.conftest import answers, log_in, send, wait_until_idle
from tests.upstream import Status, answer, usage_object


def test_staff_review_a_transcript_usage_and_the_audit_trail(page, upstream, screenshots):
    log_in(page, "root")
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    upstream.queue(answer(["Rivers ", "carry ", "**water** ", "to the sea."], usage=usage_object(14, 6)))
    send(page, "Where do rivers go?")
    expect(answers(page).first).to_have_attribute("data-status", "completed", timeout=20_000)
    wait_until_idle(page)
    upstream.queue(*[[Status(503, b'{"error": {"message": "overloaded"}}')]] * 3)  # every try
    send(page, "And lakes?")
    expect(answers(page).nth(1)).to_have_attribute("data-status", "failed", timeout=20_000)

    page.goto("/admin/chat/conversation/")
    row = page.get_by_role("row").filter(has_text="Where do rivers go?")
    expect(row).to_contain_text("root")
    expect(row).to_contain_text("failed")
    page.screenshot(path=screenshots / "admin-conversations.png", full_page=True)

    row.get_by_role("link", name="Where do rivers go?").click()
    transcript = page.locator(".transcript")
    expect(transcript.get_by_role("article", name="Assistant message").first).to_contain_text("14 in · 6 out")
    expect(transcript).to_contain_text("The API is unavailable right now")
    page.screenshot(path=screenshots / "admin-transcript.png", full_page=True)

    page.goto("/admin/chat/conversation/usage/")
    expect(page.get_by_role("heading", name="Usage report")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="root").filter(has_text="test-model").first).to_be_visible()
    page.screenshot(path=screenshots / "admin-usage.png", full_page=True)

    page.goto("/admin/chat/auditevent/")
    expect(page.get_by_role("row").filter(has_text="viewed").first).to_contain_text("Where do rivers go?")
    page.screenshot(path=screenshots / "admin-audit.png", full_page=True)
