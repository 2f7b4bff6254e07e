"""The chat page in real Chromium against the real server, with elements found by role and name."""

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, answers, chunks, composer, log_in, send, wait_until_idle
from tests.upstream import Status, answer, held, response_object, sse, transcript, usage_object

pytestmark = pytest.mark.browser

MARKDOWN_ANSWER = """## Reversing a list in Python

There are two common ways:

1. **Slicing** returns a new list: `items[::-1]`
2. **`list.reverse()`** reverses in place and returns `None`

```python
items = [1, 2, 3]
print(items[::-1])  # [3, 2, 1]
items.reverse()
```

| Way | New list? |
| --- | --- |
| `items[::-1]` | yes |
| `items.reverse()` | no |

See [the tutorial](https://docs.python.org/3/tutorial/datastructures.html) for more.
"""


def test_an_answer_streams_in_and_is_kept_with_its_usage(page, upstream, screenshots):
    log_in(page)
    words = [f"word{number} " for number in range(1, 21)]
    # Held before word11 until the streaming state is checked: still streaming by cue, not by pace.
    steps, gate = held(answer(words, pause=0.15, usage=usage_object(12, 20)), before="word11 ")
    upstream.queue(steps)
    send(page, "Tell me twenty words")

    reply = answers(page).first
    expect(reply).to_contain_text("word1")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    assert "word20" not in reply.inner_text(), "the answer should still be streaming"
    expect(composer(page)).to_have_value("")
    page.screenshot(path=screenshots / "chat-streaming.png", animations="disabled")

    gate.event.set()
    wait_until_idle(page)
    expect(reply).to_contain_text("word20")
    expect(reply).to_contain_text("12 in / 20 out · 32 tokens")
    expect(page.locator("[aria-live=polite]")).to_have_text("Answer finished.")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))

    page.reload()
    reply = answers(page).first
    expect(reply).to_contain_text("word1 word2")
    expect(reply).to_contain_text("word20")
    expect(reply).to_contain_text("12 in / 20 out · 32 tokens")
    expect(page.get_by_role("article", name="User message")).to_contain_text("Tell me twenty words")
    sidebar = page.get_by_role("navigation", name="Conversations")
    expect(sidebar.get_by_role("link", name="Tell me twenty words")).to_have_attribute("aria-current", "page")


def test_markdown_is_rendered_with_highlighted_code_and_looks_tidy(chat, context, upstream, screenshots):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    upstream.queue(answer(chunks(MARKDOWN_ANSWER), pause=0.01, usage=usage_object(25, 96)))
    send(chat, "How do I reverse a list in Python?")
    wait_until_idle(chat)
    reply = answers(chat).first
    expect(reply.get_by_role("heading", name="Reversing a list in Python")).to_be_visible()
    expect(reply.get_by_role("table")).to_be_visible()
    expect(reply.locator("pre code .hljs-built_in, pre code .hljs-comment").first).to_be_visible()
    chat.bring_to_front()  # the clipboard answers only the focused page
    reply.get_by_role("button", name="Copy", exact=True).click()
    # What matters is the clipboard; the button's "Copied" lasts 1.5 s, too short to poll for on
    # a loaded machine.
    expected = "items = [1, 2, 3]\nprint(items[::-1])"
    for _ in range(100):
        if chat.evaluate("navigator.clipboard.readText()").startswith(expected):
            break
        chat.wait_for_timeout(100)
    assert chat.evaluate("navigator.clipboard.readText()").startswith(expected)
    expect(reply.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    link = reply.get_by_role("link", name="the tutorial")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    chat.screenshot(path=screenshots / "chat-light.png", animations="disabled")

    chat.emulate_media(color_scheme="dark")
    chat.screenshot(path=screenshots / "chat-dark.png", animations="disabled")
    chat.emulate_media(color_scheme="light")

    chat.set_viewport_size({"width": 360, "height": 740})
    expect(chat.get_by_role("navigation", name="Conversations")).to_be_hidden()
    expect(chat.get_by_role("button", name="Send")).to_be_in_viewport()
    assert chat.evaluate("document.documentElement.scrollWidth") <= 360, "the page scrolls sideways"
    chat.screenshot(path=screenshots / "chat-narrow.png", animations="disabled")
    chat.get_by_role("button", name="Conversations").click()
    expect(chat.get_by_role("navigation", name="Conversations")).to_be_visible()
    chat.screenshot(path=screenshots / "chat-narrow-sidebar.png", animations="disabled")


def test_stop_ends_the_answer_and_keeps_its_text(chat, upstream):
    # Held before part3 so that Stop comes mid-answer; opened once cancelled, what the upstream
    # would still send must not show.
    steps, gate = held(answer([f"part{number} " for number in range(40)], pause=0.2), before="part3 ")
    upstream.queue(steps)
    send(chat, "Count slowly")
    reply = answers(chat).first
    expect(reply).to_contain_text("part2")
    chat.get_by_role("button", name="Stop").click()

    expect(reply.get_by_text("Cancelled", exact=True)).to_be_visible()
    gate.event.set()
    wait_until_idle(chat)
    kept = reply.inner_text()
    assert "part2" in kept and "part39" not in kept

    chat.reload()
    reply = answers(chat).first
    expect(reply.get_by_text("Cancelled", exact=True)).to_be_visible()
    expect(reply).to_contain_text("part0 part1 part2")
    expect(chat.get_by_role("button", name="Send")).to_be_visible()


def test_escape_stops_the_answer(chat, upstream):
    steps, gate = held(answer([f"part{number} " for number in range(40)], pause=0.2), before="part2 ")
    upstream.queue(steps)
    send(chat, "Count slowly again")
    reply = answers(chat).first
    expect(reply).to_contain_text("part1")
    composer(chat).press("Escape")
    expect(reply.get_by_text("Cancelled", exact=True)).to_be_visible()
    gate.event.set()


def test_a_failed_answer_shows_the_error_and_can_be_retried(chat, upstream, screenshots):
    upstream.queue([Status(500, b'{"error":{"message":"boom","type":"server_error"}}')])
    send(chat, "Will this work?")
    reply = answers(chat).first
    expect(reply.get_by_text("Failed", exact=True)).to_be_visible()
    # The client words upstream errors itself (an HTTP 500's detail may or may not be quoted).
    expect(reply.get_by_text(re.compile("internal error|boom", re.IGNORECASE))).to_be_visible()
    chat.screenshot(path=screenshots / "failed.png", animations="disabled")

    # Retry asks for a new version of the answer (tests/browser/test_versions.py has the arrows).
    upstream.queue(answer(["Second ", "time ", "lucky."]))
    reply.get_by_role("button", name="Retry").click()
    expect(reply).to_contain_text("Second time lucky.")
    expect(answers(chat)).to_have_count(1)
    expect(reply.get_by_role("button", name="Retry")).to_be_hidden()
    expect(chat.get_by_role("article", name="User message")).to_have_count(1)
    assert upstream.requests[-1]["body"]["input"][-1]["content"] == "Will this work?"


def test_an_incomplete_answer_says_why(chat, upstream, screenshots):
    upstream.queue(answer(["The answer was cut ", "short because"], terminal="incomplete"))
    send(chat, "Write a very long essay")
    reply = answers(chat).first
    expect(reply.get_by_text("Incomplete: output token limit reached")).to_be_visible()
    expect(reply).to_contain_text("The answer was cut short because")
    chat.screenshot(path=screenshots / "incomplete.png", animations="disabled")


def test_a_reasoning_summary_is_shown_in_a_thinking_block(chat, upstream, screenshots):
    upstream.queue(transcript("openai-reasoning-summary.sse"))
    send(chat, "Should I wear a coat to the Tigers game today?")
    wait_until_idle(chat)
    reply = answers(chat).first
    thinking = reply.get_by_text("Thinking", exact=True)
    expect(thinking).to_be_visible()
    expect(reply.get_by_text("The Tigers game today is set for June 23")).to_be_hidden()
    thinking.click()
    expect(reply.get_by_text("The Tigers game today is set for June 23")).to_be_visible()
    expect(reply.locator("strong", has_text="Providing game details")).to_be_visible()
    chat.screenshot(path=screenshots / "thinking.png", animations="disabled")


def refusal(deltas):
    """A streamed answer in which the model refuses instead of answering."""
    text = "".join(deltas)
    part = {"type": "refusal", "refusal": text}
    item = {"id": "msg_refusal", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    steps = [
        sse({"type": "response.created", "response": response_object("resp_refusal", "test-model", "in_progress")}),
        sse({"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}}),
    ]
    for delta in deltas:
        steps.append(
            sse(
                {
                    "type": "response.refusal.delta",
                    "item_id": "msg_refusal",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                }
            )
        )
    steps += [
        sse(
            {
                "type": "response.refusal.done",
                "item_id": "msg_refusal",
                "output_index": 0,
                "content_index": 0,
                "refusal": text,
            }
        ),
        sse({"type": "response.output_item.done", "output_index": 0, "item": item}),
        sse(
            {
                "type": "response.completed",
                "response": response_object(
                    "resp_refusal", "test-model", "completed", usage=usage_object(9, 6), output=[item]
                ),
            }
        ),
    ]
    return steps


def test_a_refusal_is_shown_apart_from_answers(chat, upstream, screenshots):
    upstream.queue(refusal(["I can't ", "help with ", "that."]))
    send(chat, "Help me with something bad")
    wait_until_idle(chat)
    reply = answers(chat).first
    expect(reply.get_by_text("Refused", exact=True)).to_be_visible()
    expect(reply.get_by_text("I can't help with that.")).to_be_visible()
    expect(reply.locator(".message-body")).to_have_text("")
    chat.screenshot(path=screenshots / "refusal.png", animations="disabled")
    chat.reload()
    expect(answers(chat).first.get_by_text("I can't help with that.")).to_be_visible()


def test_markup_in_model_output_does_not_run(chat, upstream):
    hostile = [
        'Look: <img src=x onerror="window.__xss=1"> ',
        "and <script>window.__xss=1</script> ",
        "and [x](javascript:window.__xss=1) ",
        '<a href="javascript:window.__xss=1">y</a>',
    ]
    upstream.queue(answer(hostile, pause=0.05))
    send(chat, "Say something nasty")
    wait_until_idle(chat)
    reply = answers(chat).first
    expect(reply).to_contain_text('<img src=x onerror="window.__xss=1">')
    reply.get_by_text("x", exact=True).click()
    chat.wait_for_timeout(300)
    assert chat.evaluate("typeof window.__xss") == "undefined"
    assert reply.locator("img, script").count() == 0
    for href in reply.locator("a").evaluate_all("links => links.map(link => link.getAttribute('href'))"):
        assert not (href or "").strip().lower().startswith("javascript:")


def test_a_reload_mid_answer_resumes_it_without_gaps_or_repeats(chat, upstream):
    parts = [f"chunk{number} " for number in range(30)]
    # Held before chunk10 until the reloaded page shows the answer still being written.
    steps, gate = held(answer(parts, pause=0.1), before="chunk10 ")
    upstream.queue(steps)
    send(chat, "Stream for a while")
    expect(answers(chat).first).to_contain_text("chunk3")
    chat.reload()
    reply = answers(chat).first
    expect(chat.get_by_role("button", name="Stop")).to_be_visible()
    expect(reply).to_contain_text("chunk9")
    gate.event.set()
    wait_until_idle(chat)
    expect(reply.locator(".message-body")).to_have_text("".join(parts).strip())


def test_a_dropped_connection_reconnects_and_catches_up(chat, upstream):
    connections = []

    def relay(route):
        connections.append((route, route.connect_to_server()))

    chat.route_web_socket(re.compile(r"/ws/chat/$"), relay)
    chat.reload()
    expect(chat.get_by_role("status")).to_have_text("Connected")
    chat.evaluate(
        """() => {
            window.connectionStates = [];
            const label = document.getElementById("connection-label");
            new MutationObserver(() => window.connectionStates.push(label.textContent))
                .observe(label, { childList: true, characterData: true, subtree: true });
        }"""
    )
    parts = [f"piece{number} " for number in range(30)]
    # Held before piece10 until the page has reconnected: the rest comes after the blip.
    steps, gate = held(answer(parts, pause=0.1), before="piece10 ")
    upstream.queue(steps)
    send(chat, "Keep going through a network blip")
    reply = answers(chat).first
    expect(reply).to_contain_text("piece3")

    page_side, server_side = connections[-1]
    page_side.close()
    server_side.close()
    expect(chat.get_by_role("status")).to_have_text("Connected")
    gate.event.set()
    wait_until_idle(chat)
    assert len(connections) == 2
    assert "Reconnecting…" in chat.evaluate("window.connectionStates")
    expect(reply.locator(".message-body")).to_have_text("".join(parts).strip())


def test_an_answer_waits_visibly_in_the_queue(chat, context, upstream):
    """The live server has one answer thread: a second answer waits and says so."""
    # The first answer holds the one thread until the second is seen waiting (a gate, not a
    # pause: on a loaded machine a timed answer could end before the second tab is connected).
    first, gate = held(answer([f"first{number} " for number in range(20)]), before="first5 ")
    upstream.queue(first)
    send(chat, "First question")
    expect(answers(chat).first).to_contain_text("first1")

    other = context.new_page()
    other.goto("/")
    expect(other.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    upstream.queue(answer(["Your ", "turn ", "now."]))
    send(other, "Second question")
    waiting = answers(other).first
    expect(waiting.get_by_text("Queued", exact=True)).to_be_visible()
    expect(other.get_by_role("button", name="Stop")).to_be_visible()
    gate.event.set()
    expect(waiting).to_contain_text("Your turn now.", timeout=15_000)
    expect(other.get_by_role("button", name="Send")).to_be_visible()
    wait_until_idle(chat)


def test_the_chosen_model_is_sent_upstream(chat, upstream):
    chat.get_by_role("combobox", name="Model").select_option("other-model")
    send(chat, "Which model are you?")
    wait_until_idle(chat)
    expect(answers(chat).first).to_contain_text("You said: Which model are you?")
    assert upstream.requests[-1]["body"]["model"] == "other-model"


def test_logging_out_ends_the_session(chat, screenshots):
    chat.get_by_role("button", name="Log out").click()
    expect(chat.get_by_role("button", name="Log in")).to_be_visible()
    chat.screenshot(path=screenshots / "login.png", animations="disabled")
    chat.goto("/")
    expect(chat).to_have_url(re.compile(r"/accounts/login/\?next=/$"))


def test_the_composer_keys(chat):
    box = composer(chat)
    send_button = chat.get_by_role("button", name="Send")
    expect(send_button).to_be_disabled()
    box.fill("   ")
    expect(send_button).to_be_disabled()
    box.fill("first line")
    expect(send_button).to_be_enabled()
    height = box.bounding_box()["height"]
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    assert box.bounding_box()["height"] > height, "the composer grows with its text"
    expect(answers(chat)).to_have_count(0)
    box.press("Enter")
    expect(chat.get_by_role("article", name="User message")).to_contain_text("first line\nsecond line")
    wait_until_idle(chat)


def test_scrolling_up_stops_following_and_offers_a_jump_to_the_latest(chat, upstream):
    lines = [f"Line {number} of a long answer.\n\n" for number in range(80)]
    # Held before line 40 until the reader has scrolled up; the rest then streams in while they
    # read (the position is checked once it has all arrived, not after a while).
    steps, gate = held(answer(lines, pause=0.05), before="Line 40 of a long answer.\n\n")
    upstream.queue(steps)
    send(chat, "Write many lines")
    reply = answers(chat).first
    expect(reply).to_contain_text("Line 30 ")
    scroller = chat.locator("#scroller")
    jump = chat.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_hidden()
    scroller.hover()
    chat.mouse.wheel(0, -600)
    expect(jump).to_be_visible()
    position = scroller.evaluate("element => element.scrollTop")
    gate.event.set()
    expect(reply).to_contain_text("Line 79 ")
    assert scroller.evaluate("element => element.scrollTop") == position, "it scrolled away from the reader"
    jump.click()
    expect(jump).to_be_hidden()
    wait_until_idle(chat)
    expect(reply).to_contain_text("Line 79 ")
    at_bottom = "element => element.scrollHeight - element.scrollTop - element.clientHeight < 2"
    chat.wait_for_function(f"({at_bottom})(document.getElementById('scroller'))")


@pytest.mark.parametrize("step", [1, 3, 7])
def test_markdown_rendered_block_by_block_while_streaming_matches_a_full_render(chat, step):
    """The incremental renderer keeps finished blocks; the result must equal a full render."""
    sample = MARKDOWN_ANSWER + "\n> quoted\n> text\n\n- a\n- b\n\n    indented code\n\nSetext\n===\n\nEnd *here*"
    same = chat.evaluate(
        """async ([text, step]) => {
            const { MarkdownStream, renderMarkdown } = await import("/static/chat/markdown.js");
            const streamed = document.createElement("div");
            const stream = new MarkdownStream(streamed);
            for (let end = 0; end < text.length; end += step) stream.update(text.slice(0, end));
            stream.update(text);
            const full = document.createElement("div");
            full.append(renderMarkdown(text));
            const flat = (node) => node.innerHTML.replace(/<div class="markdown-(tail|chunk)">|<\\/div>/g, "");
            return [flat(streamed), flat(full)];
        }""",
        [sample, step],
    )
    assert same[0] == same[1]


STRICT_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def test_the_page_works_under_a_strict_content_security_policy(page, upstream, live_site):
    """No inline script, style attribute or foreign resource: a strict CSP can be switched on."""

    def with_policy(route):
        response = route.fetch(max_redirects=0)
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": STRICT_POLICY})

    log_in(page)
    # Playwright does not route the request a redirect leads to: load the page anew, routed.
    page.route(lambda url: url.startswith(live_site) and "/static/" not in url, with_policy)
    page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation', (event) =>"
        " window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));"
    )
    page.goto("/")
    expect(page.get_by_role("status")).to_have_text("Connected")
    upstream.queue(answer(chunks(MARKDOWN_ANSWER), pause=0.01))
    send(page, "Show me some Markdown")
    wait_until_idle(page)
    expect(answers(page).first.get_by_role("heading", name="Reversing a list in Python")).to_be_visible()
    assert page.evaluate("window.violations") == []


def test_logging_out_in_another_tab_signs_this_one_out(chat, context):
    other = context.new_page()
    other.goto("/")
    other.get_by_role("button", name="Log out").click()
    expect(other.get_by_role("button", name="Log in")).to_be_visible()

    expect(chat.get_by_role("status")).to_have_text("Signed out")
    expect(chat.get_by_role("alert")).to_have_text("You logged out.")
    composer(chat).fill("Still here?")
    chat.wait_for_timeout(1500)
    expect(chat.get_by_role("status")).to_have_text("Signed out")


NEW_PASSWORD = "a different phrase entirely"


def new_account(browser, site_url):
    """An account of the test's own, added by staff in the admin: the site is shared by the tests
    and this one changes the password."""
    username = f"user-{uuid.uuid4().hex[:8]}"
    staff = browser.new_context(base_url=site_url)
    admin = staff.new_page()
    log_in(admin, "root")
    admin.goto("/admin/auth/user/add/")
    admin.get_by_label("Username").fill(username)
    admin.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    admin.get_by_label(re.compile(r"^Password confirmation:?$")).fill(PASSWORD)
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.get_by_text("was added successfully")).to_be_visible()
    staff.close()
    return username


def change_password(page):
    page.goto("/accounts/password_change/")
    page.get_by_label(re.compile(r"^Old password:?$")).fill(PASSWORD)
    page.get_by_label(re.compile(r"^New password:?$")).fill(NEW_PASSWORD)
    page.get_by_label(re.compile(r"^New password confirmation:?$")).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Password changed")).to_be_visible()


def test_changing_the_password_in_another_tab_keeps_this_one_signed_in(page, browser, site_url, context, upstream):
    """The session goes on under a renewed key: its old socket ends, and the tab, asking with the
    renewed cookie, finds itself signed in and reconnects."""
    username = new_account(browser, site_url)
    log_in(page, username)
    expect(page.get_by_role("status")).to_have_text("Connected")
    with page.expect_request(lambda request: request.method == "HEAD"):
        change_password(context.new_page())
    expect(page.get_by_role("status")).to_have_text("Connected")
    upstream.queue(answer(["Still ", "here."]))
    send(page, "Still signed in?")
    expect(answers(page).first).to_contain_text("Still here.")


def test_a_password_change_in_another_browser_signs_this_tab_out(page, browser, site_url):
    username = new_account(browser, site_url)
    log_in(page, username)
    expect(page.get_by_role("status")).to_have_text("Connected")
    composer(page).fill("Typed before")
    elsewhere = browser.new_context(base_url=site_url)
    other = elsewhere.new_page()
    log_in(other, username)
    change_password(other)
    elsewhere.close()

    expect(page.get_by_role("status")).to_have_text("Signed out")
    expect(page.get_by_role("alert")).to_have_text("Your password was changed: log in again.")
    expect(composer(page)).to_have_value("Typed before")
    page.reload()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def read_clipboard_until(page, expected):
    """The clipboard's text once it is `expected`, or what it holds after ten seconds."""
    for _ in range(100):
        if page.evaluate("navigator.clipboard.readText()") == expected:
            break
        page.wait_for_timeout(100)
    return page.evaluate("navigator.clipboard.readText()")


def test_copy_answer_puts_the_whole_markdown_source_on_the_clipboard(chat, context, upstream):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    upstream.queue(answer(chunks(MARKDOWN_ANSWER), pause=0.01))
    send(chat, "Markdown, please")
    reply = answers(chat).first
    wait_until_idle(chat)
    chat.bring_to_front()  # the clipboard answers only the focused page
    reply.get_by_role("button", name="Copy answer").click()
    assert read_clipboard_until(chat, MARKDOWN_ANSWER) == MARKDOWN_ANSWER
    expect(reply.get_by_role("button", name="Copy answer")).to_be_visible()


def test_an_answer_shows_its_time_to_first_token_and_duration(chat, upstream):
    upstream.queue(answer(["Slow ", "and ", "steady."], pause=0.3))
    send(chat, "Take your time")
    reply = answers(chat).first
    expect(reply).to_contain_text("Slow and steady.")
    wait_until_idle(chat)
    timing = reply.get_by_text(re.compile(r"^first token \d+\.\d s · \d+\.\d s$"))
    expect(timing).to_be_visible()
    first, total = (float(number) for number in re.findall(r"\d+\.\d", timing.inner_text()))
    assert first <= total and total >= 0.5, "three deltas 0.3 s apart take over half a second"
    chat.reload()
    expect(answers(chat).first.get_by_text(re.compile(r"^first token \d+\.\d s · \d+\.\d s$"))).to_be_visible()


def test_conversation_instructions_are_saved_and_sent_upstream(chat, upstream):
    settings = chat.get_by_text("Conversation settings")
    settings.click()
    instructions = chat.get_by_role("textbox", name="Instructions")
    # A new chat takes instructions before its first message (tests/browser/test_settings.py);
    # left empty, none are sent.
    expect(instructions).to_be_enabled()

    send(chat, "Hello there")
    expect(answers(chat).first).to_have_attribute("data-status", "completed")
    wait_until_idle(chat)
    assert "instructions" not in upstream.requests[-1]["body"]
    settings.click()  # sending closed the panel
    expect(instructions).to_be_enabled()
    instructions.fill("Answer like a pirate.")
    chat.get_by_role("button", name="Save instructions").click()
    expect(chat.get_by_text("Saved. The next answer follows these instructions.")).to_be_visible()

    send(chat, "And now?")
    expect(answers(chat)).to_have_count(2)
    wait_until_idle(chat)
    assert upstream.requests[-1]["body"]["instructions"] == "Answer like a pirate."

    chat.reload()
    chat.get_by_text("Conversation settings").click()
    expect(chat.get_by_role("textbox", name="Instructions")).to_have_value("Answer like a pirate.")


def test_the_theme_button_switches_and_remembers_the_colour_scheme(chat):
    chat.emulate_media(color_scheme="light")
    background = "getComputedStyle(document.body).backgroundColor"
    assert chat.evaluate("document.documentElement.dataset.theme") is None, "it follows the system at first"
    assert chat.evaluate(background) == "rgb(255, 255, 255)"

    chat.get_by_role("button", name="Theme").click()
    expect(chat.locator("html")).to_have_attribute("data-theme", "dark")
    assert chat.evaluate(background) == "rgb(33, 33, 33)"
    assert chat.evaluate("getComputedStyle(document.documentElement).colorScheme") == "dark"

    chat.reload()
    expect(chat.locator("html")).to_have_attribute("data-theme", "dark")
    assert chat.evaluate(background) == "rgb(33, 33, 33)"

    chat.get_by_role("button", name="Theme").click()
    expect(chat.locator("html")).to_have_attribute("data-theme", "light")
    assert chat.evaluate(background) == "rgb(255, 255, 255)"
    chat.emulate_media(color_scheme="dark")
    assert chat.evaluate(background) == "rgb(255, 255, 255)", "a chosen theme outlasts the system's"
    # The choice is kept with alice's account now: back to the system's for the other tests.
    chat.evaluate(
        """() => fetch("/accounts/settings/theme/", {method: "POST", body: new URLSearchParams({theme: ""}),
             headers: {"X-CSRFToken": document.cookie.match(/csrftoken=([^;]+)/)[1]}}).then((r) => r.status)"""
    )
    chat.reload()
    expect(chat.locator("html")).not_to_have_attribute("data-theme", re.compile("."))


@pytest.mark.parametrize("step", [5, 40])
def test_finishing_a_streamed_answer_gives_the_same_page_as_a_full_render(chat, step):
    """finish() keeps the blocks already rendered when the final text is what streamed."""
    sample = MARKDOWN_ANSWER + "\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nLast *words*"
    same = chat.evaluate(
        """async ([text, step]) => {
            const { MarkdownStream, renderMarkdown } = await import("/static/chat/markdown.js");
            const streamed = document.createElement("div");
            const stream = new MarkdownStream(streamed);
            for (let end = 0; end < text.length; end += step) stream.update(text.slice(0, end));
            stream.update(text);
            const kept = streamed.querySelector(".markdown-chunk > *");
            stream.finish(text);
            const full = document.createElement("div");
            full.append(renderMarkdown(text));
            return [streamed.innerHTML, full.innerHTML, streamed.querySelector(".markdown-chunk > *") === kept];
        }""",
        [sample, step],
    )
    assert same[0] == same[1]
    assert same[2], "the first block was kept, not rendered again"


def long_markdown(sections):
    """Enough blocks for several of MarkdownStream's chunks, some lines ending in CR LF."""
    parts = []
    for number in range(sections):
        ending = "\r\n" if number % 3 == 0 else "\n"
        parts.append(
            f"## Part {number}{ending}{ending}Some *text* for part {number}, with `code`.{ending}{ending}"
            f"- one{ending}- two{ending}{ending}```python{ending}x = {number}{ending}```{ending}{ending}"
        )
    return "".join(parts) + "The end."


@pytest.mark.parametrize("step", [7, 60])
def test_a_long_answer_streamed_in_deltas_keeps_its_blocks_and_ends_as_a_full_render(chat, step):
    """Blocks already rendered are neither rendered again nor moved while later deltas arrive."""
    result = chat.evaluate(
        """async ([text, step]) => {
            const { MarkdownStream, renderMarkdown } = await import("/static/chat/markdown.js");
            const streamed = document.createElement("div");
            const stream = new MarkdownStream(streamed);
            let first = null;
            let kept = true;
            for (let start = 0; start < text.length; start += step) {
                stream.append(text.slice(start, start + step));
                stream.render();
                const block = streamed.querySelector(".markdown-chunk > *");
                if (first === null) first = block;
                else if (block !== first) kept = false;
            }
            stream.finish(text);
            const full = document.createElement("div");
            full.append(renderMarkdown(text));
            return {
                same: streamed.innerHTML === full.innerHTML,
                kept: kept && first !== null && streamed.querySelector(".markdown-chunk > *") === first,
                chunks: streamed.querySelectorAll(".markdown-chunk").length,
            };
        }""",
        [long_markdown(20), step],
    )
    assert result["same"], "the streamed answer differs from a full render"
    assert result["kept"], "the first block was rendered again"
    assert result["chunks"] > 2


@pytest.mark.parametrize("where", ["start", "end"])
def test_a_final_text_that_differs_from_the_streamed_one_is_rendered_from_where_it_differs(chat, where):
    result = chat.evaluate(
        """async ([text, where]) => {
            const { MarkdownStream, renderMarkdown } = await import("/static/chat/markdown.js");
            const streamed = document.createElement("div");
            const stream = new MarkdownStream(streamed);
            stream.update(text);
            const first = streamed.querySelector(".markdown-chunk > *");
            const final = where === "start" ? text.replace("Part 0", "Part zero") : text.replace("Part 19", "Part 99");
            stream.finish(final);
            const full = document.createElement("div");
            full.append(renderMarkdown(final));
            return {
                same: streamed.innerHTML === full.innerHTML,
                kept: streamed.querySelector(".markdown-chunk > *") === first,
            };
        }""",
        [long_markdown(20), where],
    )
    assert result["same"], "the final text differs from a full render"
    assert result["kept"] == (where == "end"), "only the chunks before the change are kept"


def test_finished_blocks_stay_the_same_elements_while_the_answer_streams_on(chat, upstream):
    paragraphs = [f"Paragraph {number} of a long answer.\n\n" for number in range(60)]
    # Held before paragraph 10 until the first paragraph's element is taken, mid-answer.
    steps, gate = held(answer(paragraphs, pause=0.03), before="Paragraph 10 of a long answer.\n\n")
    upstream.queue(steps)
    send(chat, "Write paragraphs")
    reply = answers(chat).first
    expect(reply).to_contain_text("Paragraph 3 ")
    first = reply.locator(".markdown-chunk p").first.element_handle()
    gate.event.set()
    wait_until_idle(chat)
    expect(reply).to_contain_text("Paragraph 59 ")
    assert first.evaluate("node => node.isConnected && node.textContent"), "the first paragraph was replaced"
    assert first.text_content() == "Paragraph 0 of a long answer."


def test_a_long_answer_defining_reference_links_at_its_end_is_rendered_again_in_slices(chat):
    """The definition changes a block far above it; the new rendering replaces the old at once."""
    streamed_text = "Read [the docs][docs] first.\n\n" + long_markdown(150)
    final_text = streamed_text + "\n\n[docs]: https://example.com/docs\n"
    result = chat.evaluate(
        """async ([streamedText, finalText]) => {
            const { MarkdownStream, renderMarkdown } = await import("/static/chat/markdown.js");
            const streamed = document.createElement("div");
            const stream = new MarkdownStream(streamed);
            stream.update(streamedText);
            stream.finish(finalText);
            const shownMeanwhile = streamed.querySelectorAll(".markdown-chunk").length > 1;
            const linkedAtOnce = streamed.querySelector('a[href="https://example.com/docs"]') !== null;
            for (let wait = 0; wait < 100 && !stream.finished; wait += 1) {
                await new Promise((resolve) => setTimeout(resolve, 50));
            }
            const full = document.createElement("div");
            full.append(renderMarkdown(finalText));
            return {
                shownMeanwhile,
                linkedAtOnce,
                same: streamed.innerHTML === full.innerHTML,
                linked: streamed.querySelector('a[href="https://example.com/docs"]') !== null,
            };
        }""",
        [streamed_text, final_text],
    )
    assert result["shownMeanwhile"], "the answer disappeared while rendered again"
    assert not result["linkedAtOnce"], "expected the render in slices, not in one task"
    assert result["same"], "the answer differs from a full render"
    assert result["linked"]
