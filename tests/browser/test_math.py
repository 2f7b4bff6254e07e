"""Math in answers: typeset by KaTeX while streaming and after a reload, never in code or prices,
under the site's strict Content Security Policy, in the chat and in the admin's transcript."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, log_in, send, wait_until_idle
from tests.upstream import answer, held

pytestmark = pytest.mark.browser

HALF = "Half a formula: $\\frac{1}{"
REST = [
    "2}$ now whole.\n\n",
    "Euler: $e^{i\\pi} + 1 = 0$ and \\(a^2 + b^2 = c^2\\).\n\n",
    "$$\n\\int_0^1 x\\,dx = \\frac{1}{2}\n$$\n\n",
    "\\[\\sum_{n=1}^{\\infty} \\frac{1}{n^2}\\]\n\n",
    "It costs $5 and $10 today, or \\$3.\n\n",
    "Code keeps `$x$` as it is:\n\n```\n$$y$$\n```\n",
]
FORMULAS = [
    "\\frac{1}{2}",
    "e^{i\\pi} + 1 = 0",
    "a^2 + b^2 = c^2",
    "\\int_0^1 x\\,dx = \\frac{1}{2}",
    "\\sum_{n=1}^{\\infty} \\frac{1}{n^2}",
]


def gated_answer(first, rest):
    """An answer that stops after `first` until the returned gate opens."""
    return held(answer([first, *rest], pause=0.02), before=rest[0])


def sources(reply):
    """The TeX source of each typeset formula, from KaTeX's MathML annotation."""
    return reply.locator(".katex-mathml annotation").all_text_contents()


def expect_typeset(reply):
    expect(reply.locator(".katex")).to_have_count(len(FORMULAS))
    assert [text.strip() for text in sources(reply)] == FORMULAS
    # Formulas reach screen readers as MathML; the drawn copy is hidden from them.
    expect(reply.locator("math")).to_have_count(len(FORMULAS))
    expect(reply.locator("div.math .katex-display")).to_have_count(2)
    # Not math: the prices, the escaped dollar and everything in code.
    expect(reply).to_contain_text("It costs $5 and $10 today, or $3.")
    expect(reply.locator("code", has_text="$x$")).to_be_visible()
    expect(reply.locator("pre code")).to_have_text("$$y$$\n")
    assert reply.locator("code .katex").count() == 0


def watch_policy(page):
    page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation', (event) =>"
        " window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));"
    )


def test_math_is_typeset_once_whole_while_streaming_and_after_a_reload(page, upstream, screenshots):
    watch_policy(page)
    log_in(page)
    steps, gate = gated_answer(HALF, REST)
    upstream.queue(steps)
    send(page, "Show me some math")
    reply = answers(page).first
    # Half a formula is text, not an error and not math, until its closing $ arrives.
    expect(reply).to_contain_text("Half a formula: $\\frac{1}{")
    assert reply.locator(".katex, .katex-error").count() == 0
    gate.event.set()
    wait_until_idle(page)
    expect_typeset(reply)
    expect(reply).to_contain_text("now whole.")
    # KaTeX's fonts load from the site's static files, under font-src 'self'.
    page.evaluate("document.fonts.ready")
    assert page.evaluate("document.fonts.check('16px KaTeX_Main')")
    assert page.evaluate("window.violations") == []
    page.screenshot(path=screenshots / "math.png", full_page=True)

    page.reload()
    reply = answers(page).first
    expect_typeset(reply)
    assert page.evaluate("window.violations") == []


def test_the_admin_transcript_typesets_math_outside_code(page, upstream):
    watch_policy(page)
    log_in(page)
    upstream.queue(answer(["Inline $x^2$ and $5 or $6; ", "`$code$` stays.\n\n$$\\sqrt{2}$$\n"]))
    send(page, "Math for the admin")
    expect(answers(page).first).to_have_attribute("data-status", "completed")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    conversation_id = re.search(r"/c/([0-9a-f-]{36})/", page.url).group(1)
    page.context.clear_cookies()
    log_in_admin(page)
    page.goto(f"/admin/chat/conversation/{conversation_id}/change/")
    transcript = page.locator(".transcript").get_by_role("article", name="Assistant message")
    expect(transcript.locator(".katex")).to_have_count(2)
    assert [text.strip() for text in sources(transcript)] == ["x^2", "\\sqrt{2}"]
    expect(transcript).to_contain_text("$5 or $6; `$code$` stays.")
    assert page.evaluate("window.violations") == []


def log_in_admin(page):
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Log out").or_(page.get_by_role("button", name="Log out"))).to_be_visible()
