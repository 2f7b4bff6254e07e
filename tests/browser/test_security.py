"""No script runs from a message and no request leaves for a foreign host: model output and user
input carrying an XSS corpus, streamed in small pieces (tags broken across deltas), in the saved
history after a reload, and in the admin's transcript; the Content Security Policy is sent and
nothing on the pages violates it."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, chunks, log_in, send, wait_until_idle
from tests.upstream import answer

MARK = "window.__xss=1"
PAYLOADS = [
    f"<script>{MARK}</script>",
    f'<img src=x onerror="{MARK}">',
    f"<IMG SRC=x OnErRoR={MARK}>",
    f"<svg onload={MARK}>",
    f"<svg><script>{MARK}</script></svg>",
    f"<math><mtext><table><mglyph><style><img src=x onerror={MARK}>",
    '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    f'<form action="javascript:{MARK}"><button>go</button></form>',
    f'<meta http-equiv="refresh" content="0;url=javascript:{MARK}">',
    f"[click](javascript:{MARK})",
    f"[click](JaVaScRiPt:{MARK})",
    f"[click](javascript&#58;{MARK})",
    f"[click](&#106;avascript:{MARK})",
    f"![img](javascript:{MARK})",
    "![img](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9d2luZG93Ll9feHNzPTE+)",
    "[x](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTwvc2NyaXB0Pg==)",
    f'<a href="javascript:{MARK}">a</a>',
    f"<details open ontoggle={MARK}>",
    f"<body onload={MARK}>",
    f"<video><source onerror={MARK}></video>",
    f"<audio src=x onerror={MARK}>",
    f'<object data="javascript:{MARK}">',
    f'<embed src="javascript:{MARK}">',
    f"<input autofocus onfocus={MARK}>",
    f"<select autofocus onfocus={MARK}>",
    f"<textarea autofocus onfocus={MARK}>",
    f"<marquee onstart={MARK}>",
    f'<div style="background:url(javascript:{MARK})">',
    f"<link rel=stylesheet href=javascript:{MARK}>",
    f'<base href="javascript:{MARK}//">',
    f"<scr<script>ipt>{MARK}</scr</script>ipt>",
    f"&lt;script&gt;{MARK}&lt;/script&gt;",
    '<img src="x" onerror="&#119;indow.__xss=1">',
    f"`<img src=x onerror={MARK}>`",
    f"```html\n<script>{MARK}</script>\n```",
    f"[x](vbscript:{MARK})",
    f'<a href=" javascript:{MARK}">spaced</a>',
    f"[x]( javascript:{MARK} )",
    f'<svg><a xlink:href="javascript:{MARK}"><text>t</text></a></svg>',
    f'<math href="javascript:{MARK}">m</math>',
    f'<noscript><p title="</noscript><img src=x onerror={MARK}>">',
    f"<template><script>{MARK}</script></template>",
    f"<isindex action=javascript:{MARK}>",
    "<img src=https://tracker.example/pixel.png>",
    "![tracker](https://tracker.example/pixel.gif)",
    '<link rel="prefetch" href="https://tracker.example/prefetch">',
    f"[ref link][r]\n\n[r]: javascript:{MARK}",
    f"<a href='data:text/html,<script>{MARK}</script>'>d</a>",
]
LAST = f"Payload {len(PAYLOADS) - 1}:"
CORPUS = "\n\n".join(f"Payload {number}: {payload}" for number, payload in enumerate(PAYLOADS))

DANGEROUS = """() => {
    const found = [];
    for (const node of document.querySelectorAll("main *, #content *")) {
        const tag = node.tagName.toLowerCase();
        if (["script", "iframe", "object", "embed", "form", "meta", "base", "link", "frame"].includes(tag)
            && node.closest("article, .transcript")) found.push(tag);
        for (const attribute of node.attributes) {
            const name = attribute.name.toLowerCase();
            const value = attribute.value.replace(/[\\s\\u0000-\\u001f]/g, "").toLowerCase();
            if (name.startsWith("on") && node.closest("article, .transcript")) found.push(`${tag}[${name}]`);
            if (["href", "src", "action", "xlink:href", "formaction", "data"].includes(name)
                && /^(javascript|vbscript|data):/.test(value)) found.push(`${tag}[${name}=${value.slice(0, 30)}]`);
        }
    }
    return found;
}"""


def watch(page, site):
    """Collect every request leaving for another host and every CSP violation."""
    foreign = []
    page.on("request", lambda request: None if request.url.startswith((site, "data:")) else foreign.append(request.url))
    page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation', (event) =>"
        " window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));"
    )
    return foreign


def assert_nothing_ran(page, foreign):
    page.wait_for_timeout(300)  # let any onerror/onload that could fire, fire
    assert page.evaluate("window.__xss") is None
    assert page.evaluate(DANGEROUS) == []
    assert foreign == []


@pytest.mark.timeout(180)
def test_an_xss_corpus_runs_nowhere_live_in_history_or_in_the_admin(page, upstream, live_site):
    assert len(PAYLOADS) >= 40
    foreign = watch(page, live_site)
    log_in(page)
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    # Three characters per delta: every tag is broken across deltas while it streams.
    upstream.queue(answer(chunks(CORPUS, 3)))
    send(page, CORPUS)  # the user's own message carries the corpus too
    wait_until_idle(page)
    reply = answers(page).first
    expect(reply).to_contain_text(LAST)
    assert_nothing_ran(page, foreign)
    # The policy blocked nothing of ours: only the corpus's own images and links could trip it.
    assert all(
        "tracker.example" in violation or "javascript" in violation or "data" in violation
        for violation in page.evaluate("window.violations")
    )

    page.reload()
    expect(answers(page).first).to_contain_text(LAST)
    assert_nothing_ran(page, foreign)

    # A member of staff reads the transcript in the admin.
    page.context.clear_cookies()
    log_in(page, "root")
    page.goto("/admin/chat/conversation/")
    page.get_by_role("link", name=re.compile("Payload 0")).first.click()
    expect(page.get_by_role("heading", name="Transcript")).to_be_visible()
    expect(page.locator(".transcript")).to_contain_text(LAST)
    assert_nothing_ran(page, foreign)


def test_pages_carry_the_content_security_policy(page, live_site):
    policies = {}
    page.on(
        "response", lambda response: policies.setdefault(response.url, response.headers.get("content-security-policy"))
    )
    watch(page, live_site)
    page.goto("/accounts/login/")
    log_in(page)
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    policy = policies[f"{live_site}/"]
    for directive in (
        "script-src 'self'",
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.evaluate("window.violations") == []
    page.context.clear_cookies()
    log_in(page, "root")
    page.goto("/admin/")
    page.goto("/admin/chat/message/")
    assert "script-src 'self'" in policies[f"{live_site}/admin/chat/message/"]
    assert page.evaluate("window.violations") == []
