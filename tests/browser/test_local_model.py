"""A fresh site with no API configured chats with the bundled local model, end to end."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, log_in, send, serve_site


@pytest.fixture(scope="module")
def local_site(tmp_path_factory):
    # No OPENRESPONSES_* variables at all, as on a newcomer's machine; temperature 0 for a
    # repeatable answer.
    yield from serve_site(tmp_path_factory.mktemp("local-site"), LOCAL_MODEL_TEMPERATURE="0", LOCAL_MODEL_THREADS="2")


@pytest.fixture
def site_url(local_site):
    return local_site


# A generation on the CPU, on a machine that may be running other tests: minutes, not seconds.
LOCAL_MODEL_WAIT_MS = 240_000


@pytest.mark.timeout(900)
def test_a_newcomer_chats_with_the_local_model_offline(page, screenshots):
    log_in(page)
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    picker = page.get_by_role("combobox", name="Model")
    expect(picker).to_have_text(re.compile("Local model: SmolLM2-135M, offline"))
    send(page, "What is the capital of France?")
    reply = answers(page).first
    # Tokens appear while the answer is still streaming.
    expect(reply.locator(".message-body")).not_to_be_empty(timeout=LOCAL_MODEL_WAIT_MS)
    # The model's pace depends on the machine's load: wait for the answer's end, however long.
    expect(reply).to_have_attribute("data-status", "completed", timeout=LOCAL_MODEL_WAIT_MS)
    expect(reply).to_contain_text(re.compile(r"smollm2-135m · \d+ in / \d+ out · \d+ tokens"))
    first_answer = reply.inner_text()
    page.screenshot(path=screenshots / "local-model.png", animations="disabled")

    # Temperature 0: asking again in a new chat gives the same answer.
    page.goto("/")
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    send(page, "What is the capital of France?")
    again = answers(page).first
    expect(again).to_have_attribute("data-status", "completed", timeout=LOCAL_MODEL_WAIT_MS)
    assert again.inner_text().split("smollm2")[0] == first_answer.split("smollm2")[0]
